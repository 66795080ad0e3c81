"""The launcher interface that every backend (`local`, `slurm`, `ray`) implements.

A backend runs `scaling.train.JobRunner(spec, job)()` for each job somewhere and reports back:

```python
launcher = get_launcher(spec)              # backend from spec.launch.backend unless named
handles = launcher.submit(jobs)            # FINISHED jobs (per the tracker) are skipped, others (re)start
results = launcher.wait(handles, progress=print_statuses)   # list[JobResult], one per handle
launcher.status(jobs)                      # list[JobStatus]: state, step, latest L_iw, MLflow link, log
launcher.cancel(jobs)
```

Backends subclass `Launcher`, implement `submit`, `wait` and `cancel`, and may refine `status` (the
default reads the tracker and the job's log folder). The package `scaling.launch` is the only one that
imports submitit and ray; this module imports neither.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.errors import LaunchError
from scaling.plan import Job
from scaling.spec import Spec

if TYPE_CHECKING:
    from scaling.track import RunSummary, Tracker

log = logging.getLogger(__name__)

STATES = ("PENDING", "RUNNING", "FINISHED", "FAILED", "KILLED", "UNKNOWN")
"""Job states: PENDING (queued, not started), RUNNING, FINISHED, FAILED, KILLED (stopped; relaunch resumes),
UNKNOWN (never launched, or the backend does not know it)."""

BACKENDS = {
    "local": "scaling.launch.local:LocalLauncher",
    "slurm": "scaling.launch.slurm:SlurmLauncher",
    "ray": "scaling.launch.ray:RayLauncher",
}


@dataclass(frozen=True)
class Handle:
    """A submitted (or skipped) job."""

    job: Job
    backend_id: str
    "The backend's id: submitit job id, Ray task id; '' for a skipped job."
    log_dir: Path
    "Folder of this job's stdout/stderr files."
    skipped: bool = False
    "True when the job was FINISHED already and was not started again."
    native: Any = field(default=None, compare=False, repr=False)
    "The backend's own job object (a submitit Job, a Ray ObjectRef, ...)."


@dataclass(frozen=True)
class JobStatus:
    """One job as `scaling status` shows it."""

    run_id: str
    state: str
    "One of STATES."
    step: int | None = None
    "Latest logged step (None: nothing logged yet)."
    steps: int = 0
    "Steps the job trains in all."
    loss: float | None = None
    "Latest primary L_iw (`eval/iw/<evaluation.primary>`)."
    train_loss: float | None = None
    "Latest training loss."
    url: str | None = None
    "Link to the job's MLflow run."
    log: str | None = None
    "The job's log folder (or file)."
    reason: str | None = None
    "Why it failed or was stopped."
    backend_id: str = ""


ProgressFn = Callable[[list[JobStatus]], None]
"""Called by `Launcher.wait` every few seconds with the status of every job it waits for."""


def log_dir(job: Job) -> Path:
    """`<job.workdir>/logs`: where a job's stdout/stderr go."""
    return Path(job.workdir) / "logs"


def resolved(spec: Spec) -> Spec:
    """The spec with its tracking URI made absolute, so that jobs in other processes or folders use the
    same store as this one."""
    from scaling.track import resolve_uri

    return dataclasses.replace(spec, tracking=dataclasses.replace(spec.tracking, uri=resolve_uri(spec.tracking.uri)))


class Launcher(ABC):
    """Base class of the backends. `spec` is the sweep; jobs come from `scaling.plan.plan(spec)`."""

    name = "base"

    def __init__(self, spec: Spec):
        self.spec = resolved(spec)
        self._tracker: Tracker | None = None

    # --- what each backend implements -------------------------------------------------------------

    @abstractmethod
    def submit(self, jobs: Sequence[Job]) -> list[Handle]:
        """Start every job that is not FINISHED (resuming from its checkpoint); skip the others."""

    @abstractmethod
    def wait(self, handles: Sequence[Handle], progress: ProgressFn | None = None) -> list:
        """Block until every handle is done; return one `scaling.train.JobResult` per handle, in order.
        A job that crashed gets a FAILED result with the error and its log path as the reason."""

    @abstractmethod
    def cancel(self, jobs: Sequence[Job]) -> None:
        """Stop the jobs (their runs end KILLED; relaunching resumes them)."""

    # --- shared ---------------------------------------------------------------------------------------

    @property
    def tracker(self) -> Tracker:
        """The sweep's tracker (created on first use; creates the store if needed)."""
        if self._tracker is None:
            from scaling.track import Tracker

            self._tracker = Tracker(self.spec.tracking.uri, self.spec.experiment)
        return self._tracker

    def summaries(self) -> dict[str, RunSummary]:
        """What the tracker knows of each run id of the sweep's experiment."""
        return self.tracker.summaries()

    def finished(self, jobs: Sequence[Job]) -> set[str]:
        """Run ids of `jobs` whose MLflow run is FINISHED."""
        done = self.summaries()
        return {j.run_id for j in jobs if j.run_id in done and done[j.run_id].status == "FINISHED"}

    def status(self, jobs: Sequence[Job], summaries: dict[str, RunSummary] | None = None) -> list[JobStatus]:
        """State, step, latest L_iw and MLflow link of each job, from the tracker (backends add queue states)."""
        summaries = self.summaries() if summaries is None else summaries
        primary = f"eval/iw/{self.spec.evaluation.primary}"
        out = []
        for job in jobs:
            s = summaries.get(job.run_id)
            logs = str(log_dir(job))
            if s is None:
                out.append(JobStatus(job.run_id, "UNKNOWN", steps=job.steps, log=logs))
                continue
            state = s.status if s.status in STATES else "PENDING" if s.status == "SCHEDULED" else "UNKNOWN"
            out.append(JobStatus(job.run_id, state, s.step, job.steps, s.metrics.get(primary),
                                 s.metrics.get("train/loss"), s.url, logs, s.reason))
        return out


def get_launcher(spec: Spec, backend: str | None = None, **options: Any) -> Launcher:
    """The launcher of `backend` (default: `spec.launch.backend`); `options` go to its constructor."""
    name = backend or spec.launch.backend
    if name not in BACKENDS:
        raise LaunchError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and not e.name.startswith("scaling"):
            extra = " (pip install 'scaling[ray]')" if e.name == "ray" else ""
            raise LaunchError(f"backend {name!r} needs the package {e.name!r}{extra}") from e
        raise LaunchError(f"backend {name!r} is not available in this version ({e})") from e
    return getattr(mod, cls)(spec, **options)
