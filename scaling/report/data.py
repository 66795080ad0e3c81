"""What the report reads from the tidy table: runs, their final values, the λ grid, the sweep's state.

The tidy table (docs/design.md) has one row per (run, step): `run_id, sweep, size, params, budget, seed,
status, step, samples, flops, train/loss, eval/iw/<weighting>..., eval/level/<k>...`. Only `run_id`,
`size`, `step` and the metric are required; a missing `params`, `flops` or `status` column leaves out
the figures that need it, with a note.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import ReportError

log = logging.getLogger(__name__)

REQUIRED = ("run_id", "size", "step")
IW_PREFIX = "eval/iw/"
LEVEL_PREFIX = "eval/level/"
DONE = "FINISHED"


def load_table(path: str | Path) -> pd.DataFrame:
    """Read an exported tidy table (CSV, or Parquet for a `.parquet` name). The one place the report gets its
    table from a file: swap it (e.g. for the MLflow export) by passing a DataFrame to `build_report` instead."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"table {path} not found: export the sweep first (`scaling export SWEEP.yaml`) "
                          "or give one with --table")
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (ValueError, OSError, ImportError) as e:  # pandas' parser errors and pyarrow's are ValueErrors
        kind = "Parquet file" if path.suffix == ".parquet" else "CSV"
        raise ReportError(f"table {path} is not a readable {kind} ({e})") from e
    return table


def rename_columns(table: pd.DataFrame, size_col: str | None = None, params_col: str | None = None,
                   step_col: str | None = None) -> pd.DataFrame:
    """A table from elsewhere with its own column names -> the tidy names (`--size-col` and friends).

    A renamed column replaces one that already has the tidy name. Without a size column, sizes are named
    from `params` as `scaling fit` names them (`1.44e+09`); without a run id column, each size is one run."""
    mapping = {src: dst for src, dst in ((size_col, "size"), (params_col, "params"), (step_col, "step")) if src}
    missing = [src for src in mapping if src not in table.columns]
    if missing:
        columns = ", ".join(map(str, table.columns))
        raise ReportError(f"column(s) {', '.join(missing)} not in the table; columns: {columns}")
    replaced = [dst for src, dst in mapping.items() if dst in table.columns and dst != src]
    table = table.drop(columns=replaced).rename(columns=mapping)  # `--step-col tokens` wins over a `step` column
    if "size" not in table.columns and "params" in table.columns:  # sizes named as `scaling fit` names them
        table = table.assign(size=pd.to_numeric(table["params"], errors="coerce").map(lambda v: f"{v:.4g}"))
    if "run_id" not in table.columns and "size" in table.columns:  # one run per size in a foreign table
        table = table.assign(run_id=table["size"].astype(str))
    return table


def rename_fit_columns(fits: list, size_col: str | None = None, params_col: str | None = None,
                       step_col: str | None = None) -> list:
    """The fits with their input columns renamed as `rename_columns` renamed the table's, so that a law
    fitted over `n_params` (`scaling fit --params-col n_params`) is drawn over the table's `params`."""
    import dataclasses

    mapping = {src: dst for src, dst in ((size_col, "size"), (params_col, "params"), (step_col, "step")) if src}
    if not mapping:
        return list(fits)

    def keys(x: dict) -> dict:
        return {mapping.get(k, k): v for k, v in x.items()}

    def each(items: tuple) -> tuple:
        return tuple(dataclasses.replace(i, x=keys(i.x)) for i in items)

    return [dataclasses.replace(f, columns={k: mapping.get(v, v) for k, v in f.columns.items()}, points=each(f.points),
                                holdout=each(f.holdout), leave_one_size_out=each(f.leave_one_size_out)) for f in fits]


def check_table(table: pd.DataFrame, metric: str) -> None:
    """Raise `ReportError` naming what is missing, so that a bad table never becomes an empty report."""
    if table.empty:
        raise ReportError("the table has no rows: no run has logged anything yet (check `scaling status`)")
    missing = [c for c in (*REQUIRED, metric) if c not in table.columns]
    if missing:
        iw = ", ".join(iw_metrics(table)) or "none"
        raise ReportError(f"the table lacks column(s) {', '.join(missing)} (eval/iw metrics present: {iw}); "
                          "pass --metric, --size-col or --step-col for a table from elsewhere")
    if table[metric].notna().sum() == 0:
        raise ReportError(f"column {metric} has no values yet: no run has been evaluated (eval_every)")
    step = pd.to_numeric(table["step"], errors="coerce")
    if step.isna().any():
        bad = table.loc[step.isna(), "run_id"].astype(str).unique()
        raise ReportError(f"column step has rows without a number (runs {', '.join(bad[:5])}): give --step-col "
                          "a column that every row has (e.g. tokens or samples), or fill it in")


NUMERIC_PREFIXES = ("eval/", "train/", "progress/", "perf/")


def numeric_table(table: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """The table with its number columns as numbers: `step`, `params`, `samples`, `flops` and every metric.

    A cell that is not a number (text in a table from elsewhere, a damaged file) is a `ReportError` in the
    step column (which must also be finite in every row) or the drawn metric; elsewhere it is left out with
    a note. Returns (table, notes)."""
    out, notes = table.copy(), []
    columns = [c for c in out.columns if isinstance(c, str) and (c in ("step", "params", "samples", "flops", metric)
                                                                 or c.startswith(NUMERIC_PREFIXES))]
    for col in columns:
        values = pd.to_numeric(out[col], errors="coerce").astype(float)
        bad = ~np.isfinite(values) if col == "step" else values.isna() & out[col].notna()
        if bad.any():
            rows = ", ".join(f"row {i} ({out[col].iloc[i]!r})" for i in np.flatnonzero(bad.to_numpy())[:5])
            if col == "step":
                raise ReportError(f"column step must hold a finite number in every row: {rows}; fix or remove them")
            if col == metric:
                raise ReportError(f"column {col} has cells that are not numbers: {rows}; fix or remove them")
            notes.append(f"column {col} has cells that are not numbers ({rows}): they are left out")
        out[col] = values
    return out, notes


def iw_metrics(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if isinstance(c, str) and c.startswith(IW_PREFIX)]


def level_columns(table: pd.DataFrame) -> list[str]:
    """`eval/level/000`, `eval/level/001`, ... in grid order."""
    cols = [c for c in table.columns if isinstance(c, str) and c.startswith(LEVEL_PREFIX)]
    return sorted(cols, key=lambda c: int(c[len(LEVEL_PREFIX):]))


def curve_size(fit) -> str | None:
    """The size whose loss curve a fit describes (`axis` `steps-XL`, `samples-XL`, ...), None for a size law."""
    size = (fit.extra or {}).get("size")
    if size is not None:
        return str(size)
    prefix, _, rest = fit.axis.partition("-")
    return rest if rest and prefix in ("steps", "step", "samples", "flops", "tokens") else None


def lambda_grid(lambda_min: float, lambda_max: float, step: float) -> np.ndarray:
    """The evaluation grid exactly as the evaluator builds it: level column k is grid[k]."""
    return np.arange(lambda_min, lambda_max + step / 2, step)


def pick_metric(table: pd.DataFrame, preferred: str | None) -> str:
    """The metric to fit and draw: `preferred`, else `eval/iw/laplace`, else the first `eval/iw/*` column."""
    if preferred:
        return preferred
    found = iw_metrics(table)
    if f"{IW_PREFIX}laplace" in found:
        return f"{IW_PREFIX}laplace"
    if found:
        return found[0]
    raise ReportError("the table has no eval/iw/<weighting> column; name the loss column with --metric")


@dataclass(frozen=True)
class Run:
    """One run as the report sees it."""

    run_id: str
    size: str
    params: float
    seed: str
    status: str
    step: int
    "Last step logged."
    planned_steps: int | None
    final: float
    "Last logged value of the metric."
    final_step: int
    flops: float
    "Training FLOPs at the last logged step (NaN without a `flops` column)."

    @property
    def partial(self) -> bool:
        return self.status != DONE or (self.planned_steps is not None and self.final_step < self.planned_steps)

    @property
    def state(self) -> str:
        """Plain words: `finished`, `running, step 300 of 600`, `failed at step 120`."""
        of = f" of {self.planned_steps}" if self.planned_steps else ""
        if self.status == "RUNNING":
            return f"running, step {self.step}{of}"
        if self.status in ("FAILED", "KILLED"):
            return f"{self.status.lower()} at step {self.step}{of}"
        if self.status != DONE:
            return f"{self.status.lower()}, step {self.step}{of}"
        if self.planned_steps is not None and self.final_step < self.planned_steps:
            return f"finished, but evaluated only up to step {self.final_step}{of}"
        return "finished"


def _first(values: pd.Series, default):
    values = values.dropna()
    return values.iloc[0] if len(values) else default


def runs_of(table: pd.DataFrame, metric: str, planned_steps: Mapping[str, int] | None = None) -> list[Run]:
    """One `Run` per run id that has at least one value of `metric`, smallest size first."""
    runs = []
    for run_id, rows in table.groupby("run_id", sort=False):
        rows = rows.sort_values("step")
        evaluated = rows[rows[metric].notna()]
        if evaluated.empty:
            continue
        size = str(rows["size"].iloc[0])
        status = str(_first(rows["status"], DONE)).upper() if "status" in rows else DONE
        last = evaluated.iloc[-1]
        flops = float(rows["flops"].max()) if "flops" in rows and rows["flops"].notna().any() else math.nan
        runs.append(Run(
            run_id=str(run_id), size=size,
            params=float(_first(rows["params"], math.nan)) if "params" in rows else math.nan,
            seed=str(_first(rows["seed"], "")) if "seed" in rows else "",
            status=status, step=int(rows["step"].max()),
            planned_steps=(planned_steps or {}).get(str(run_id)),
            final=float(last[metric]), final_step=int(last["step"]), flops=flops,
        ))
    order = size_order(runs)
    return sorted(runs, key=lambda r: (order.index(r.size), r.run_id))


def size_order(runs: Iterable[Run]) -> list[str]:
    """Sizes by parameter count (then name): the order of every legend and table."""
    params: dict[str, float] = {}
    for run in runs:
        params.setdefault(run.size, run.params)
    return sorted(params, key=lambda s: (math.inf if math.isnan(params[s]) else params[s], s))


def sweep_notes(runs: list[Run], expected_sizes: Iterable[str] = (), holdout: Iterable[str] = ()) -> list[str]:
    """Plain sentences about what is missing or unfinished; empty when every run finished."""
    notes = []
    present = {r.size for r in runs}
    holdout = set(holdout)
    for size in expected_sizes:
        if size not in present:
            role = (" (the held-out size: there is nothing to compare the prediction with yet)"
                    if size in holdout else "")
            notes.append(f"{size} has no evaluated run in the table: not started, not evaluated yet, "
                         f"or not exported{role}.")
    for run in runs:
        if run.partial:
            role = " (the held-out size)" if run.size in holdout else ""
            notes.append(f"{run.size} ({run.run_id}){role} is {run.state}: its points are partial losses, "
                         "drawn hollow.")
    return notes


def excluded_notes(fits) -> list[str]:
    """What the fits left out and why (e.g. a run still RUNNING), once per run and reason."""
    seen = dict.fromkeys((str(e.get("run_id", e.get("size", "?"))), str(e.get("reason", "no reason given")))
                         for f in fits for e in f.excluded)
    return [f"{run} was left out of the fits: {reason}." for run, reason in seen]


def final_levels(table: pd.DataFrame, runs: list[Run]) -> dict[str, np.ndarray]:
    """ℓ(λ_k) per size at each run's last evaluation, averaged over the seeds of the size."""
    cols = level_columns(table)
    if not cols:
        return {}
    by_size: dict[str, list[np.ndarray]] = {}
    for run in runs:
        rows = table[(table["run_id"].astype(str) == run.run_id) & (table["step"] == run.final_step)]
        values = rows[cols].to_numpy(dtype=float)
        if len(values) and np.isfinite(values[-1]).any():
            by_size.setdefault(run.size, []).append(values[-1])
    return {size: np.nanmean(np.vstack(v), axis=0) for size, v in by_size.items()}


def curves(table: pd.DataFrame, metric: str, x: str) -> dict[str, pd.DataFrame]:
    """For each run id, its (x, metric) points where both are present, sorted by x."""
    if x not in table.columns:
        return {}
    out = {}
    for run_id, rows in table[table[metric].notna() & table[x].notna()].groupby("run_id", sort=False):
        out[str(run_id)] = rows[[x, metric]].sort_values(x)
    return out
