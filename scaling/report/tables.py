"""The report's tables and headline sentences, as plain rows of strings (rendered to HTML and Markdown by
`scaling.report.page`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from scaling.fit import FitResult, Prediction
from scaling.report.data import Run, curve_size
from scaling.report.style import fmt, fmt_count, pct, short_metric


@dataclass(frozen=True)
class Table:
    """A titled table: `rows` are lists of cells; a cell is text or `(text, href)` for a link."""

    title: str
    head: tuple[str, ...]
    rows: tuple[tuple, ...]
    caption: str = ""


def mlflow_link(uri: str | None, experiment_id: str | None, mlflow_run_id: str | None) -> str | None:
    """The run's page in the MLflow UI, when the tracking URI is a server and the ids are known."""
    if not uri or not uri.startswith(("http://", "https://")) or not experiment_id or not mlflow_run_id:
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{mlflow_run_id}"


def _ids(table: pd.DataFrame, run_id: str) -> tuple[str | None, str | None]:
    if "mlflow_run_id" not in table.columns:
        return None, None
    rows = table[table["run_id"].astype(str) == run_id]
    exp = rows["experiment_id"].dropna() if "experiment_id" in rows else pd.Series([], dtype=object)
    mid = rows["mlflow_run_id"].dropna()
    return (str(exp.iloc[0]) if len(exp) else None), (str(mid.iloc[0]) if len(mid) else None)


def runs_table(runs: Sequence[Run], table: pd.DataFrame, metric: str, mlflow_uri: str | None) -> Table:
    rows = []
    for r in runs:
        exp, mid = _ids(table, r.run_id)
        link = mlflow_link(mlflow_uri, exp, mid)
        mlflow = (mid, link) if link else (mid or f'tag scaling.run_id = "{r.run_id}"')
        steps = f"{r.step}" + (f" / {r.planned_steps}" if r.planned_steps else "")
        rows.append((r.run_id, r.size, fmt_count(r.params), fmt_count(r.flops), steps,
                     f"{fmt(r.final)} (step {r.final_step})", r.state, mlflow))
    return Table("Runs", ("run id", "size", "params", "FLOPs", "steps", f"final {short_metric(metric)}",
                          "status", "MLflow run"), tuple(rows),
                 "Final = the last logged value of the metric; a run that is not finished shows a partial value.")


def _interval(iv: tuple[float, float] | None) -> str:
    return f"[{fmt(iv[0])}, {fmt(iv[1])}]" if iv else "— (no bootstrap)"


def params_table(fits: Sequence[FitResult]) -> Table:
    rows = []
    for f in fits:
        for p in f.params:
            flag = " (on its bound)" if p.on_bound else ""
            rows.append((short_metric(f.metric), f.law, f.axis, f.formula, p.name, fmt(p.value) + flag,
                         _interval(p.interval), f"{len(f.points)} / {', '.join(f.sizes)}"))
    level = f"{fits[0].level:.0%} " if fits else ""
    return Table("Fitted parameters", ("metric", "law", "axis", "formula", "parameter", "value",
                                       f"{level}interval", "points / sizes"), tuple(rows),
                 "Intervals are bootstrap percentile intervals over whole runs (see docs/fitting.md).")


def _backtest_row(f: FitResult, h: Prediction, kind: str) -> tuple:
    inside = "—" if h.inside is None else ("yes" if h.inside else "no")
    actual = fmt(h.actual) if h.actual is not None else "not observed yet"
    return (short_metric(f.metric), f.law, f.axis, kind, h.label, fmt(h.predicted), _interval(h.interval),
            actual, pct(h.relative_error), inside)


def backtest_table(fits: Sequence[FitResult]) -> Table:
    rows = [_backtest_row(f, h, "held out") for f in fits for h in f.holdout]
    rows += [_backtest_row(f, h, "leave one size out") for f in fits for h in f.leave_one_size_out]
    return Table("Backtest", ("metric", "law", "axis", "kind", "predicted", "prediction", "interval", "actual",
                              "relative error", "inside"), tuple(rows),
                 "Relative error = (predicted − actual)/actual. Held out: fitted without that size. "
                 "Leave one size out: each size in turn predicted from the others.")


def _verdict(h: Prediction, level: float) -> str:
    if h.actual is None:
        return "; not observed yet"
    text = f"; actual {fmt(h.actual)}, error {pct(h.relative_error)}"
    if h.interval is None or h.inside is None:
        return text + " (no interval)"
    return text + f", {'inside' if h.inside else 'outside'} the {level:.0%} interval"


def headline(fits: Sequence[FitResult], metric: str, heldout: Sequence[str] = ()) -> list[str]:
    """Plain sentences for the main metric: what each size law predicts for the held-out size and how it
    backtests, the leave-one-size-out errors and the fit's warnings; and the held-out size's curve backtest.
    (Curves of the other sizes are in the tables.)"""
    lines = []
    best: dict[str, FitResult] = {}  # of several curve laws for one size, the one that fits it best (as drawn)
    for f in fits:
        size = curve_size(f)
        if f.metric == metric and size in heldout and (size not in best or f.objective < best[size].objective):
            best[size] = f
    for f in fits:
        size = curve_size(f)
        if f.metric != metric or (size is not None and best.get(size) is not f):
            continue
        on = f" over {f.axis}" if size is not None else ""
        for h in f.holdout:
            lines.append(f"{f.law}{on} ({f.formula}) predicts {h.label}: {fmt(h.predicted)} "
                         f"{_interval(h.interval)}{_verdict(h, f.level)}.")
        loso = [h for h in f.leave_one_size_out if h.relative_error is not None]
        if loso:
            worst = max(abs(h.relative_error) for h in loso)
            parts = ", ".join(f"{h.label} {pct(h.relative_error)}" for h in loso)
            lines.append(f"{f.law}: leave-one-size-out errors {parts} (worst {worst:.1%}).")
        if size is None:
            lines.extend(f"Warning ({f.law}{on}): {w}" for w in f.warnings)
    return lines


def target_lines(fits: Sequence[FitResult], metric: str, target: float | None) -> list[str]:
    """For each size law of the main metric and each held-out size with an actual value: whether the
    prediction met the sweep's `fit.target_error` (error within it and the actual inside the interval)."""
    if target is None:
        return []
    lines = []
    for f in fits:
        if f.metric != metric or curve_size(f) is not None:
            continue
        for h in f.holdout:
            if h.actual is None or h.relative_error is None:
                continue
            close = abs(h.relative_error) <= target
            inside = bool(h.inside) if h.inside is not None else None
            met = close and inside is True
            why = [f"error {pct(h.relative_error)} is {'within' if close else 'outside'} ±{target:.1%}"]
            why.append("no interval" if inside is None else f"actual {'inside' if inside else 'outside'} the interval")
            lines.append(f"Target ({f.law}, {h.label} within ±{target:.1%} and inside the interval): "
                         f"{'met' if met else 'NOT met'} ({'; '.join(why)}).")
    return lines


def partial_headline(partials: Sequence, metric: str) -> list[str]:
    """One sentence per running size predicted from its partial curve: the latest prediction."""
    lines = []
    for p in partials:
        if p.metric != metric or not p.rows:
            continue
        last = p.rows[-1]
        lines.append(f"{p.law} predicts {p.size}'s final loss at step {p.final_step:g} from the other sizes and "
                     f"{last.fraction:.0%} of its curve (up to step {last.step:g}): {fmt(last.predicted)} "
                     f"{_interval(last.interval)}" + (f"; actual {fmt(last.actual)}, error "
                                                      f"{pct(last.relative_error)}" if last.actual is not None
                                                      else "") + ".")
    return lines


def partial_table(partials: Sequence) -> Table:
    rows = []
    for p in partials:
        for r in p.rows:
            width = fmt(r.interval[1] - r.interval[0], 3) if r.interval else "—"
            rows.append((short_metric(p.metric), p.law, f"{p.size}@{p.final_step:g}", f"{r.fraction:.0%}",
                         f"{r.step:g}", str(r.points), fmt(r.predicted), _interval(r.interval), width,
                         fmt(r.actual) if r.actual is not None else "not reached", pct(r.relative_error)))
    return Table("Final loss of a running size from its partial curve",
                 ("metric", "law", "predicted", "curve seen", "up to step", "points", "prediction", "interval",
                  "width", "actual", "relative error"), tuple(rows),
                 "One law of (size, step) fitted to the other sizes and the first part of this size's curve, "
                 "evaluated at its final step: the interval should narrow as the run goes on.")


def warnings_table(fits: Sequence[FitResult]) -> Table:
    rows = tuple((short_metric(f.metric), f.law, f.axis, w) for f in fits for w in f.warnings)
    return Table("Fit warnings", ("metric", "law", "axis", "warning"), rows,
                 "Why a fit may not be trusted, as `scaling fit` found it.")
