"""A synthetic demo-sized sweep for the report's tests and benchmark: a tidy table and `FitResult`s.

The table has the demo sweep's sizes, exact parameter and FLOP counts (size registry), 60 logged steps
and 81 per-level losses. Per-level losses follow a known formula and every L_iw is computed from them
with the weighting formulas, so L_iw(steps) of each size is exactly E + a·steps^-0.5. The fit results
are built directly from known parameters (a test fixture: the report is what is under test, not `fit`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scaling.fit import Bootstrap, FitResult, ParamEstimate, Point, Prediction, fit_filename
from scaling.laws import get_law
from scaling.report.data import lambda_grid
from scaling.report.weightings import weight
from scaling.sizes import size_info
from scaling.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "sweeps" / "demo.yaml"
WEIGHTINGS = ("laplace", "uniform", "min_snr", "edm", "logit_normal")
SIZES = ("S", "M", "L", "XL")
STEPS = 600
LOG_EVERY = 10
B_STEPS = 0.5


def _base(lam: np.ndarray) -> np.ndarray:
    return 0.01 + 0.6 / (1.0 + np.exp(-(lam - 2.0) / 2.0))


def _gain(lam: np.ndarray) -> np.ndarray:
    return np.exp(-((lam - 1.0) ** 2) / 8.0)


def level_losses(lam: np.ndarray, params: float, step: np.ndarray) -> np.ndarray:
    """ℓ(λ_k) at each step: shape (steps, levels). Bigger models gain most around λ ≈ 1."""
    size_term = _base(lam) * (1.0 + 3.0 * _gain(lam) * (params / 1e5) ** -0.3)
    step_term = 0.5 * _base(lam) * (np.asarray(step, dtype=float)[:, None] / LOG_EVERY) ** -B_STEPS
    return size_term[None, :] + step_term


def iw(levels: np.ndarray, lam: np.ndarray, label: str) -> np.ndarray:
    w = weight(label, lam)
    return (levels * w).sum(axis=-1) / w.sum()


def demo_table(last_step: dict[str, int] | None = None, status: dict[str, str] | None = None,
               sizes: tuple[str, ...] = SIZES, with_levels: bool = True) -> pd.DataFrame:
    """The tidy table of a synthetic demo sweep. `last_step`/`status` per size make it partial."""
    spec = load_sweep(DEMO)
    ev = spec.evaluation
    lam = lambda_grid(ev.lambda_min, ev.lambda_max, ev.lambda_step)
    frames = []
    for size in sizes:
        info = size_info(size, spec.model, spec.data)
        end = (last_step or {}).get(size, STEPS)
        steps = np.arange(LOG_EVERY, end + 1, LOG_EVERY)
        levels = level_losses(lam, info.params, steps)
        run_id = f"demo-{size}-600steps-s0"
        frame = {
            "run_id": run_id, "sweep": "demo", "size": size, "params": info.params, "budget": "600steps",
            "seed": 0, "status": (status or {}).get(size, "FINISHED"), "step": steps,
            "samples": steps * spec.train.batch_size, "flops": steps * spec.train.batch_size * info.flops_per_sample,
            "train/loss": iw(levels, lam, "laplace") * 1.05,
        }
        for label in WEIGHTINGS:
            frame[f"eval/iw/{label}"] = iw(levels, lam, label)
        df = pd.DataFrame(frame)
        if with_levels:
            df = pd.concat([df, pd.DataFrame(levels, columns=[f"eval/level/{k:03d}" for k in range(len(lam))])],
                           axis=1)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def make_fit(metric: str, law_name: str, axis: str, column: str, points: list[tuple[str, str, float, float]],
             values: dict[str, float], holdout: list[tuple[str, float, float | None]] = (),
             loso: list[tuple[str, float, float | None]] = (), spread: float = 0.02, seed: int = 0,
             warnings: tuple[str, ...] = ()) -> FitResult:
    """A `FitResult` with the given parameter values, bootstrap samples jittered around them (seeded),
    and predictions (label, x, actual) evaluated from the law."""
    law = get_law(law_name)
    rng = np.random.default_rng(seed)
    samples = np.array([[values[n] * (1.0 + spread * rng.standard_normal()) for n in law.names] for _ in range(200)])
    intervals = {n: (float(np.percentile(samples[:, i], 2.5)), float(np.percentile(samples[:, i], 97.5)))
                 for i, n in enumerate(law.names)}

    def predict(x: float) -> float:
        return float(law(np.array([x]), **values)[0])

    def prediction(label: str, x: float, actual: float | None) -> Prediction:
        ys = [float(law(np.array([x]), **dict(zip(law.names, s)))[0]) for s in samples]
        lo, hi = float(np.percentile(ys, 2.5)), float(np.percentile(ys, 97.5))
        p = predict(x)
        if actual is None:
            return Prediction(label, {column: x}, p, (lo, hi))
        return Prediction(label, {column: x}, p, (lo, hi), actual, (p - actual) / actual, lo <= actual <= hi)

    return FitResult(
        name="demo", metric=metric, law=law_name, axis=axis, columns={"x": column},
        formula=law.formula(values), formula_latex=law.formula(values, latex=True),
        params=tuple(ParamEstimate(p.name, values[p.name], intervals[p.name], p.lower, p.upper, False)
                     for p in law.params),
        level=0.95, loss="huber", delta=1e-3, objective=0.0, converged=True,
        bootstrap=Bootstrap(1000, 1000, "run", seed, tuple(tuple(map(float, s)) for s in samples)),
        data_hash=f"{seed:064x}", sizes=tuple(dict.fromkeys(s for _, s, _, _ in points)),
        points=tuple(Point(r, s, {column: x}, y, predict(x), float(np.log(y) - np.log(predict(x))))
                     for r, s, x, y in points),
        holdout=tuple(prediction(*h) for h in holdout),
        leave_one_size_out=tuple(prediction(*h) for h in loso),
        warnings=warnings,
    )


def _power_values(xs: np.ndarray, ys: np.ndarray) -> dict[str, float]:
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    return {"a": float(np.exp(intercept)), "b": float(-slope)}


def demo_fits(table: pd.DataFrame, holdout: str = "XL", metrics: tuple[str, ...] | None = None) -> list[FitResult]:
    """`power` over params for each weighting (fitted on all sizes but `holdout`), `power_offset` over params
    for laplace, and each size's L(steps) curve for laplace (exact: the table is built on that law)."""
    finals = table.sort_values("step").groupby("run_id").tail(1).set_index("size")
    sizes = [s for s in SIZES if s in finals.index]
    fitted = [s for s in sizes if s != holdout]
    fits = []
    for i, label in enumerate(metrics or WEIGHTINGS):
        metric = f"eval/iw/{label}"
        xs = finals.loc[fitted, "params"].to_numpy(float)
        ys = finals.loc[fitted, metric].to_numpy(float)
        pts = [(finals.loc[s, "run_id"], s, float(finals.loc[s, "params"]), float(finals.loc[s, metric]))
               for s in fitted]
        target = [(holdout, float(finals.loc[holdout, "params"]),
                   float(finals.loc[holdout, metric]) if finals.loc[holdout, "status"] == "FINISHED" else None)
                  ] if holdout in finals.index else []
        loso = []
        for left in fitted:
            keep = [j for j, s in enumerate(fitted) if s != left]
            v = _power_values(xs[keep], ys[keep])
            x = float(finals.loc[left, "params"])
            p = v["a"] * x ** -v["b"]
            actual = float(finals.loc[left, metric])
            loso.append((left, x, actual, p))
        values = _power_values(xs, ys)
        fit = make_fit(metric, "power", "params", "params", pts, values, target, [], seed=i)
        fits.append(_with_loso(fit, loso))
        if label == "laplace":
            E = 0.9 * float(ys.min())
            v = _power_values(xs, ys - E)
            fits.append(make_fit(metric, "power_offset", "params", "params", pts, {"E": E, **v}, target, seed=99,
                                 warnings=("3 points for 3 parameters: the interval is not meaningful",)))
    spec = load_sweep(DEMO)
    lam = lambda_grid(spec.evaluation.lambda_min, spec.evaluation.lambda_max, spec.evaluation.lambda_step)
    metric = "eval/iw/laplace"
    for size in sizes:
        rows = table[table["size"] == size].sort_values("step")
        params = float(rows["params"].iloc[0])
        E = float(iw(level_losses(lam, params, np.array([1e30])), lam, "laplace")[0])
        a = float(iw(0.5 * _base(lam)[None, :] * LOG_EVERY**B_STEPS, lam, "laplace")[0])
        used = rows if size != holdout else rows[rows["step"] <= STEPS // 2]
        pts = [(str(r), size, float(s), float(y)) for r, s, y in zip(used["run_id"], used["step"], used[metric])]
        target = []
        if size == holdout:  # predict the end of the run; its actual value only once it got there
            done = rows["step"].max() >= STEPS
            target = [(f"{size}@{STEPS}", float(STEPS), float(rows[metric].iloc[-1]) if done else None)]
        fits.append(make_fit(metric, "power_offset", f"steps-{size}", "step", pts, {"E": E, "a": a, "b": B_STEPS},
                             target, seed=7))
    return fits


def _with_loso(fit: FitResult, loso: list[tuple[str, float, float, float]]) -> FitResult:
    import dataclasses

    preds = tuple(Prediction(label, {"params": x}, p, None, actual, (p - actual) / actual, None)
                  for label, x, actual, p in loso)
    return dataclasses.replace(fit, leave_one_size_out=preds)


def write_fits(fits: list[FitResult], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in fits:
        f.write(folder / fit_filename(f.metric, f.law, f.axis))
    return folder
