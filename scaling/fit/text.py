"""Human-readable summaries of fits (what `scaling fit` prints)."""

from __future__ import annotations

import numpy as np

from scaling.fit.partial import PartialPrediction
from scaling.fit.result import FitResult, Prediction


def _g(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def _iv(iv) -> str:
    return "no interval" if iv is None else f"[{_g(iv[0])}, {_g(iv[1])}]"


def prediction_line(p: Prediction, level: float) -> str:
    line = f"{p.label}: predicted {_g(p.predicted)} {_iv(p.interval)}"
    if p.interval is not None:
        line += f" ({level:.0%})"
    if p.actual is not None:
        line += f", actual {_g(p.actual)}"
        if p.relative_error is not None:  # None when the file has no (finite) error
            line += f", error {100 * p.relative_error:+.2f}%"
        if p.inside is not None:
            line += " (inside the interval)" if p.inside else " (OUTSIDE the interval)"
    return line


def describe(r: FitResult) -> list[str]:
    """A few lines: formula, parameters with intervals, backtest, leave-one-size-out, warnings."""
    n = len(r.points)
    lines = [f"{r.metric}  {r.law}  over {r.axis}  ({n} points; sizes {', '.join(r.sizes)})",
             f"  {r.formula}",
             "  " + "  ".join(f"{p.name} = {_g(p.value)} {_iv(p.interval)}" + (" ON BOUND" if p.on_bound else "")
                              for p in r.params)]
    label = "backtest" if r.axis.startswith("steps-") else "holdout"
    for p in r.holdout:
        lines.append(f"  {label} {prediction_line(p, r.level)}")
    if r.leave_one_size_out:
        by_size: dict[str, list[float]] = {}
        for p in r.leave_one_size_out:
            if p.relative_error is not None:
                by_size.setdefault(p.label.split(" ")[0], []).append(p.relative_error)
        errs = [f"{s} {100 * e[0]:+.1f}%" if len(e) == 1 else f"{s} mean |{100 * np.mean(np.abs(e)):.1f}%| "
                f"over {len(e)} points" for s, e in by_size.items()]
        lines.append("  leave-one-size-out errors: " + ", ".join(errs))
    lines += [f"  left out: {e.get('run_id')} ({e.get('reason')})" for e in r.excluded]
    lines += [f"  warning: {w}" for w in r.warnings]
    return lines


def partial_lines(rows: tuple[PartialPrediction, ...], size: str, final_step: float) -> list[str]:
    out = [f"final loss of {size} at step {final_step:g} from its partial curve plus the other sizes:"]
    for r in rows:
        width = "" if r.interval is None else f"  width {_g(r.interval[1] - r.interval[0], 3)}"
        err = "" if r.relative_error is None else f"  error {100 * r.relative_error:+.2f}%"
        out.append(f"  {r.fraction:>4.0%} of the curve ({r.points} points, up to step {r.step:g}): "
                   f"{_g(r.predicted)} {_iv(r.interval)}{width}{err}")
    return out
