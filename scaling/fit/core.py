"""The optimizer: robust multi-start fit of a law in log space, and the bootstrap over runs.

Objective (Hoffmann et al. 2022, approach 3): Σ w_i · ρ(log f(x_i; θ) − log y_i) / Σ w_i, with ρ the
Huber loss (δ = 1e-3 by default, divided by δ so its slope is ±1) or ½r² (`loss="squares"`). θ holds
scale parameters as logarithms. For conditioning, each input that a parameter declares it scales
(`Param.scales`) is divided by its geometric mean x₀ and those parameters are rescaled to match;
results are mapped back, so this changes nothing but the number of iterations. The whole initial grid is scored in one
vectorized numpy call; L-BFGS-B (gradient from central differences of log f, computed in the same
vectorized call) starts from the best few grid points; the lowest objective wins. Deterministic. Other starts
that end at the same objective with other parameters are kept (`Optimum.ties`): the optimum is then not unique
(e.g. Huber with δ far below the spread of replicate runs, an L1 fit), and `scaling.fit.api` warns.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from scaling.errors import FitError
from scaling.laws import LAWS, Law, evaluate, get_law

log = logging.getLogger(__name__)

_H = 1e-6           # central-difference step in the fitted space
_BAD = 1e30         # objective where the law is not positive or not finite
# The bootstrap forks processes only with >= 4 CPUs and >= 100,000 distinct resamples x points: on the
# shared 2-core machine 2 processes were as often slower as faster than 1 (benchmarks/fit.py).
PARALLEL_WORK = 100_000
PARALLEL_CPUS = 4


@dataclass(frozen=True)
class Optimum:
    theta: np.ndarray
    "Best parameters in the fitted space (log for scale parameters), in the original input units."
    objective: float
    converged: bool
    on_bound: tuple[bool, ...]
    ties: np.ndarray | None = None
    """(k, P) other optima, in the space of `theta`, that other starts reached with the same objective (within
    `TIE_RTOL`) but other parameters: the objective is flat there and the data do not pick one (None: none)."""


TIE_RTOL = 1e-6     # objectives this close (relative) are the same optimum's value
TIE_PARAMS = 1e-3   # ... and parameters further apart than this (in the fitted space) are another optimum


class Problem:
    """A law, its (normalized) inputs and log targets; maps θ between original and normalized space."""

    def __init__(self, law: Law, X: np.ndarray, y: np.ndarray, loss: str = "huber", delta: float = 1e-3):
        if loss not in ("huber", "squares"):
            raise FitError(f"unknown loss {loss!r}; valid: huber, squares")
        if not delta > 0:
            raise FitError(f"Huber delta must be > 0, got {delta}")
        self.law, self.loss, self.delta = law, loss, float(delta)
        X = np.asarray(X, dtype=float).reshape(len(law.inputs), -1)
        # Only inputs that some parameter declares it absorbs the scale of are normalized.
        scaled = {p.scales[0] for p in law.params if p.scales is not None}
        self.logX0 = np.array([np.log(X[i]).mean() if name in scaled else 0.0 for i, name in enumerate(law.inputs)])
        self.X = X / np.exp(self.logX0)[:, None]
        self.logy = np.log(np.asarray(y, dtype=float))
        P = len(law.params)
        names = law.names
        self.M, self.c = np.eye(P), np.zeros(P)               # θ' = M θ + c
        bounds = [list(p.bounds) for p in law.params]
        for j, p in enumerate(law.params):
            if p.scales is None:
                continue
            L = self.logX0[law.inputs.index(p.scales[0])]
            e = p.scales[1]
            if isinstance(e, str):
                k = names.index(e)
                self.M[j, k] = -L
                lo_k, hi_k = law.params[k].bounds
                bounds[j] = [bounds[j][0] - max(lo_k * L, hi_k * L), bounds[j][1] - min(lo_k * L, hi_k * L)]
            else:
                self.c[j] = -float(e) * L
                bounds[j] = [bounds[j][0] + self.c[j], bounds[j][1] + self.c[j]]
        self.Minv = np.linalg.inv(self.M)
        self.bounds = [tuple(b) for b in bounds]
        self.natural_bounds = [p.bounds for p in law.params]

    def to_fit(self, theta: np.ndarray) -> np.ndarray:
        return theta @ self.M.T + self.c

    def from_fit(self, theta_n: np.ndarray) -> np.ndarray:
        return (theta_n - self.c) @ self.Minv.T

    def grid_objective(self, thetas_n: np.ndarray, w: np.ndarray, chunk: int = 1 << 21) -> np.ndarray:
        """Objective of every row of `thetas_n` (k, P) (normalized space) at once; shape (k,)."""
        out = np.empty(len(thetas_n))
        step = max(1, chunk // max(1, self.X.shape[1]))
        with np.errstate(all="ignore"):
            for i in range(0, len(thetas_n), step):
                v = evaluate(self.law, self.X, thetas_n[i:i + step])
                rho, _ = _rho_psi(np.log(v) - self.logy, self.loss, self.delta)
                val = (rho * w).sum(axis=-1) / w.sum()
                out[i:i + step] = np.where(np.isfinite(val) & np.all(v > 0, axis=-1), val, _BAD)
        return out

    def fun_grad(self, theta_n: np.ndarray, w: np.ndarray, wsum: float) -> tuple[float, np.ndarray]:
        P = len(theta_n)
        steps = _H * np.eye(P)
        th = np.concatenate([theta_n[None], theta_n + steps, theta_n - steps])   # (2P+1, P)
        with np.errstate(all="ignore"):
            v = evaluate(self.law, self.X, th)                                      # (2P+1, n)
            logv = np.log(v)
        if not np.all(np.isfinite(logv)):
            return _BAD, np.zeros(P)
        J = (logv[1:P + 1] - logv[P + 1:]) / (2 * _H)                               # (P, n)
        rho, psi = _rho_psi(logv[0] - self.logy, self.loss, self.delta)
        # elementwise products, not BLAS: a threaded BLAS on tiny vectors costs more than it saves
        return float((rho * w).sum()) / wsum, (J * (w * psi)).sum(axis=1) / wsum

    def minimize_from(self, starts_n: np.ndarray, w: np.ndarray, maxiter: int = 3000) -> Optimum:
        """L-BFGS-B from each start (normalized space); the lowest objective wins (ties: the first)."""
        lo, hi = np.array(self.bounds).T
        wsum = float(w.sum())
        best, found = None, []
        for x0 in starts_n:
            res = minimize(self.fun_grad, np.clip(x0, lo, hi), args=(w, wsum), jac=True, method="L-BFGS-B",
                           bounds=self.bounds, options={"maxiter": maxiter, "ftol": 1e-13, "gtol": 1e-9})
            found.append(res)
            if best is None or res.fun < best.fun - 1e-14:
                best = res
        nlo, nhi = np.array(self.natural_bounds).T
        theta = np.clip(self.from_fit(np.asarray(best.x, dtype=float)), nlo, nhi)
        tol = TIE_RTOL * max(abs(best.fun), 1e-12)
        ties = [np.clip(self.from_fit(np.asarray(r.x, dtype=float)), nlo, nhi) for r in found
                if r.fun <= best.fun + tol and np.max(np.abs(r.x - best.x)) > TIE_PARAMS]
        on_bound = tuple(bool(_near(t, a) or _near(t, b)) for t, a, b in zip(theta, nlo, nhi))
        # L-BFGS-B may end with an ABNORMAL line search at a flat optimum: converged if the gradient
        # of the free parameters is ~0 there.
        converged = (bool(best.success) or _flat(best, self.bounds)) and best.fun < _BAD
        return Optimum(theta, float(best.fun), converged, on_bound, np.array(ties) if ties else None)

    def best_starts(self, w: np.ndarray, n: int) -> np.ndarray:
        """The `n` best points of the law's initial grid (normalized space), scored all at once."""
        grid = self.to_fit(self.law.grid())
        scores = self.grid_objective(grid, w)
        return grid[np.argsort(scores, kind="stable")[:n]]

    def fit(self, w: np.ndarray | None = None, starts: int = 8) -> Optimum:
        w = np.ones(len(self.logy)) if w is None else np.asarray(w, dtype=float)
        with single_threaded():
            return self.minimize_from(self.best_starts(w, starts), w)


def single_threaded():
    """Limit BLAS to one thread: L-BFGS-B's tiny BLAS calls cost ~50x more with a threaded OpenBLAS
    (measured ~3 ms instead of ~60 µs per iteration on 2 busy cores)."""
    return threadpool_limits(limits=1)


def _rho_psi(r: np.ndarray, loss: str, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Loss and its derivative; Huber divided by δ (so |ψ| ≤ 1)."""
    if loss == "squares":
        return 0.5 * r * r, r
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r / delta, a - 0.5 * delta), np.clip(r / delta, -1.0, 1.0)


def _near(t: float, b: float) -> bool:
    return abs(t - b) <= 1e-6 * max(1.0, abs(b))


def _flat(res, bounds) -> bool:
    g, x = np.asarray(res.jac, dtype=float), np.asarray(res.x, dtype=float)
    free = np.array([not (_near(xi, lo) or _near(xi, hi)) for xi, (lo, hi) in zip(x, bounds)])
    return bool(np.all(np.abs(g[free]) < 1e-6))


def fit_arrays(law: Law, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, loss: str = "huber",
               delta: float = 1e-3, starts: int = 8) -> Optimum:
    """Fit `law` to inputs X (I, n) and values y (n,), all positive and finite (checked by the caller)."""
    return Problem(law, X, y, loss, delta).fit(w, starts)


# --- bootstrap -------------------------------------------------------------------------------------

def resample_weights(units: np.ndarray, strata: np.ndarray | None, B: int, seed: int) -> np.ndarray:
    """(B, n) weights: how often each point's unit was drawn when units are resampled with replacement.

    `units[i]` is the unit (e.g. run) of point i; with `strata`, units are resampled within each stratum.
    """
    rng = np.random.default_rng(seed)
    u_ids, u_of_point = np.unique(np.asarray(units).astype(str), return_inverse=True)
    counts = np.zeros((B, len(u_ids)))
    if strata is None:
        counts[:] = rng.multinomial(len(u_ids), np.full(len(u_ids), 1 / len(u_ids)), size=B)
    else:
        stratum_of_unit = np.empty(len(u_ids), dtype=object)
        stratum_of_unit[u_of_point] = np.asarray(strata).astype(str)
        for s in sorted(set(stratum_of_unit)):
            idx = np.flatnonzero(stratum_of_unit == s)
            counts[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=B)
    return counts[:, u_of_point]


def identifiable(X: np.ndarray, W: np.ndarray, n_params: int) -> np.ndarray:
    """(B,) True where the points with weight > 0 have ≥ n_params distinct inputs and ≥ 2 values per input."""
    used = (W > 0).astype(float)
    _, point_ids = np.unique(np.asarray(X).T, axis=0, return_inverse=True)
    ok = _distinct(used, point_ids.ravel()) >= n_params
    for row in np.asarray(X):
        ok &= _distinct(used, np.unique(row, return_inverse=True)[1].ravel()) >= 2
    return ok


def _distinct(used: np.ndarray, ids: np.ndarray) -> np.ndarray:
    onehot = np.zeros((len(ids), ids.max() + 1))
    onehot[np.arange(len(ids)), ids] = 1
    return ((used @ onehot) > 0).sum(axis=1)


def _boot_chunk(args) -> np.ndarray:
    law, X, y, W, theta0, loss, delta = args
    prob = Problem(get_law(law) if isinstance(law, str) else law, X, y, loss, delta)
    start = prob.to_fit(theta0)[None, :]
    out = np.full((len(W), len(theta0)), np.nan)
    with single_threaded():
        for b, w in enumerate(W):
            opt = prob.minimize_from(start, w)
            if opt.converged:
                out[b] = opt.theta
    return out


def bootstrap(law: Law, X: np.ndarray, y: np.ndarray, theta0: np.ndarray, units: np.ndarray,
              strata: np.ndarray | None = None, B: int = 1000, seed: int = 0, loss: str = "huber",
              delta: float = 1e-3, workers: int | None = None) -> np.ndarray:
    """(B', P) refitted parameter vectors (fitted space) of the B resamples that were identifiable and
    converged, each warm-started from `theta0` (the fit to all points)."""
    if B <= 0:
        return np.empty((0, len(theta0)))
    X = np.asarray(X, dtype=float).reshape(len(law.inputs), -1)
    W = resample_weights(units, strata, B, seed)
    W = W[identifiable(X, W, len(theta0))]
    # Identical resamples give identical fits: with few runs most resamples repeat (4 runs: 35 distinct).
    W, again = np.unique(W, axis=0, return_inverse=True)
    workers = default_workers(len(W), X.shape[1]) if workers is None else max(1, int(workers))
    args = [law, X, y, W, theta0, loss, delta]
    registered = LAWS.get(law.name) is law            # workers look the law up by name
    if workers == 1 or len(W) < 4 * workers or not registered or "fork" not in multiprocessing.get_all_start_methods():
        out = _boot_chunk(args)
    else:  # fork: the worker sees the same law registry (laws registered at run time included)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as ex:
            out = np.concatenate(list(ex.map(_boot_chunk, [[law.name, X, y, c, *args[4:]]
                                                           for c in np.array_split(W, workers)])))
    out = out[again.ravel()]
    return out[np.all(np.isfinite(out), axis=1)]


def default_workers(resamples: int, n_points: int) -> int:
    """Processes for the bootstrap (env SCALING_FIT_WORKERS overrides): see benchmarks/fit.py."""
    env = os.environ.get("SCALING_FIT_WORKERS")
    if env:
        return max(1, int(env))
    cpus = usable_cpus()
    return min(cpus, 4) if cpus >= PARALLEL_CPUS and resamples * n_points >= PARALLEL_WORK else 1


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS has one, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
