"""`scaling run`, `scaling status` and `scaling export` for a sweep file: plan -> launch -> wait -> export
-> fit -> report (the last two as far as `scaling.fit` / `scaling.report` exist)."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import TrackError
from scaling.launch.base import JobStatus, ProgressFn, get_launcher
from scaling.plan import plan
from scaling.spec import Spec

log = logging.getLogger(__name__)

AFTER_RUN = (("scaling.fit", "fit_sweep"), ("scaling.report", "report_sweep"))
"""Steps after the table is written: `module.function(spec, table_path) -> str` (a line for the user),
called if the module and function exist."""


@dataclass(frozen=True)
class SweepOutcome:
    results: tuple
    "One `scaling.train.JobResult` per job, in plan order."
    statuses: tuple[JobStatus, ...]
    table: Path | None
    "The exported tidy table (None if nothing was logged)."
    notes: tuple[str, ...]
    "What the fit/report steps did, or why they were skipped."

    @property
    def ok(self) -> bool:
        return all(r.status == "FINISHED" for r in self.results)


def table_path(spec: Spec) -> Path:
    """`<launch.workdir>/<sweep>/table.csv`."""
    return Path(spec.launch.workdir) / spec.name / "table.csv"


def export_sweep(spec: Spec, out: str | Path | None = None) -> tuple[Path, int, int]:
    """Export the sweep's experiment to its tidy table; returns (path, rows, runs)."""
    from scaling.export import write_table
    from scaling.track import export_table

    table = export_table(spec.tracking.uri, spec.experiment)
    path = write_table(table, out or table_path(spec))
    return path, len(table), table["run_id"].nunique()


def after_run(spec: Spec, table: Path) -> list[str]:
    """Fit and report from the table, as far as those modules exist (see `AFTER_RUN`)."""
    notes = []
    for module, name in AFTER_RUN:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            notes.append(f"{module} is not installed in this version: skipped")
            continue
        fn = getattr(mod, name, None)
        if fn is None:
            notes.append(f"{module}.{name} does not exist yet: skipped")
            continue
        notes.append(str(fn(spec, table) or f"{module}.{name} done"))
    return notes


def run_sweep(spec: Spec, backend: str | None = None, progress: ProgressFn | None = None,
              fit: bool = True) -> SweepOutcome:
    """Plan, launch (skipping FINISHED jobs, resuming the others), wait, export the table, fit, report."""
    jobs = plan(spec)
    launcher = get_launcher(spec, backend)
    handles = launcher.submit(jobs)
    results = launcher.wait(handles, progress=progress)
    statuses = launcher.status(jobs)
    try:
        path, rows, runs = export_sweep(launcher.spec)
        log.info("table: %d rows from %d runs -> %s", rows, runs, path)
    except TrackError as e:
        log.error("no table: %s", e)
        path = None
    notes = after_run(launcher.spec, path) if path is not None and fit else []
    return SweepOutcome(tuple(results), tuple(statuses), path, tuple(notes))


def sweep_status(spec: Spec, backend: str | None = None) -> list[JobStatus]:
    """Each job's state, step, latest L_iw, MLflow link and log (nothing is started)."""
    return get_launcher(spec, backend).status(plan(spec))
