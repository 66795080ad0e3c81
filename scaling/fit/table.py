"""From a tidy table to the points a law is fitted to, with every exclusion named.

The table is `scaling export`'s (one row per run and step: `run_id, sweep, size, params, budget, seed,
status, step, samples, flops, <metrics>`) or any CSV with the same meaning under other column names
(`Columns`). Size-law points: the last logged value of the metric of each run. Curve points: every row
of a run where the metric has a value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import FitError

log = logging.getLogger(__name__)

FINISHED = "FINISHED"


@dataclass(frozen=True)
class Columns:
    """Which table column means what (defaults: the tidy table of docs/design.md)."""

    run: str = "run_id"
    "One id per run; a table without it counts every row as its own run."
    size: str = "size"
    "Size name (S, M, XL, 190M...); without it, the params column is used as the size."
    params: str = "params"
    "Model parameters."
    step: str = "step"
    "Optimizer step (orders a run's rows; the x of curves)."
    status: str = "status"
    "Run status; without it, every run counts as FINISHED."


def load_table(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """The tidy table from a CSV path, or Parquet for a `.parquet` name (or a DataFrame, returned as is).

    The one place a table is read: `scaling fit` calls it with `runs/<sweep>/table.csv` or `--table`.
    """
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.is_file():
        raise FitError(f"table {path} not found; export one with `scaling export SWEEP.yaml` or pass --table CSV")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (ValueError, OSError, ImportError) as e:  # pandas' parser errors and pyarrow's are ValueErrors
        kind = "Parquet file" if path.suffix == ".parquet" else "CSV"
        raise FitError(f"table {path} is not a readable {kind}: {e}") from e
    if df.empty:
        raise FitError(f"table {path} has no rows")
    return df


def require_columns(df: pd.DataFrame, needed: dict[str, str]) -> None:
    """FitError naming every missing column, the flag that renames it, and the columns there are."""
    missing = [f"{col!r} ({what})" for what, col in needed.items() if col not in df.columns]
    if missing:
        raise FitError(f"table has no column {', '.join(missing)}; columns: {', '.join(map(str, df.columns))}. "
                       "Name yours with --metric, --x-col, --params-col, --size-col, --step-col")


def normalized(df: pd.DataFrame, cols: Columns) -> pd.DataFrame:
    """A copy with `_run`, `_size`, `_step`, `_status`, `_row` filled in even when the table lacks them."""
    out = df.copy()
    out["_row"] = np.arange(len(df))
    rows = "row" + out["_row"].astype(str)
    out["_run"] = _text(df[cols.run], rows) if cols.run in df else rows  # no run id: the row is its own run
    if cols.size in df:
        out["_size"] = _text(df[cols.size], "?")
    elif cols.params in df:
        out["_size"] = df[cols.params].map(lambda v: f"{v:.4g}" if isinstance(v, (int, float)) else str(v))
    else:
        out["_size"] = out["_run"]
    out["_step"] = pd.to_numeric(df[cols.step], errors="coerce") if cols.step in df else out["_row"]
    out["_status"] = _text(df[cols.status], "MISSING").str.upper() if cols.status in df else FINISHED
    return out


def _text(column: pd.Series, missing: str | pd.Series) -> pd.Series:
    """A column as Python strings, empty cells replaced by `missing` (pandas' `astype(str)` keeps NaN)."""
    text = pd.Series([str(v) for v in column], index=column.index, dtype=object)
    return text.where(column.notna(), missing)


def _check_values(df: pd.DataFrame, column: str, what: str) -> None:
    """FitError naming the rows (run and step) where `column` is not a finite positive number."""
    v = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(v) & (v > 0))
    if bad.any():
        rows = df.loc[bad]
        listed = ", ".join(f"row {r} (run {run}, step {s:g}): {df.loc[i, column]!r}" for i, r, run, s in
                           zip(rows.index[:5], rows["_row"][:5], rows["_run"][:5], rows["_step"][:5]))
        more = f" and {bad.sum() - 5} more" if bad.sum() > 5 else ""
        raise FitError(f"{what} column {column!r} must be finite and > 0 (a log-space fit): {listed}{more}")


def size_points(df: pd.DataFrame, metric: str, x_cols: list[str], cols: Columns,
                include_unfinished: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """One point per run: the run's last row with a metric value. Returns (points, excluded runs).

    Points have columns `_run, _size, _step, _status, _row, <x_cols...>, <metric>`, sorted by size then run.
    """
    require_columns(df, {"metric": metric, **{f"x input {i + 1}": c for i, c in enumerate(x_cols)}})
    t = normalized(df, cols)
    t[metric] = pd.to_numeric(t[metric], errors="coerce")
    excluded: list[dict] = []
    has = t[metric].notna()
    for run in sorted(set(t["_run"]) - set(t.loc[has, "_run"])):
        of_run = t[t["_run"] == run]
        status = str(of_run["_status"].iloc[-1])
        state = "" if status == FINISHED else f"status {status} at step {of_run['_step'].max():g}, "
        rows = of_run["_row"].tolist()[:10]
        excluded.append({"run_id": run, "size": str(of_run["_size"].iloc[0]),
                         "reason": f"{state}no value of {metric} (NaN or empty) in rows {rows}"})
    last = t[has].sort_values(["_run", "_step", "_row"]).groupby("_run", sort=False).tail(1)
    if not include_unfinished:
        unfinished = last["_status"] != FINISHED
        for _, r in last[unfinished].iterrows():
            excluded.append({"run_id": r["_run"], "size": r["_size"],
                             "reason": f"status {r['_status']} (pass --include-unfinished to use its last value)"})
        last = last[~unfinished]
    for e in excluded:
        log.debug("run %s left out: %s", e["run_id"], e["reason"])
    if last.empty:
        raise FitError(f"no run has a usable value of {metric}"
                       + (f"; left out: {', '.join(e['run_id'] + ' (' + e['reason'] + ')' for e in excluded)}"
                          if excluded else ""))
    _check_values(last, metric, "metric")
    for c in x_cols:
        _check_values(last, c, "x")
        last[c] = pd.to_numeric(last[c])  # checked: numbers, whatever type the file gave the column
    last = last.sort_values([x_cols[0], "_run"], kind="stable")
    return last.reset_index(drop=True), excluded


def curve_points(df: pd.DataFrame, metric: str, x_cols: list[str], cols: Columns, size: str
                 ) -> tuple[pd.DataFrame, list[dict]]:
    """Every row of the runs of `size` where the metric has a value and x > 0 (step 0 is left out)."""
    require_columns(df, {"metric": metric, **{f"x input {i + 1}": c for i, c in enumerate(x_cols)}})
    t = normalized(df, cols)
    t = t[t["_size"] == str(size)].copy()
    t[metric] = pd.to_numeric(t[metric], errors="coerce")
    t = t[t[metric].notna()]
    excluded = []
    for c in x_cols:
        x = pd.to_numeric(t[c], errors="coerce")
        zero = x.notna() & (x <= 0)
        if zero.any():
            excluded.append({"run_id": ",".join(sorted(set(t.loc[zero, "_run"]))), "size": str(size),
                             "reason": f"{int(zero.sum())} rows with {c} <= 0 (a power law is undefined there)"})
            t = t[~zero]
    _check_values(t, metric, "metric")
    for c in x_cols:
        _check_values(t, c, "x")
        t[c] = pd.to_numeric(t[c])
    return t.sort_values(["_run", "_step", "_row"]).reset_index(drop=True), excluded


def data_hash(runs, X: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the points (run ids, inputs, values) with floats as exact repr."""
    payload = json.dumps([[str(r), [repr(float(v)) for v in x], repr(float(v))] for r, x, v in zip(runs, X.T, y)])
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()
