"""MLflow tracking: one experiment per sweep, one MLflow run per job, found again by its run id.

The only module that imports mlflow. `Tracker(uri, experiment)` opens a store (`uri=None`: the embedded
sqlite store `sqlite:///<cwd>/mlflow.db`, created once under a file lock so parallel writers never race
on its schema); `tracker.open_run(run_id, tags, params)` creates the job's run or resumes the one tagged
`scaling.run_id = run_id` (never a second one) and returns a `RunLog`.

`RunLog.log(step, metrics)` only appends to a buffer: a background thread sends the buffer with
`log_batch` (<= 1000 metrics per call) and retries with backoff while the store is unreachable or
locked. Timestamps are taken at `log()` time, so a batch that is sent twice is stored once. Whatever
cannot be sent when the run finishes (or that the store refuses) is appended to a spool file
`<spool_dir>/<experiment>/<run id>.jsonl` and sent again by the next `open_run` of the same run id.

Reading runs back as a tidy table is `scaling.export.export_table` (re-exported here).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.errors import TrackError

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
            steps = [m.step for m in run.data._metric_objs]
            out[rid] = RunSummary(rid, run.info.run_id, run.info.status, max(steps) if steps else None,
                                  dict(run.data.metrics), self.run_url(run.info.run_id), run.data.tags.get(TAG_REASON))
        return out

    def open_run(self, run_id: str, tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                 flush_interval: float = 5.0) -> RunLog:
        """Create the run of `run_id`, or resume the existing one (status back to RUNNING); log tags and params.

        Params already logged keep their value (MLflow params are immutable); a changed one is warned about.
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
        runlog = RunLog(self, run_id, mid, flush_interval=flush_interval)
        runlog._replay_spool()
        return runlog


class RunLog:
    """The open run of one job: buffered, background metric logging; `finish` sets the final status."""

    def __init__(self, tracker: Tracker, run_id: str, mlflow_run_id: str, flush_interval: float = 5.0):
        self.tracker = tracker
        self.run_id = run_id
        self.mlflow_run_id = mlflow_run_id
        self.url = tracker.run_url(mlflow_run_id)
        self.flush_interval = flush_interval
        self.spool_path = tracker.spool_dir / tracker.experiment / f"{run_id}.jsonl"
        self._items: deque = deque()  # Metric, or ("artifact", name, obj)
        self._cond = threading.Condition()
        self._flush_requested = False
        self._closing = False
        self._abandoned = False
        self._replayed: list[Path] = []
        self._sent = 0
        self._thread = threading.Thread(target=self._worker, name=f"mlflow-{run_id}", daemon=True)
        self._thread.start()

    # --- producer side (training thread) ---------------------------------------------------------

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Queue `metrics` at `step` (never blocks on the store). Bad keys or values raise `TrackError` here."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            if not isinstance(key, str) or not _KEY.match(key):
                raise TrackError(f"metric name {key!r} is not allowed: use letters, digits, '_', '-', '.', '/', ' '")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TrackError(f"metric {key} at step {step}: expected a number, got {value!r}") from None
            batch.append(Metric(key, number, ts, int(step)))
        with self._cond:
            if self._closing:
                raise TrackError(f"run {self.run_id} is finished; open it again to log more")
            was_empty = not self._items
            self._items.extend(batch)
            if was_empty or len(self._items) >= MAX_BATCH:  # wake the sender: a timer starts, or a batch is full
                self._cond.notify_all()

    def log_json_artifact(self, name: str, obj: Any) -> None:
        """Queue `obj` to be stored as the JSON artifact `name` of the run (sent in order with the metrics)."""
        json.dumps(obj)  # fail now, in the caller, if it is not JSON
        with self._cond:
            self._items.append(("artifact", name, obj))
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is stored; False if `timeout` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._sent + len(self._items)
            self._flush_requested = True
            self._cond.notify_all()
            while self._sent < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 1.0)
        for done in self._replayed:  # everything read from the spool is stored now
            done.unlink(missing_ok=True)
        self._replayed = []
        return True

    @property
    def pending(self) -> int:
        """Metrics and artifacts queued but not stored yet."""
        return len(self._items)

    def finish(self, status: str = "FINISHED", reason: str | None = None, timeout: float = 120.0) -> None:
        """Store everything queued (spooling what cannot be sent in `timeout` s) and set the final status."""
        if status not in STATUSES:
            raise TrackError(f"status {status!r} is not a final status; valid: {', '.join(STATUSES)}")
        self.flush(timeout)
        with self._cond:
            self._closing = True
            left = list(self._items)
            if left:
                self._abandoned = True
                self._items.clear()
            self._cond.notify_all()
        self._spool(left)
        self._thread.join(timeout=5)
        client, mid = self.tracker.client, self.mlflow_run_id
        if reason:
            _retry(lambda: client.set_tag(mid, TAG_REASON, str(reason)[:5000]), f"tagging the reason of {self.run_id}",
                   timeout=timeout)
        _retry(lambda: client.set_terminated(mid, status=status), f"setting {self.run_id} to {status}", timeout=timeout)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closing:
            return
        if exc_type is None:
            self.finish("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("KILLED", "interrupted")
        else:
            self.finish("FAILED", f"{exc_type.__name__}: {exc}")

    # --- consumer side (background thread) --------------------------------------------------------

    def _take(self) -> list:
        """The next unit of work: up to MAX_BATCH leading metrics, or one artifact."""
        first = self._items[0]
        if isinstance(first, tuple):
            return [first]
        out = []
        for item in self._items:
            if isinstance(item, tuple) or len(out) == MAX_BATCH:
                break
            out.append(item)
        return out

    def _send(self, work: list) -> None:
        client = self.tracker.client
        if isinstance(work[0], tuple):
            _, name, obj = work[0]
            client.log_dict(self.mlflow_run_id, obj, name)
        else:
            client.log_batch(self.mlflow_run_id, metrics=work)

    def _worker(self) -> None:
        wait = 0.5
        last = time.monotonic()
        while True:
            with self._cond:
                while True:
                    if self._abandoned or (self._closing and not self._items):
                        return
                    if not self._items:
                        self._flush_requested = False
                        self._cond.wait()
                        continue
                    idle = time.monotonic() - last
                    if (self._closing or self._flush_requested or len(self._items) >= MAX_BATCH
                            or idle >= self.flush_interval):
                        break
                    self._cond.wait(self.flush_interval - idle)
                work = self._take()
            try:
                self._send(work)
            except Exception as e:  # noqa: BLE001 - transient: retried; permanent: spooled
                if _transient(e):
                    log.warning("logging %d items of %s failed (%s); retrying in %.1f s", len(work), self.run_id,
                                str(e).splitlines()[0][:200], wait)
                    with self._cond:
                        if not self._abandoned:
                            self._cond.wait(wait)
                    wait = min(wait * 2, 30.0)
                    continue
                log.error("the store refused %d items of %s (%s)", len(work), self.run_id, e)
                self._spool(work)
            wait = 0.5
            last = time.monotonic()
            with self._cond:
                if self._abandoned:  # finish() spooled the queue, this batch included
                    return
                for _ in work:
                    self._items.popleft()
                self._sent += len(work)
                self._cond.notify_all()

    # --- spool: what could not be stored, sent again by the next open_run -----------------------------

    def _spool(self, items: list) -> None:
        if not items:
            return
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool_path, "a") as fh:
            for item in items:
                if isinstance(item, tuple):
                    fh.write(json.dumps({"artifact": item[1], "obj": item[2]}) + "\n")
                else:
                    value = None if math.isnan(item.value) else item.value
                    fh.write(json.dumps({"k": item.key, "v": value, "t": item.timestamp, "s": item.step}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        log.error("%d metrics/artifacts of %s could not be stored yet; kept in %s, sent by the next open_run",
                  len(items), self.run_id, self.spool_path)

    def _replay_spool(self) -> None:
        """Queue what an earlier process of this run spooled; the files go once it is all stored."""
        from mlflow.entities import Metric

        folder = self.spool_path.parent
        if not folder.is_dir():
            return
        for path in sorted(folder.glob(self.spool_path.name + "*")):
            taken = path if path.name.endswith(".replay") else path.with_name(f"{path.name}.{os.getpid()}.replay")
            os.replace(path, taken)
            count = 0
            with open(taken) as fh, self._cond:
                for line in fh:
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    if "artifact" in rec:
                        self._items.append(("artifact", rec["artifact"], rec["obj"]))
                    else:
                        value = float("nan") if rec["v"] is None else rec["v"]
                        self._items.append(Metric(rec["k"], value, rec["t"], rec["s"]))
                    count += 1
                self._replayed.append(taken)
                self._flush_requested = True
                self._cond.notify_all()
            log.info("sending %d spooled metrics/artifacts of %s from %s", count, self.run_id, taken)


def log_artifact_file(tracker: Tracker, mlflow_run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload a file as an artifact of a run (with retries)."""
    _retry(lambda: tracker.client.log_artifact(mlflow_run_id, str(path), artifact_path), f"uploading {path}")


def export_table(uri: str | None, experiment: str, **kwargs: Any):
    """Runs of `experiment` -> the tidy table (see `scaling.export.export_table`)."""
    from scaling.export import export_table as _export

    return _export(uri, experiment, **kwargs)


def read_client(uri: str, experiment: str, keys: list[str] | None = None):
    """(runs, attributes, metrics) of an experiment through the MLflow client (any tracking URI).

    The frames are those of `scaling.export.read_sql`; metric histories are fetched by a thread pool.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = _retry(lambda: client.get_experiment_by_name(experiment), f"reading experiment {experiment!r}")
    if exp is None or exp.lifecycle_stage != "active":
        names = [e.name for e in _retry(lambda: client.search_experiments(), f"listing experiments of {uri}")]
        raise TrackError(f"no experiment {experiment!r} in {uri}; experiments there: {', '.join(names) or 'none'}")
    runs, token = [], None
    while True:
        page = _retry(lambda t=token: client.search_runs([exp.experiment_id], max_results=1000, page_token=t),
                      f"searching runs of {experiment!r}")
        runs.extend(page)
        token = page.token
        if not token:
            break
    run_rows = [(r.info.run_id, r.info.run_name, r.info.status, r.info.start_time) for r in runs]
    attr_rows = [(r.info.run_id, kind, k, v) for r in runs
                 for kind, d in (("tag", r.data.tags), ("param", r.data.params)) for k, v in d.items()]
    wanted = [(r.info.run_id, k) for r in runs for k in r.data.metrics if keys is None or k in keys]

    def history(item):
        mid, key = item
        hist = _retry(lambda: client.get_metric_history(mid, key), f"reading {key} of run {mid}")
        return [(mid, key, m.step, m.value, m.timestamp, i) for i, m in enumerate(hist)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        metric_rows = [row for rows in pool.map(history, wanted) for row in rows]
    return (pd.DataFrame(run_rows, columns=["run_uuid", "name", "status", "start_time"]),
            pd.DataFrame(attr_rows, columns=["run_uuid", "kind", "key", "value"]),
            pd.DataFrame(metric_rows, columns=["run_uuid", "key", "step", "value", "timestamp", "seq"]))
