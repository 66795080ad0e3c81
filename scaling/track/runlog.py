"""`RunLog`: one job's open MLflow run. `log()` only buffers; a background thread sends `log_batch`es,
retries while the store is unreachable, and spools what cannot be stored for the next `open_run`."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.errors import TrackError
from scaling.track.store import _KEY, MAX_BATCH, STATUSES, TAG_REASON, _retry, _transient

if TYPE_CHECKING:
    from scaling.track.store import Tracker

log = logging.getLogger(__name__)


def checked_metrics(step: int, metrics: dict[str, float]) -> list[tuple[str, float]]:
    """(name, value) pairs of `metrics`; TrackError for a name MLflow refuses or a value that is no number."""
    pairs = []
    for key, value in metrics.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise TrackError(f"metric name {key!r} is not allowed: use letters, digits, '_', '-', '.', '/', ' '")
        try:
            pairs.append((key, float(value)))
        except (TypeError, ValueError):
            raise TrackError(f"metric {key} at step {step}: expected a number, got {value!r}") from None
    return pairs


class RunLog:
    """The open run of one job: buffered, background metric logging; `finish` sets the final status."""

    def __init__(self, tracker: Tracker, run_id: str, mlflow_run_id: str, flush_interval: float | None = None,
                 attempt: int = 1):
        self.tracker = tracker
        self.run_id = run_id
        self.mlflow_run_id = mlflow_run_id
        self.attempt = attempt
        "The run's `scaling.attempt`: 1 when `open_run` created it, +1 for each resume."
        self.url = tracker.run_url(mlflow_run_id)
        self.flush_interval = flush_interval or float(os.environ.get("SCALING_FLUSH_S", "5"))
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
        self.queue(int(step), checked_metrics(step, metrics), int(time.time() * 1000))

    def queue(self, step: int, pairs: list[tuple[str, float]], ts: int) -> None:
        """Queue metrics already checked by `checked_metrics`, with the timestamp (ms) of their `log()`."""
        from mlflow.entities import Metric

        batch = [Metric(key, number, ts, step) for key, number in pairs]
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

    def set_tag(self, key: str, value: Any) -> None:
        """Set a tag of the run now (retried while the store is unreachable; for rare calls, not per step)."""
        client, mid = self.tracker.client, self.mlflow_run_id
        _retry(lambda: client.set_tag(mid, key, str(value)), f"tagging {key} of {self.run_id}")

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

