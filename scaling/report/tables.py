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


def headline(fits: Sequence[FitResult], metric: str) -> list[str]:
    """Plain sentences: does the law hold, what it predicts for the held-out size, how far to trust it."""
    lines = []
    for f in fits:
        if f.metric != metric:
            continue
        for h in f.holdout:
            on = f" ({f.axis})" if curve_size(f) is not None else ""
            text = f"{f.law}{on} ({f.formula}) predicts {h.label}: {fmt(h.predicted)} {_interval(h.interval)}"
            if h.actual is not None:
                verdict = "inside" if h.inside else "outside"
                text += (f"; actual {fmt(h.actual)}, error {pct(h.relative_error)}, "
                         f"{verdict} the {f.level:.0%} interval")
            else:
                text += "; not observed yet"
            lines.append(text + ".")
        loso = [h for h in f.leave_one_size_out if h.relative_error is not None]
        if loso:
            worst = max(abs(h.relative_error) for h in loso)
            parts = ", ".join(f"{h.label} {pct(h.relative_error)}" for h in loso)
            lines.append(f"{f.law}: leave-one-size-out errors {parts} (worst {worst:.1%}).")
        for w in f.warnings:
            lines.append(f"Warning ({f.law}, {f.axis}): {w}")
    return lines
