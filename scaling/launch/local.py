"""The `local` backend: each job in its own subprocesses through submitit's local executor.

At most `launch.max_parallel` jobs run at once (submitit's local executor has no limit of its own: the
launcher starts queued jobs as others end). Each job's stdout/stderr go to `<workdir>/<sweep>/<run id>/logs/`
(`<pid>_0_log.out` / `.err`, one pair per attempt). A failed job does not stop the others.

Tracking: the launcher opens each job's MLflow run before starting it and sends what the job logs, which
the job appends to `<workdir>/relay.jsonl` (`scaling.track.relay`): a job process never imports mlflow
(~2 s of CPU a job). A thread of the launcher sends the files every `relay_s` seconds while the launcher
lives; the launcher sets the run's final status when it sees the job's process end (`wait`). A launcher
that exits first leaves the files, and the next launch of those jobs sends them.

Stopping: Ctrl-C (or `cancel`) sends SIGTERM to the running jobs, which save a checkpoint at the next step
boundary and end KILLED; relaunching resumes them. The job controllers ignore SIGINT so that a Ctrl-C in
the terminal never kills a job before its checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.errors import LaunchError
from scaling.launch.base import Handle, JobStatus, Launcher, ProgressFn, log_dir
from scaling.plan import Job
from scaling.spec import Spec

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    """The live part of a local handle: the submitit job once started, the result once done."""

    sjob: Any = None
    started: float | None = None
    result: Any = None
    relay: Any = None
    "The `Relay` sending the job's relay file to its MLflow run, while the job runs."


def latest_log(job: Job) -> Path | None:
    """The newest stdout file of a job (its latest attempt), if any."""
    files = sorted(log_dir(job).glob("*_log.out"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def _controller_alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"submitit.local._local" in cmdline


@contextlib.contextmanager
def _child_environment(threads: int):
    """Children started here ignore SIGINT (their tasks install their own handler) and use `threads`
    threads. Signal dispositions are only changed from the main thread."""
    main = threading.current_thread() is threading.main_thread()
    old_sig = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    old_env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: str(threads) for k in old_env})
    try:
        yield
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if main:
            signal.signal(signal.SIGINT, old_sig)


class LocalLauncher(Launcher):
    """Runs jobs on this machine, `max_parallel` at once (default: `launch.max_parallel`)."""

    name = "local"

    def __init__(self, spec: Spec, max_parallel: int | None = None, poll_s: float = 2.0, stop_timeout_s: float = 300.0,
                 relay_s: float = 0.5):
        super().__init__(spec)
        self.max_parallel = max_parallel or self.spec.launch.max_parallel
        if self.max_parallel < 1:
            raise LaunchError(f"max_parallel must be at least 1, got {self.max_parallel}")
        self.poll_s = poll_s
        self.stop_timeout_s = stop_timeout_s
        self._queue: list[Handle] = []
        self._running: list[Handle] = []
        self.relay_s = relay_s
        self._relays: list[Any] = []  # of the jobs started and not yet collected
        self._pumper: threading.Thread | None = None
        self._relay_lock = threading.Lock()

    # --- submit / start -------------------------------------------------------------------------------

    def submit(self, jobs: Sequence[Job]) -> list[Handle]:
        done = self.finished(jobs)  # also creates the store, before any job writes to it
        handles = []
        for job in jobs:
            if job.run_id in done:
                log.info("%s is FINISHED: skipped", job.run_id)
                handles.append(Handle(job, "", log_dir(job), skipped=True, native=_Slot()))
                continue
            handle = Handle(job, "", log_dir(job), native=_Slot())
            self._queue.append(handle)
            handles.append(handle)
        # Longest job first: the largest size runs beside all the smaller ones instead of last and alone
        # (demo: 2 min of training instead of 3 with two slots).
        self._queue.sort(key=lambda h: -h.job.total_flops)
        self._fill()
        return handles

    def _fill(self) -> None:
        self._running = [h for h in self._running if h.native.result is None]
        while self._queue and len(self._running) < self.max_parallel:
            handle = self._queue.pop(0)
            self._start(handle)
            self._running.append(handle)

    def _start(self, handle: Handle) -> None:
        from scaling.track import job_params, job_tags
        from scaling.track.relay import RELAY_FILE, Relay, replay_leftover

        job = handle.job
        handle.log_dir.mkdir(parents=True, exist_ok=True)
        path = Path(job.workdir) / RELAY_FILE
        runlog = self.tracker.open_run(job.run_id, tags=job_tags(self.spec, job), params=job_params(self.spec, job))
        replay_leftover(path, runlog)  # an earlier launcher died before sending it all
        handle.native.relay = relay = Relay(path, runlog, attempt=runlog.attempt)
        with self._relay_lock:
            self._relays.append(relay)
            if self._pumper is None:
                self._pumper = threading.Thread(target=self._pump_relays, name="scaling-relay", daemon=True)
                self._pumper.start()
        try:
            self._submit_job(handle, path)
        except BaseException as e:
            self._close_relay(handle.native, "FAILED", f"could not start the job: {e}")
            raise

    def _submit_job(self, handle: Handle, relay: Path) -> None:
        import submitit

        from scaling.launch.submitit_job import SubmititRunner
        from scaling.train import JobRunner

        job = handle.job
        executor = submitit.AutoExecutor(folder=handle.log_dir, cluster="local")
        executor.update_parameters(timeout_min=int(job.resources.time_min or 60), name=job.run_id)
        threads = self.spec.train.threads or job.resources.cpus or 1
        with _child_environment(threads):
            sjob = executor.submit(SubmititRunner(JobRunner(self.spec, job, relay=str(relay))))
        handle.native.sjob, handle.native.started = sjob, time.time()
        log.info("started %s (pid %s), log %s", job.run_id, sjob.job_id, sjob.paths.stdout)

    # --- wait -------------------------------------------------------------------------------------------

    def _collect(self, handle: Handle) -> Any:
        """The JobResult of a finished submitit job (FAILED with the error and the log on a crash)."""
        from scaling.train import JobResult

        sjob, job, slot = handle.native.sjob, handle.job, handle.native
        try:
            result = sjob.result()
            if not isinstance(result, JobResult):
                result = JobResult(job.run_id, "FAILED", 0, {}, f"the job returned {result!r}, not a JobResult")
            self._close_relay(slot, result.status, result.reason)
            return result
        except Exception as e:  # noqa: BLE001 - any failure of the job is its result
            last = _error_line(str(e)) or type(e).__name__
            status = "KILLED" if "timed-out" in str(e) or "INTERRUPTED" in str(e) else "FAILED"
            reason = f"{last.strip()} (log: {sjob.paths.stderr})"
            self._close_relay(slot, status, reason)
            summary = self.summaries().get(job.run_id)
            if summary is not None and summary.status == "RUNNING":  # died without ending its run
                self.tracker.end_run(job.run_id, status, reason)
            step = (summary.step or 0) if summary else 0
            return JobResult(job.run_id, status, step, dict(summary.metrics) if summary else {}, reason)

    def _pump_relays(self) -> None:
        """The launcher's thread: send what running jobs appended to their relay files, until none is left."""
        while True:
            with self._relay_lock:
                self._relays = [r for r in self._relays if not r.closed]
                if not self._relays:
                    self._pumper = None
                    return
                relays = list(self._relays)
            for relay in relays:
                try:
                    relay.pump()
                except Exception as e:  # noqa: BLE001 - a bad record must not stop the others; retried later
                    log.error("sending %s failed: %s", relay.path, e)
            time.sleep(self.relay_s)

    def _close_relay(self, slot: _Slot, status: str, reason: str | None) -> None:
        """Send the rest of the job's relay file and end its run (the job's own end record wins)."""
        if slot.relay is not None:
            relay, slot.relay = slot.relay, None
            relay.close(status, reason)

    def _skipped_result(self, handle: Handle, summaries: dict) -> Any:
        from scaling.train import JobResult

        s = summaries.get(handle.job.run_id)
        return JobResult(handle.job.run_id, "FINISHED", (s.step or 0) if s else handle.job.steps,
                         dict(s.metrics) if s else {})

    def wait(self, handles: Sequence[Handle], progress: ProgressFn | None = None) -> list:
        jobs = [h.job for h in handles]
        last = 0.0
        try:
            while True:
                for h in handles:
                    slot = h.native
                    if slot.result is None and slot.sjob is not None and slot.sjob.done():
                        slot.result = self._collect(h)
                        log.info("%s ended %s at step %s", h.job.run_id, slot.result.status, slot.result.step)
                self._fill()
                pending = [h for h in handles if not h.skipped and h.native.result is None]
                if progress and (not pending or time.monotonic() - last >= self.poll_s):
                    progress(self.status(jobs, handles=handles))
                    last = time.monotonic()
                if not pending:
                    break
                time.sleep(min(0.5, self.poll_s))
        except KeyboardInterrupt:
            log.warning("stopping: running jobs save a checkpoint and end KILLED; run again to resume")
            self._stop(handles)
            raise
        summaries = self.summaries() if any(h.skipped for h in handles) else {}
        return [self._skipped_result(h, summaries) if h.skipped else h.native.result for h in handles]

    # --- stop -------------------------------------------------------------------------------------------

    def _stop(self, handles: Sequence[Handle]) -> None:
        """SIGTERM every running job (again every 5 s: a job still starting may miss the first), wait."""
        from scaling.train import JobResult

        self._queue = [q for q in self._queue if q not in handles]
        for h in handles:
            if h.native.sjob is None and h.native.result is None and not h.skipped:
                h.native.result = JobResult(h.job.run_id, "KILLED", 0, {}, "never started: stopped before its turn")
        live = [h for h in handles if h.native.sjob is not None and h.native.result is None]
        deadline = time.monotonic() + self.stop_timeout_s
        while live and time.monotonic() < deadline:
            for h in live:
                with contextlib.suppress(OSError):
                    os.kill(int(h.native.sjob.job_id), signal.SIGTERM)
            end = time.monotonic() + 5
            while live and time.monotonic() < end:
                for h in live:
                    if h.native.sjob.done():
                        h.native.result = self._collect(h)
                live = [h for h in live if h.native.result is None]
                time.sleep(0.2)
        for h in live:
            log.error("%s did not stop in %.0f s: killing it", h.job.run_id, self.stop_timeout_s)
            _kill_tree(int(h.native.sjob.job_id))

    def cancel(self, jobs: Sequence[Job]) -> None:
        """SIGTERM the running local jobs of `jobs` (found by their log files: the job id is the pid)."""
        ids = {j.run_id for j in jobs}
        mine = [h for h in self._running if h.job.run_id in ids]
        if mine:
            self._stop(mine)
            return
        for job in jobs:
            path = latest_log(job)
            if path is None:
                continue
            pid = int(path.name.split("_", 1)[0])
            if _controller_alive(pid):
                log.info("stopping %s (pid %d)", job.run_id, pid)
                os.kill(pid, signal.SIGTERM)

    # --- status -----------------------------------------------------------------------------------------

    def status(self, jobs: Sequence[Job], summaries: dict | None = None,
               handles: Sequence[Handle] | None = None) -> list[JobStatus]:
        """The tracker's view, with PENDING for queued jobs, the log of the latest attempt, and KILLED for a
        RUNNING run whose process is gone (killed hard; relaunching resumes it)."""
        out = []
        by_id = {h.job.run_id: h for h in handles or ()}
        for job, st in zip(jobs, super().status(jobs, summaries)):
            h = by_id.get(job.run_id)
            path = h.native.sjob.paths.stdout if h is not None and h.native.sjob is not None else latest_log(job)
            changes: dict[str, Any] = {"log": str(path) if path else st.log}
            if h is not None and not h.skipped:
                if h.native.sjob is None and h.native.result is None:
                    changes["state"] = "PENDING"
                elif h.native.result is None:
                    changes["state"] = "RUNNING"
                    changes["backend_id"] = str(h.native.sjob.job_id)
                elif st.state == "RUNNING":  # ended without closing its run (killed hard)
                    changes.update(state=h.native.result.status, reason=h.native.result.reason)
            elif st.state == "RUNNING" and path is not None and not _controller_alive(int(path.name.split("_")[0])):
                changes.update(state="KILLED", reason="its process is gone (killed?); `scaling run` resumes it")
            out.append(_replace(st, **changes))
        return out


def _error_line(text: str) -> str:
    """The exception line of a failed submitit job's message (its trace sits between two dashed rules)."""
    parts = text.split("-" * 22)
    trace = parts[1] if len(parts) >= 3 else text
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _replace(status: JobStatus, **changes: Any) -> JobStatus:
    import dataclasses

    return dataclasses.replace(status, **changes)


def _kill_tree(pid: int) -> None:
    """SIGKILL a controller's tasks, then the controller."""
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            with contextlib.suppress(OSError):
                os.kill(int(child), signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
