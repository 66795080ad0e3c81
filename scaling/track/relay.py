"""Relayed tracking for jobs of the `local` backend: the job writes, the launcher sends.

A job that logs to MLflow itself imports mlflow and opens the store in its own process: about 2 s of CPU
per job on the demo's machine (import 1.2 s, SQLAlchemy store 0.75 s), 4-10% of a 20-70 s demo job. On
this machine the launcher's process has the store open already, so a local job instead appends what it
logs to a JSON-lines file (`RelayWriter`, no mlflow import), and the launcher follows the file into the
job's MLflow run (`Relay`, through a `RunLog`: the same batching, retries and spool as a job's own).

The file is `<job workdir>/relay.jsonl`, one record a line:

    {"start": pid}                                   an attempt began (requeues append to the same file)
    {"s": step, "t": ms, "m": {name: value}}         metrics logged at `step`, at time `t`
    {"artifact": name, "obj": ...}                   a JSON artifact
    {"tag": key, "value": text}                      a tag
    {"end": status, "reason": text | null}           the attempt ended (FINISHED, FAILED or KILLED)

Each record is written whole with one `write` and flushed, so a job killed at any point leaves complete
lines (the reader ignores a torn last line). The launcher sets the run's final status once the job's
process has ended: the last attempt's `end` record, or the launcher's own verdict if the job died without
one. If the launcher itself dies, the file stays and the next launch of the job sends it first (metrics
are stored once even if sent twice: MLflow keeps one row per name, step, timestamp and value), then
deletes it.

SLURM and Ray jobs have no launcher process beside them and log to MLflow directly (`Tracker.open_run`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.errors import TrackError
from scaling.track.runlog import checked_metrics
from scaling.track.store import STATUSES, TAG_ATTEMPT

if TYPE_CHECKING:
    from scaling.track.runlog import RunLog

log = logging.getLogger(__name__)

RELAY_FILE = "relay.jsonl"


class RelayWriter:
    """The job's side: the run-log interface of `RunLog` (`log`, `log_json_artifact`, `set_tag`, `flush`,
    `finish`), written to the relay file. Never imports mlflow."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._write({"start": os.getpid()})

    def _write(self, record: dict) -> None:
        if self._fd is None:
            raise TrackError(f"{self.path}: the run is finished; open it again to log more")
        line = (json.dumps(record) + "\n").encode()
        view = memoryview(line)
        while view:  # one write for a line of up to the pipe/page limits; loop for the rare longer artifact
            view = view[os.write(self._fd, view):]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` at `step` (bad names or values raise `TrackError` here, as `RunLog.log` does)."""
        pairs = checked_metrics(step, metrics)
        self._write({"s": int(step), "t": int(time.time() * 1000), "m": dict(pairs)})

    def log_json_artifact(self, name: str, obj: Any) -> None:
        self._write({"artifact": name, "obj": obj})

    def set_tag(self, key: str, value: Any) -> None:
        self._write({"tag": key, "value": str(value)})

    def flush(self, timeout: float | None = None) -> bool:
        return True  # every record is in the file once written (the launcher sends it)

    def finish(self, status: str = "FINISHED", reason: str | None = None, **_: Any) -> None:
        if status not in STATUSES:
            raise TrackError(f"status {status!r} is not a final status; valid: {', '.join(STATUSES)}")
        self._write({"end": status, "reason": reason})
        os.close(self._fd)
        self._fd = None


class Relay:
    """The launcher's side: follows one job's relay file into its MLflow run (`runlog`, opened by the
    launcher before the job starts). `pump()` sends what was appended since the last call; `close()`
    sends the rest, sets the final status and deletes the file."""

    def __init__(self, path: str | Path, runlog: RunLog, attempt: int | None = 1):
        self.path = Path(path)
        self.runlog = runlog
        self.attempt = attempt
        self._offset = 0
        self._starts = 0
        self._lock = threading.Lock()  # the launcher pumps from a thread and closes from its main thread
        self.closed = False
        self.end: tuple[str, str | None] | None = None
        "The last attempt's `end` record (status, reason), if it wrote one."

    def pump(self) -> int:
        """Queue every complete record appended since the last call; returns how many."""
        with self._lock:
            return 0 if self.closed else self._pump()

    def _pump(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return 0
        count = 0
        *lines, _torn = data.split(b"\n")  # a torn last line (still being written, or a killed writer) waits
        for line in lines:
            if line.strip():
                self._apply(line)  # if the run refuses it, the line is read again on the next call
                count += 1
            self._offset += len(line) + 1
        return count

    def _apply(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or rec.get("end", "FINISHED") not in STATUSES:
                raise ValueError("not a relay record")
            if "m" in rec:
                pairs = [(str(k), float(v)) for k, v in rec["m"].items()]
                step, ts = int(rec["s"]), int(rec["t"])
        except (ValueError, TypeError, KeyError, AttributeError):
            log.error("%s: skipping a malformed line %r", self.path, line[:200])
            return
        if "m" in rec:
            self.runlog.queue(step, pairs, ts)
        elif "start" in rec:
            self._starts += 1
            self.end = None
            if self._starts > 1 and self.attempt is not None:  # a requeue within one launch: a new attempt
                self.attempt += 1
                self.runlog.set_tag(TAG_ATTEMPT, self.attempt)
        elif "end" in rec:
            self.end = (rec["end"], rec.get("reason"))
        elif "artifact" in rec:
            self.runlog.log_json_artifact(rec["artifact"], rec["obj"])
        elif "tag" in rec:
            self.runlog.set_tag(rec["tag"], rec["value"])

    def close(self, status: str, reason: str | None = None) -> tuple[str, str | None]:
        """Send the rest and finish the run: with the job's own `end` record if its last attempt wrote one,
        else with `status`/`reason` (the launcher's verdict on a job that died). Returns what was set."""
        with self._lock:
            self._pump()
            self.closed = True
            final = self.end or (status, reason)
            self.runlog.finish(*final)
            self.path.unlink(missing_ok=True)
            return final


def replay_leftover(path: str | Path, runlog: RunLog) -> int:
    """Send what an earlier launch left in a relay file (its launcher died before sending it all), then
    delete the file; its `end` record is ignored (the run is being launched again). Returns the records."""
    path = Path(path)
    if not path.exists():
        return 0
    relay = Relay(path, runlog, attempt=None)
    count = relay.pump()
    runlog.flush()
    path.unlink(missing_ok=True)
    log.info("sent %d records of %s left by an earlier launch (%s)", count, runlog.run_id, path)
    return count
