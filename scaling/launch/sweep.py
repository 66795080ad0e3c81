"""`scaling run`, `scaling status` and `scaling export` for a sweep file: plan -> launch -> wait -> export.
(`scaling run` then fits and reports through the `fit` and `report` commands.)"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import TrackError
from scaling.launch.base import JobStatus, ProgressFn, get_launcher
from scaling.plan import plan
from scaling.spec import Spec

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SweepOutcome:
    results: tuple
    "One `scaling.train.JobResult` per job, in plan order."
    statuses: tuple[JobStatus, ...]
    table: Path | None
    "The exported tidy table (None if nothing was logged)."

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


def run_sweep(spec: Spec, backend: str | None = None, progress: ProgressFn | None = None) -> SweepOutcome:
    """Plan, launch (skipping FINISHED jobs, resuming the others), wait, export the table."""
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
    return SweepOutcome(tuple(results), tuple(statuses), path)


def sweep_status(spec: Spec, backend: str | None = None) -> list[JobStatus]:
    """Each job's state, step, latest L_iw, MLflow link and log (nothing is started)."""
    return get_launcher(spec, backend).status(plan(spec))
