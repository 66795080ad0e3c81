"""Fit a law to points, with bootstrap intervals, a holdout backtest, leave-one-size-out and warnings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scaling.errors import FitError
from scaling.fit.core import Problem, bootstrap
from scaling.fit.result import Bootstrap, FitResult, ParamEstimate, Point, Prediction
from scaling.fit.table import Columns, curve_points, data_hash, size_points
from scaling.laws import Law, get_law

log = logging.getLogger(__name__)

MAX_SAMPLES = 200   # bootstrap parameter vectors kept in the JSON for drawing bands
NOT_UNIQUE = "the optimum is not unique"
"The start of the warning of a fit whose optimum is not unique (`tie_warning`)."


@dataclass(frozen=True)
class FitOptions:
    """How to fit (the CLI flags of the same names)."""

    loss: str = "huber"
    "'huber' (robust, default) or 'squares', both on log residuals."
    delta: float = 1e-3
    "Huber δ."
    bootstrap: int = 1000
    "Resamples for the intervals (0: none)."
    level: float = 0.95
    "Confidence level of the percentile intervals."
    seed: int = 0
    "Seed of the resampling."
    starts: int = 8
    "Best grid points L-BFGS-B starts from."
    workers: int | None = None
    """Processes. `fit_table` runs this many fits at once, each bootstrap within its fit's process (None:
    `scaling.fit.run.fit_processes`); a single `fit_size_law` or `fit_curve` splits its bootstrap over them
    (None: `scaling.fit.core.default_workers`). The results are the same for any number."""
    loso_bootstrap: int = 200
    "Resamples for each leave-one-size-out fit."


@dataclass(frozen=True)
class Target:
    """A point to predict: a label, its inputs by column, and what was observed there (if anything)."""

    label: str
    x: dict[str, float]
    actual: float | None = None
    runs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fitted:
    """A fit of a law to arrays, before it becomes a FitResult."""

    law: Law
    theta: np.ndarray
    "Best fit, fitted space."
    boot: np.ndarray
    "(B', P) bootstrap fits, fitted space."
    objective: float
    converged: bool
    on_bound: tuple[bool, ...]
    resamples: int
    unit: str
    ties: np.ndarray | None = None
    "Other optima with the same objective (`Optimum.ties`), fitted space."

    def values(self, theta=None) -> dict[str, float]:
        theta = self.theta if theta is None else theta
        return {p.name: float(p.to_value(t)) for p, t in zip(self.law.params, theta)}

    def predict(self, X: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Values at X (I, n) and their percentile intervals (n, 2), None without bootstrap fits."""
        y = self.law(*X, **self.values())
        if len(self.boot) < 2:
            return y, None
        ys = np.stack([self.law(*X, **self.values(t)) for t in self.boot])
        q = 100 * (1 - level) / 2
        return y, np.stack([np.percentile(ys, q, axis=0), np.percentile(ys, 100 - q, axis=0)], axis=1)


def check_fittable(law: Law, X: np.ndarray, x_cols: list[str], what: str) -> None:
    """FitError when the points cannot determine the law: too few points, a single value of an input."""
    P, n = len(law.params), X.shape[1]
    if n == 0:
        raise FitError(f"{what}: no points")
    for row, col in zip(X, x_cols):
        if len(np.unique(row)) < 2:
            raise FitError(f"{what}: every point has the same {col} = {row[0]:g} (a single size); "
                           f"{law.name} needs at least 2 distinct values of {col}")
    if n < P:
        raise FitError(f"{what}: {n} points for the {P} parameters of {law.name} ({', '.join(law.names)}); "
                       "use a law with fewer parameters or add sizes/runs")


def fit_arrays(law: Law, X: np.ndarray, y: np.ndarray, units: np.ndarray, opts: FitOptions,
               strata: np.ndarray | None = None, resamples: int | None = None, unit: str = "run") -> Fitted:
    """Best fit plus bootstrap (skipped when there are no more points than parameters)."""
    prob = Problem(law, X, y, opts.loss, opts.delta)
    opt = prob.fit(starts=opts.starts)
    B = opts.bootstrap if resamples is None else resamples
    if X.shape[1] <= len(law.params):
        B = 0
    boot = bootstrap(law, X, y, opt.theta, units, strata, B, opts.seed, opts.loss, opts.delta, opts.workers)
    return Fitted(law, opt.theta, boot, opt.objective, opt.converged, opt.on_bound, B, unit, opt.ties)


def _interval(v):
    return None if v is None else (float(v[0]), float(v[1]))


def predictions(fitted: Fitted, targets: list[Target], x_cols: list[str], level: float) -> tuple[Prediction, ...]:
    if not targets:
        return ()
    X = np.array([[t.x[c] for t in targets] for c in x_cols], dtype=float)
    y, iv = fitted.predict(X, level)
    out = []
    for i, t in enumerate(targets):
        interval = None if iv is None else _interval(iv[i])
        rel = inside = None
        if t.actual is not None and np.isfinite(t.actual):
            rel = float((y[i] - t.actual) / t.actual)
            inside = None if interval is None else bool(interval[0] <= t.actual <= interval[1])
        out.append(Prediction(t.label, dict(t.x), float(y[i]), interval, t.actual, rel, inside, tuple(t.runs)))
    return tuple(out)


def reliability(fitted: Fitted, n: int, sizes: int, preds: tuple[Prediction, ...], max_x: float,
                x_col: str, level: float = 0.95) -> list[str]:
    """Why the fit may not be trusted, in words."""
    law, P, w = fitted.law, len(fitted.law.params), []
    if n <= P:
        w.append(f"{n} points for {P} parameters: the law passes through every point; no degrees of freedom "
                 "are left to measure its error (no intervals)")
    elif n <= P + 1:
        w.append(f"{n} points for {P} parameters: one degree of freedom; intervals are rough")
    if sizes < 3:
        w.append(f"only {sizes} distinct values of {x_col}: a power law through 2 points always fits")
    if not fitted.converged:
        w.append("L-BFGS-B did not converge; the parameters are not an optimum")
    for p, hit in zip(law.params, fitted.on_bound):
        if hit:
            w.append(f"{p.name} = {p.to_value(fitted.theta[law.params.index(p)]):.4g} is on its bound "
                     f"[{p.lower:g}, {p.upper:g}]: the data do not determine it")
    if fitted.resamples:
        ok = len(fitted.boot)
        if ok < 0.9 * fitted.resamples:
            w.append(f"only {ok} of {fitted.resamples} bootstrap resamples could be fitted (the rest had too few "
                     "distinct points or did not converge); intervals rest on those")
        for j, p in enumerate(law.params):
            if ok >= 2:
                v = p.to_value(fitted.boot[:, j])
                lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
                value = p.to_value(fitted.theta[j])
                if hi - lo > abs(value):
                    w.append(f"interval of {p.name} [{lo:.3g}, {hi:.3g}] is wider than its value {value:.3g}")
        if fitted.unit == "point":
            w.append("one run: the bootstrap resamples points of the curve as if independent, "
                     "so intervals are optimistic")
    for pr in preds:
        ratio = pr.x.get(x_col, 0) / max_x if max_x > 0 else 0
        if ratio > 10:
            w.append(f"{pr.label}: extrapolating {ratio:.0f}x beyond the largest fitted {x_col}")
        if pr.interval and pr.interval[1] - pr.interval[0] > abs(pr.predicted):
            w.append(f"{pr.label}: prediction interval [{pr.interval[0]:.4g}, {pr.interval[1]:.4g}] is wider "
                     f"than the prediction {pr.predicted:.4g}")
    return w


def tie_warning(fitted: Fitted, X: np.ndarray, preds: tuple[Prediction, ...], x_cols: list[str],
                opts: FitOptions) -> str | None:
    """Words for a flat optimum: other parameters fit equally well and predict other values (None: they agree
    within 0.1% at the predicted points, or at the largest fitted x when nothing is predicted)."""
    if fitted.ties is None:
        return None
    if preds:
        where = [(p.label, np.array([[p.x[c]] for c in x_cols], dtype=float)) for p in preds]
    else:
        i = int(np.argmax(X[0]))
        where = [(f"the largest fitted {x_cols[0]} ({X[0, i]:.4g})", X[:, i:i + 1])]
    spans = []
    for label, at in where:
        v = np.array([float(fitted.law(*at, **fitted.values(t))[0]) for t in (fitted.theta, *fitted.ties)])
        if v.max() - v.min() > 1e-3 * abs(v[0]):
            spans.append(f"{label} anywhere in [{v.min():.4g}, {v.max():.4g}] (this fit: {v[0]:.4g})")
    if not spans:
        return None
    why = (f"a Huber loss with delta {opts.delta:g}, far below the spread between the runs of a size, is an L1 "
           "fit, which any curve between a size's middle runs minimizes; use fit.loss: squares (--loss squares) "
           "or a fit.delta near that spread" if opts.loss == "huber" else "the law has more freedom than the data")
    return (f"{NOT_UNIQUE}: {len(fitted.ties)} other start(s) reached the same objective with other "
            f"parameters, predicting {'; '.join(spans)}. {why[0].upper()}{why[1:]}")


def make_result(fitted: Fitted, pts: pd.DataFrame, x_cols: list[str], metric: str, opts: FitOptions, *,
                name: str, axis: str, excluded=(), holdout=(), loso=(), warnings=(), extra=None) -> FitResult:
    law = fitted.law
    X = pts[x_cols].to_numpy(dtype=float).T
    y = pts[metric].to_numpy(dtype=float)
    values = fitted.values()
    pred = law(*X, **values)
    q = 100 * (1 - opts.level) / 2
    params = []
    for j, p in enumerate(law.params):
        iv = None
        if len(fitted.boot) >= 2:
            iv = _interval(np.percentile(p.to_value(fitted.boot[:, j]), [q, 100 - q]))
        params.append(ParamEstimate(p.name, values[p.name], iv, p.lower, p.upper, fitted.on_bound[j]))
    points = tuple(Point(str(r), str(s), {c: float(v) for c, v in zip(x_cols, xs)}, float(yy), float(pp),
                         float(np.log(yy) - np.log(pp)))
                   for r, s, xs, yy, pp in zip(pts["_run"], pts["_size"], X.T, y, pred))
    samples = tuple(tuple(float(p.to_value(t)) for p, t in zip(law.params, th)) for th in fitted.boot[:MAX_SAMPLES])
    warn = [*reliability(fitted, len(y), len(np.unique(X[0])), (*holdout,), float(X[0].max()), x_cols[0],
                         opts.level), *warnings]
    tie = tie_warning(fitted, X, (*holdout,), x_cols, opts)
    if tie:
        warn.insert(0, tie)
    for w in warn:
        log.debug("%s %s %s: %s", metric, law.name, axis, w)
    return FitResult(
        name=name, metric=metric, law=law.name, axis=axis, columns=dict(zip(law.inputs, x_cols)),
        formula=law.formula(values), formula_latex=law.formula(values, latex=True), params=tuple(params),
        level=opts.level, loss=opts.loss, delta=opts.delta, objective=fitted.objective,
        converged=fitted.converged,
        bootstrap=Bootstrap(fitted.resamples, len(fitted.boot), fitted.unit, opts.seed, samples),
        data_hash=data_hash(pts["_run"], X, y), sizes=tuple(dict.fromkeys(str(s) for s in pts["_size"])),
        points=points, excluded=tuple(excluded), holdout=tuple(holdout), leave_one_size_out=tuple(loso),
        warnings=tuple(dict.fromkeys(warn)), extra=extra or {})


def _targets(pts: pd.DataFrame, x_cols: list[str], metric: str) -> list[Target]:
    """One target per (size, distinct inputs): the mean metric over the runs there."""
    out = []
    for size, g in pts.groupby("_size", sort=False):
        groups = list(g.groupby(x_cols, sort=True))
        for key, gg in groups:
            key = key if isinstance(key, tuple) else (key,)
            label = str(size) if len(groups) == 1 else f"{size} " + " ".join(
                f"{c}={v:.3g}" for c, v in zip(x_cols[1:], key[1:]))
            out.append(Target(label, {c: float(v) for c, v in zip(x_cols, key)}, float(gg[metric].mean()),
                              tuple(gg["_run"])))
    return out


def fit_size_law(table: pd.DataFrame, law: str | Law, metric: str, x_cols: list[str], *,
                 holdout: list[str] = (), extra_targets: list[Target] = (), cols: Columns | None = None,
                 include_unfinished: bool = False, opts: FitOptions | None = None, name: str = "fit",
                 loso: bool = True) -> FitResult:
    """Fit `law` over the last value of `metric` of every run, on all sizes but `holdout`.

    Held-out sizes present in the table are predicted and compared (the backtest); `extra_targets`
    (e.g. the planned XL when it has not run) are predicted only. Leave-one-size-out refits once per size.
    """
    law = get_law(law) if isinstance(law, str) else law
    cols, opts = cols or Columns(), opts or FitOptions()
    if len(x_cols) != len(law.inputs):
        raise FitError(f"law {law.name} takes {len(law.inputs)} inputs ({', '.join(law.inputs)}); "
                       f"got x columns {x_cols}")
    pts, excluded = size_points(table, metric, x_cols, cols, include_unfinished)
    holdout = [str(h) for h in holdout]
    held = pts["_size"].isin(holdout)
    train = pts[~held]
    if train.empty:
        raise FitError(f"every size with data is held out ({', '.join(holdout)}); nothing left to fit")
    X = train[x_cols].to_numpy(dtype=float).T
    y = train[metric].to_numpy(dtype=float)
    check_fittable(law, X, x_cols, f"{metric} over {', '.join(x_cols)}")
    fitted = fit_arrays(law, X, y, train["_run"].to_numpy(), opts)
    targets = _targets(pts[held], x_cols, metric)
    targets += [t for t in extra_targets if t.label not in set(pts.loc[held, "_size"])]
    held_preds = predictions(fitted, targets, x_cols, opts.level)
    loso_preds, warn = [], []
    for h in holdout:
        if not any(t.label == h or t.label.startswith(f"{h} ") for t in targets):
            warn.append(f"held-out size {h} has no usable run and no planned inputs: nothing to predict")
    missing: dict[str, list[str]] = {}
    for e in excluded:  # a size all of whose runs were left out (failed, no value): say so by its name
        if e["size"] not in set(pts["_size"]):
            missing.setdefault(e["size"], []).append(f"{e['run_id']}: {e['reason']}")
    for size, why in missing.items():
        warn.append(f"size {size} is missing from the fit ({'; '.join(why)})")
    if loso:
        for size in dict.fromkeys(pts["_size"]):
            rest = pts[pts["_size"] != size]
            Xr = rest[x_cols].to_numpy(dtype=float).T
            try:
                check_fittable(law, Xr, x_cols, f"without {size}")
            except FitError as e:
                warn.append(f"leave-one-size-out: {size} skipped ({e})")
                continue
            f = fit_arrays(law, Xr, rest[metric].to_numpy(dtype=float), rest["_run"].to_numpy(), opts,
                           resamples=opts.loso_bootstrap)
            loso_preds.extend(predictions(f, _targets(pts[pts["_size"] == size], x_cols, metric), x_cols,
                                          opts.level))
    axis = x_cols[0] if len(x_cols) == 1 else "-".join(x_cols)
    return make_result(fitted, train, x_cols, metric, opts, name=name, axis=axis, excluded=excluded,
                       holdout=held_preds, loso=loso_preds, warnings=warn,
                       extra={"holdout_sizes": holdout, "include_unfinished": include_unfinished})


def fit_curve(table: pd.DataFrame, law: str | Law, metric: str, size: str, *, x_col: str = "step",
              cols: Columns | None = None, opts: FitOptions | None = None, name: str = "fit") -> FitResult:
    """Fit `law` to the loss curve of one size over `x_col` (all its runs' logged points).

    Backtest (`holdout`): each run's last point predicted from its earlier points, when enough remain.
    Bootstrap unit: runs when the size has ≥ 3 runs, otherwise the points of the curve.
    """
    law = get_law(law) if isinstance(law, str) else law
    cols, opts = cols or Columns(), opts or FitOptions()
    if len(law.inputs) != 1:
        raise FitError(f"a curve over {x_col} needs a law of one input; {law.name} takes {law.inputs}")
    pts, excluded = curve_points(table, metric, [x_col], cols, size)
    what = f"{metric} of size {size} over {x_col}"
    if pts.empty:
        raise FitError(f"{what}: no rows with a value (sizes in the table: "
                       f"{', '.join(sorted({str(v) for v in table[cols.size]})) if cols.size in table else '?'})")
    X = pts[[x_col]].to_numpy(dtype=float).T
    y = pts[metric].to_numpy(dtype=float)
    check_fittable(law, X, [x_col], what)
    runs = pts["_run"].to_numpy()
    by_run = len(set(runs)) >= 3
    units = runs if by_run else np.arange(len(runs))
    fitted = fit_arrays(law, X, y, units, opts, unit="run" if by_run else "point")
    held, warn = [], []
    last = pts.groupby("_run").tail(1)
    early = pts.drop(index=last.index)
    Xe = early[[x_col]].to_numpy(dtype=float).T
    try:
        check_fittable(law, Xe, [x_col], "backtest")
        if Xe.shape[1] <= len(law.params):
            raise FitError(f"{Xe.shape[1]} earlier points for {len(law.params)} parameters")
        fe = fit_arrays(law, Xe, early[metric].to_numpy(dtype=float),
                        early["_run"].to_numpy() if by_run else np.arange(len(early)), opts,
                        resamples=opts.loso_bootstrap, unit="run" if by_run else "point")
        tg = [Target(f"{size}@{v:g}", {x_col: float(v)}, float(g[metric].mean()), tuple(g["_run"]))
              for v, g in last.groupby(x_col)]
        held = list(predictions(fe, tg, [x_col], opts.level))
    except FitError as e:
        warn.append(f"no backtest of the last point: {e}")
    axis = f"{'steps' if x_col == cols.step else x_col}-{size}"
    return make_result(fitted, pts, [x_col], metric, opts, name=name, axis=axis, excluded=excluded, holdout=held,
                       warnings=warn, extra={"size": str(size), "runs": sorted(set(map(str, runs)))})
