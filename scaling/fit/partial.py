"""Predict a still-running size's final loss from its partial curve plus the finished smaller sizes.

One law of two inputs (default `chinchilla` over (params, step)) is fitted jointly to every logged point
of the other sizes and to the target's points up to a fraction of its final step, then evaluated at
(target params, final step). Repeating this for growing fractions shows how the prediction tightens as
the target trains. The bootstrap resamples points within each run (every run stays in every resample).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import FitError
from scaling.fit.api import FitOptions, Target, check_fittable, fit_arrays, predictions
from scaling.fit.result import SCHEMA_VERSION, _clean, atomic_write_text
from scaling.fit.table import Columns, normalized
from scaling.laws import get_law

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartialPrediction:
    """The final-loss prediction after seeing the target's curve up to `step`."""

    fraction: float
    "Fraction of the final step seen (0: the target's curve is not used at all)."
    step: float
    "Last step of the target used (0 when none)."
    points: int
    "Target points used."
    predicted: float
    interval: tuple[float, float] | None
    actual: float | None = None
    "The target's value at the final step, when it got there."
    relative_error: float | None = None
    inside: bool | None = None


def predict_final_from_partial(table: pd.DataFrame, size: str, metric: str, final_step: float, *,
                               law: str = "chinchilla", x_cols: tuple[str, str] = ("params", "step"),
                               fractions=(0.0, 0.25, 0.5, 0.75, 1.0), cols: Columns | None = None,
                               opts: FitOptions | None = None) -> tuple[PartialPrediction, ...]:
    """Predictions of `size`'s `metric` at `final_step`, one per fraction of its curve seen.

    Fractions beyond what the target has logged are dropped; the fraction reached so far is always added.
    """
    cols, opts = cols or Columns(), opts or FitOptions(bootstrap=200)
    lw = get_law(law)
    if len(lw.inputs) != 2:
        raise FitError(f"partial-curve prediction needs a law of (size, step); {law} takes {lw.inputs}")
    missing = [c for c in (metric, *x_cols) if c not in table.columns]
    if missing:
        raise FitError(f"table has no column {missing}; columns: {', '.join(map(str, table.columns))}")
    t = normalized(table, cols)
    for c in (metric, *x_cols):
        t[c] = pd.to_numeric(t[c], errors="coerce")
    t = t[t[metric].notna() & (t[x_cols[1]] > 0)]
    bad = t[~(np.isfinite(t[metric]) & (t[metric] > 0))]
    if len(bad):
        raise FitError(f"{metric} must be finite and > 0; bad rows: {bad['_row'].tolist()[:10]}")
    is_target = t["_size"] == str(size)
    if not is_target.any():
        raise FitError(f"size {size!r} has no rows with {metric}; sizes: {', '.join(sorted(set(t['_size'])))}")
    n_target = t.loc[is_target, x_cols[0]].iloc[0]
    at_end = t[is_target & (t[x_cols[1]] >= final_step)]
    actual = float(at_end[metric].iloc[-1]) if len(at_end) else None
    others = t[~is_target]
    reached = float(t.loc[is_target, x_cols[1]].max()) / final_step
    fractions = sorted({float(f) for f in fractions if f <= reached} | {min(reached, 1.0)})
    out = []
    for frac in fractions:
        seen = t[is_target & (t[x_cols[1]] <= frac * final_step)]
        pts = pd.concat([others, seen])
        X = pts[list(x_cols)].to_numpy(dtype=float).T
        check_fittable(lw, X, list(x_cols), f"{metric} with {frac:.0%} of {size}")
        fitted = fit_arrays(lw, X, pts[metric].to_numpy(dtype=float), np.arange(len(pts)), opts,
                            strata=pts["_run"].to_numpy(), unit="point")
        (p,) = predictions(fitted, [Target(f"{size}@{final_step:g}", {x_cols[0]: float(n_target),
                                                                        x_cols[1]: float(final_step)}, actual)],
                           list(x_cols), opts.level)
        out.append(PartialPrediction(float(frac), float(seen[x_cols[1]].max()) if len(seen) else 0.0, len(seen),
                                     p.predicted, p.interval, actual, p.relative_error, p.inside))
        log.debug("%s %s: %.0f%% of the curve (%d points) -> %.4g %s", metric, size, 100 * frac, len(seen),
                 p.predicted, p.interval)
    return tuple(out)


def write_partial(path: str | os.PathLike, rows: tuple[PartialPrediction, ...], *, metric: str, law: str,
                  size: str, final_step: float) -> Path:
    """`fits/<name>/<metric>__<law>__partial-<size>.json`: {schema_version, kind, metric, law, size,
    final_step, rows: [PartialPrediction...]}, written atomically."""
    import json
    doc = {"schema_version": SCHEMA_VERSION, "kind": "partial", "metric": metric, "law": law, "size": str(size),
           "final_step": final_step, "rows": [asdict(r) for r in rows]}
    return atomic_write_text(path, json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n")
