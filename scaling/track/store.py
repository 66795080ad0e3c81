"""The store side of tracking: tracking URIs, the embedded sqlite store (created once, under a file lock),
retries, the tags and params of a job, and `Tracker`, which creates or resumes a job's MLflow run."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.errors import TrackError

if TYPE_CHECKING:
    from scaling.track.runlog import RunLog

log = logging.getLogger(__name__)

TAG_RUN_ID = "scaling.run_id"
TAG_SWEEP = "scaling.sweep"
TAG_SIZE = "scaling.size"
TAG_BUDGET = "scaling.budget"
TAG_SEED = "scaling.seed"
TAG_REASON = "scaling.reason"
TAG_ATTEMPT = "scaling.attempt"
TAG_SWEEP_SHA = "scaling.sweep_sha256"
TAG_GIT = "mlflow.source.git.commit"
PARAM_PARAMS = "job.params"
TAG_PARAMS = "scaling.params"
"Parameter count set by an own trainer (`ctx.set_params`); the export prefers it to `job.params`."
"Param holding a run's exact parameter count (the `params` column of the table)."
STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
_MAX_PARAMS = 100  # ... and of params / tags per log_batch
_KEY = re.compile(r"^[\w\-./ ]{1,250}$")
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST",
              "MALFORMED_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_ALREADY_EXISTS"}
UI_ADDRESS = os.environ.get("SCALING_MLFLOW_UI", "http://127.0.0.1:5000")
"Where `mlflow ui` serves an embedded store: run links of sqlite stores point there."


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: None -> `sqlite:///<cwd>/mlflow.db`; relative sqlite paths made absolute."""
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri and not uri.startswith("databricks"):
        raise TrackError(f"tracking URI {uri!r} is not a URI: use e.g. http://host:5000, sqlite:///mlflow.db "
                         "or null for the embedded store")
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_store(uri: str | None) -> str:
    """Create the store if needed (sqlite: under a file lock, before parallel writers) and return its URI."""
    uri = resolve_uri(uri)
    db = sqlite_path(uri)
    if db is not None:
        from mlflow import MlflowClient

        with _file_lock(db.with_name(db.name + ".lock")):
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
                raise TrackError(f"cannot open the MLflow store {uri}: {e}") from e
    elif uri.startswith("http"):
        # The tracker retries by itself (with backoff, off the training thread); MLflow's own HTTP
        # retries would block a single call for minutes while a server restarts.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return uri


def _transient(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", None)
    return code not in _PERMANENT


def _retry(fn: Callable[[], Any], what: str, timeout: float = 300.0, first_wait: float = 0.5) -> Any:
    """Call `fn` until it succeeds; retry transient errors with backoff for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    wait = first_wait
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified just below
            if not _transient(e) or time.monotonic() + wait > deadline:
                raise TrackError(f"{what} failed: {e}") from e
            log.warning("%s failed (%s); retrying in %.1f s", what, str(e).splitlines()[0][:200], wait)
            time.sleep(wait)
            wait = min(wait * 2, 30.0)


def git_commit(path: str | Path | None = None) -> str | None:
    """The git commit of the code at `path` (default: this package), with `-dirty` if it has changes."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def job_tags(spec: Any, job: Any) -> dict[str, str]:
    """Tags of a job's run: run id, sweep, size, budget, seed, sweep-file hash and git commit."""
    tags = {TAG_RUN_ID: job.run_id, TAG_SWEEP: job.sweep, TAG_SIZE: job.size, TAG_BUDGET: job.budget.label,
            TAG_SEED: str(job.seed), TAG_SWEEP_SHA: spec.sha256, "mlflow.runName": job.run_id}
    commit = git_commit()
    if commit:
        tags[TAG_GIT] = commit
    return tags


def job_params(spec: Any, job: Any) -> dict[str, Any]:
    """Params of a job's run: the flattened resolved sweep config and the job's own numbers."""
    from scaling.spec import flatten

    params = {k: v for k, v in flatten(spec).items() if k not in ("source", "sha256")}
    params.update({PARAM_PARAMS: job.params, "job.flops_per_step": job.flops_per_step, "job.steps": job.steps,
                   "job.batch_size": job.batch_size, "job.lr": job.lr, "job.tokens_per_sample": job.tokens_per_sample,
                   "job.size": job.size, "job.budget": job.budget.label, "job.seed": job.seed})
    return params


@dataclass(frozen=True)
class RunSummary:
    """What the store knows about one job's run (for `scaling status` and skipping finished jobs)."""

    run_id: str
    mlflow_run_id: str
    status: str
    "MLflow run status: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED."
    step: int | None
    "Highest step with a logged metric."
    metrics: dict[str, float] = field(default_factory=dict)
    "Latest value of every metric."
    url: str = ""
    reason: str | None = None


class Tracker:
    """One MLflow experiment in one store. Cheap to create in each job process."""

    def __init__(self, uri: str | None, experiment: str, spool_dir: str | Path | None = None):
        from mlflow import MlflowClient

        self.uri = ensure_store(uri)
        self.experiment = experiment
        self.spool_dir = Path(spool_dir) if spool_dir else Path(os.environ.get("SCALING_SPOOL_DIR", ".scaling-spool"))
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = _retry(self._experiment_id, f"opening experiment {experiment!r} in {self.uri}")

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            kwargs = {}
            db = sqlite_path(self.uri)
            if db is not None:  # artifacts next to the store, as `mlflow server` does
                kwargs["artifact_location"] = (db.parent / "mlartifacts").as_uri()
            try:
                return self.client.create_experiment(self.experiment, **kwargs)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = self.client.get_experiment_by_name(self.experiment)  # another job created it first
        if exp.lifecycle_stage != "active":
            raise TrackError(f"experiment {self.experiment!r} was deleted in {self.uri}: restore it with "
                             f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or set "
                             "tracking.experiment to another name")
        return exp.experiment_id

    def run_url(self, mlflow_run_id: str) -> str:
        base = self.uri.rstrip("/") if self.uri.startswith("http") else UI_ADDRESS
        return f"{base}/#/experiments/{self.experiment_id}/runs/{mlflow_run_id}"

    def find_runs(self, run_id: str | None = None) -> list:
        """MLflow runs of the experiment (with tag `scaling.run_id = run_id` if given), oldest first."""
        filt = f"tags.`{TAG_RUN_ID}` = '{run_id}'" if run_id else ""
        out, token = [], None
        while True:
            page = _retry(lambda t=token: self.client.search_runs(
                [self.experiment_id], filter_string=filt, max_results=1000, order_by=["attributes.start_time ASC"],
                page_token=t), f"searching runs of {self.experiment!r}")
            out.extend(page)
            token = page.token
            if not token:
                return out

    def summaries(self) -> dict[str, RunSummary]:
        """Every job run of the experiment by its run id (the oldest MLflow run if a run id has several)."""
        out: dict[str, RunSummary] = {}
        for run in self.find_runs():
            rid = run.data.tags.get(TAG_RUN_ID) or run.info.run_name or run.info.run_id
            if rid in out:
                continue
            steps = [m.step for m in getattr(run.data, "_metric_objs", ())]
            out[rid] = RunSummary(rid, run.info.run_id, run.info.status, max(steps) if steps else None,
                                  dict(run.data.metrics), self.run_url(run.info.run_id), run.data.tags.get(TAG_REASON))
        return out

    def end_run(self, run_id: str, status: str, reason: str | None = None) -> bool:
        """Set the final status of `run_id`'s run if it is still RUNNING (a job that died without ending it).

        Returns True if a run was changed."""
        if status not in STATUSES:
            raise TrackError(f"status {status!r} is not a final status; valid: {', '.join(STATUSES)}")
        runs = [r for r in self.find_runs(run_id) if r.info.status == "RUNNING"]
        if runs:
            mid = runs[0].info.run_id
            if reason:
                _retry(lambda: self.client.set_tag(mid, TAG_REASON, str(reason)[:5000]), f"tagging {run_id}")
            _retry(lambda: self.client.set_terminated(mid, status=status), f"setting {run_id} to {status}")
            log.info("%s: run %s marked %s (%s)", run_id, mid, status, reason)
        return bool(runs)

    def open_run(self, run_id: str, tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                 flush_interval: float | None = None) -> RunLog:
        """Create the run of `run_id`, or resume the existing one (status back to RUNNING); log tags and params.

        Params already logged keep their value (MLflow params are immutable); a changed one is warned about.
        Metrics are sent every `flush_interval` seconds (default: $SCALING_FLUSH_S, else 5).
        """
        from mlflow.entities import Param, RunTag

        runs = self.find_runs(run_id)
        if not runs:
            all_tags = {"mlflow.runName": run_id, **{k: str(v) for k, v in (tags or {}).items()}, TAG_RUN_ID: run_id}
            created = _retry(lambda: self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_id),
                             f"creating the run of {run_id}")
            runs = self.find_runs(run_id)  # two launches of one job at once: both keep the oldest run
            for extra in runs[1:]:
                if extra.info.run_id == created.info.run_id:
                    log.warning("run %s was created twice at once; keeping %s", run_id, runs[0].info.run_id)
                    _retry(lambda: self.client.delete_run(created.info.run_id), f"deleting duplicate run of {run_id}")
            run = runs[0] if runs else created
            attempt = 1
        else:
            run = runs[0]
            if len(runs) > 1:
                log.warning("%d MLflow runs carry %s=%s; resuming the oldest, %s", len(runs), TAG_RUN_ID, run_id,
                            run.info.run_id)
            attempt = int(run.data.tags.get(TAG_ATTEMPT, "1")) + 1
            mid = run.info.run_id
            _retry(lambda: self.client.update_run(mid, status="RUNNING"), f"resuming the run of {run_id}")
            if TAG_REASON in run.data.tags:
                _retry(lambda: self.client.delete_tag(mid, TAG_REASON), f"clearing the reason of {run_id}")
            log.info("resuming MLflow run %s of %s (attempt %d)", mid, run_id, attempt)
        mid = run.info.run_id
        new_tags = [RunTag(k, str(v)) for k, v in (tags or {}).items() if run.data.tags.get(k) != str(v)]
        new_tags.append(RunTag(TAG_ATTEMPT, str(attempt)))
        old = run.data.params
        new_params = []
        for key, value in (params or {}).items():
            text = str(value)[:6000]
            if key not in old:
                new_params.append(Param(key, text))
            elif old[key] != text:
                log.warning("param %s of %s was %r and is now %r; MLflow keeps the first value", key, run_id,
                            old[key], text)
        for i in range(0, max(len(new_params), len(new_tags)), _MAX_PARAMS):
            p, t = new_params[i:i + _MAX_PARAMS], new_tags[i:i + _MAX_PARAMS]
            _retry(lambda p=p, t=t: self.client.log_batch(mid, params=p, tags=t), f"logging params of {run_id}")
        from scaling.track.runlog import RunLog

        runlog = RunLog(self, run_id, mid, flush_interval=flush_interval, attempt=attempt)
        runlog._replay_spool()
        return runlog
