"""Fit every law to every importance-weighted metric of a table and write `fits/<name>/*.json`.

What `scaling fit` does: for each metric (default: every `eval/iw/*` column with values) and each law,
the size law over x (default `params`) with the holdout backtest and leave-one-size-out; for the primary
metric, the loss curve over steps of every size with each one-input law.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from scaling.errors import FitError
from scaling.fit.api import FitOptions, Target, fit_curve, fit_size_law
from scaling.fit.core import usable_cpus
from scaling.fit.result import FitResult, fit_filename
from scaling.fit.table import Columns, normalized
from scaling.laws import get_law

log = logging.getLogger(__name__)

IW_PREFIX = "eval/iw/"


@dataclass(frozen=True)
class FitPlan:
    """Everything `fit_table` fits (the CLI fills it from a sweep's `fit:` block and the flags)."""

    name: str
    "Fit set name: files go to <out>/<name>/."
    laws: tuple[str, ...] = ("power", "power_offset")
    metrics: tuple[str, ...] = ()
    "Metric columns (default: every eval/iw/* column that has values)."
    primary: str | None = None
    "Metric whose loss curves over steps are fitted (default: the first metric)."
    x: str = "params"
    "x of the size law (laws of one input); `params` means `cols.params` when the table has no `params` column."
    x2: str | None = None
    "Second input of two-input laws (chinchilla's D, kaplan_ns's S); default: samples if present, else step."
    holdout: tuple[str, ...] | None = None
    "Sizes held out (None: the largest size in the table)."
    targets: tuple[Target, ...] = ()
    "Extra points to predict (e.g. a planned size that has not run), with inputs by column."
    curves: bool = True
    "Also fit the loss curve of every size over steps."
    include_unfinished: bool = False
    cols: Columns = field(default_factory=Columns)
    opts: FitOptions = field(default_factory=FitOptions)


@dataclass(frozen=True)
class FitOutcome:
    """What `fit_table` produced: written results and the fits that could not be made."""

    results: tuple[tuple[Path, FitResult], ...]
    errors: tuple[tuple[str, str], ...]
    "(file name it would have had, the FitError message)."


def iw_metrics(table: pd.DataFrame) -> tuple[str, ...]:
    """Every `eval/iw/*` column with at least one value, in table order."""
    return tuple(c for c in table.columns if str(c).startswith(IW_PREFIX) and table[c].notna().any())


def largest_size(table: pd.DataFrame, cols: Columns, x: str) -> str:
    t = normalized(table, cols)
    if x not in t.columns:
        raise FitError(f"table has no column {x!r} to find the largest size; columns: {', '.join(map(str, table))}")
    sizes = t.groupby("_size")[x].max().sort_values()
    return str(sizes.index[-1])


def fit_table(table: pd.DataFrame, plan: FitPlan, out_dir: str | os.PathLike = "fits") -> FitOutcome:
    """Fit, write one JSON per (metric, law, axis) under `<out_dir>/<plan.name>/`, return what was done."""
    metrics = plan.metrics or iw_metrics(table)
    if not plan.metrics and plan.primary in table.columns and plan.primary not in metrics:
        metrics = (plan.primary, *metrics)  # e.g. `fit.metric: val/loss` of an own trainer
    if not metrics:
        raise FitError(f"no {IW_PREFIX}* column with values in the table; name the metric with --metric "
                       f"(columns: {', '.join(map(str, table.columns))})")
    primary = plan.primary or metrics[0]
    x = plan.x
    if x == "params" and x not in table.columns and plan.cols.params in table.columns:
        x = plan.cols.params  # `--params-col n_params` names the x of the size law too
    holdout = list(plan.holdout) if plan.holdout is not None else [largest_size(table, plan.cols, x)]
    x2 = plan.x2 or ("samples" if "samples" in table.columns else plan.cols.step)
    folder = Path(out_dir) / plan.name
    processes = plan.opts.workers or fit_processes()
    # In parallel each fit is one task and its bootstrap runs in that process (the same numbers either way)
    opts = replace(plan.opts, workers=1) if processes > 1 else plan.opts
    tasks: list[tuple[str, Callable[[], FitResult]]] = []  # (file name, the fit), run below
    for metric in metrics:
        for law_name in plan.laws:
            law = get_law(law_name)
            x_cols = [x] if len(law.inputs) == 1 else [x, x2]
            axis = x_cols[0] if len(x_cols) == 1 else "-".join(x_cols)
            targets = [_with_x2(t, x_cols) for t in plan.targets]
            tasks.append((fit_filename(metric, law_name, axis), lambda law_name=law_name, x_cols=x_cols,
                          targets=targets, metric=metric: fit_size_law(
                              table, law_name, metric, x_cols, holdout=holdout, extra_targets=[t for t in targets if t],
                              cols=plan.cols, include_unfinished=plan.include_unfinished, opts=opts, name=plan.name)))
    if plan.curves and plan.cols.step in table.columns:
        sizes = _sizes(table, plan.cols, primary)
        for law_name in plan.laws:
            if len(get_law(law_name).inputs) != 1:
                continue
            for size in sizes:
                tasks.append((fit_filename(primary, law_name, f"steps-{size}"),
                              lambda law_name=law_name, size=size: fit_curve(
                                  table, law_name, primary, size, x_col=plan.cols.step, cols=plan.cols, opts=opts,
                                  name=plan.name)))
    results, errors = [], []
    for (fname, _), (res, error) in zip(tasks, _run_all([make for _, make in tasks], processes)):
        if error is not None:
            log.error("%s: %s", fname, error)
            errors.append((fname, error))
        else:
            results.append((res.write(folder / fname), res))
    return FitOutcome(tuple(results), tuple(errors))


FIT_PROCESSES = "SCALING_FIT_PROCESSES"
"Environment variable: how many fits `fit_table` runs at once (default: one per CPU, at most 4)."


def fit_processes() -> int:
    """Processes for `fit_table`'s fits: SCALING_FIT_PROCESSES, else one per CPU of this process, at most 4.

    The fits of a table are independent and take seconds each (their bootstraps refit hundreds of times), so
    one process per fit parallelizes well: on an idle 2-core machine the demo's `scaling fit` took 42 s instead of
    58 s, with the same files (docs/benchmarks.md)."""
    env = os.environ.get(FIT_PROCESSES)
    if env:
        return max(1, int(env))
    return min(usable_cpus(), 4)


_TASKS: list[Callable[[], FitResult]] | None = None  # the fits of the pool being run (inherited through fork)


def _run_task(i: int) -> tuple[FitResult | None, str | None]:
    try:
        return _TASKS[i](), None
    except FitError as e:
        return None, str(e)


def _run_all(makes: list[Callable[[], FitResult]], processes: int) -> list[tuple[FitResult | None, str | None]]:
    """Each fit's result or FitError message, in order; `processes` at once (fork), else one after another."""
    global _TASKS
    _TASKS = makes
    try:
        if processes <= 1 or len(makes) < 2 or "fork" not in multiprocessing.get_all_start_methods():
            return [_run_task(i) for i in range(len(makes))]
        with ProcessPoolExecutor(min(processes, len(makes)), mp_context=multiprocessing.get_context("fork")) as ex:
            return list(ex.map(_run_task, range(len(makes))))
    finally:
        _TASKS = None


def _with_x2(t: Target, x_cols: list[str]) -> Target | None:
    """A target usable by a law over `x_cols` (None when it lacks one of them)."""
    return t if all(c in t.x for c in x_cols) else None


def _sizes(table: pd.DataFrame, cols: Columns, metric: str) -> list[str]:
    """Sizes with values of `metric`, smallest first."""
    if metric not in table.columns:
        return []
    t = normalized(table, cols)
    t = t[pd.to_numeric(t[metric], errors="coerce").notna()]
    key = cols.params if cols.params in t.columns else "_size"
    return [str(s) for s in t.groupby("_size")[key].max().sort_values().index]
