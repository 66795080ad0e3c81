"""The SLURM backend: a sweep's jobs as SLURM job arrays through submitit.

```python
launcher = SlurmLauncher(spec, cluster="dev")   # profile slurm/dev.yaml (default: spec.launch.cluster)
jobs = launcher.plan()                          # the sweep's jobs, resources resolved with the profile
print(launcher.render(jobs))                    # the sbatch scripts (`scaling submit --dry-run`)
handles = launcher.submit(jobs)                 # one array per resource shape; ids in slurm_jobs.json
results = launcher.wait(handles)                # polls sacct/squeue (never waits forever)
```

Jobs with the same resolved resources go into one array (split at the profile's `max_array_size`). Each
task runs `SlurmRunner(JobRunner(spec, job))`: it sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT
from submitit's `JobEnvironment` (one task per GPU), then runs the job. On USR2 before the time limit (or
preemption) the trainer checkpoints at a step boundary and chains to submitit's handler, which calls
`SlurmRunner.checkpoint()` and requeues the same job id (at most `launch.max_requeues` times for time
limits); the requeued task resumes from the checkpoint in the same MLflow run.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, JobPaths, pickle_load
from submitit.helpers import Checkpointable, DelayedSubmission
from submitit.slurm.slurm import _make_sbatch_string

from scaling.errors import LaunchError, SpecError
from scaling.launch.base import Handle, JobStatus, Launcher, ProgressFn, log_dir
from scaling.launch.profiles import ClusterProfile, check_resources, load_profile, sbatch_parameters
from scaling.launch.slurm_queue import JobRecord, JobRecords, QueueState, query, scancel
from scaling.plan import Job, plan
from scaling.spec import Resources, Spec

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
"""After a stop that did not requeue (SIGTERM), wait this long for SLURM's kill or a following USR2."""

RunnerFactory = Callable[[Spec, Job], Callable[[], Any]]


def job_runner(spec: Spec, job: Job) -> Callable[[], Any]:
    """The default runner of a job: `scaling.train.JobRunner(spec, job)`."""
    from scaling.train import JobRunner

    return JobRunner(spec, job)


def master_port(job_id: str) -> int:
    """The rendezvous port of a job: the same on all its tasks, different between jobs sharing a node."""
    return 20000 + int(re.sub(r"\D", "", job_id) or 0) % 20000


class SlurmRunner(Checkpointable):
    """What a SLURM task runs: the job's runner, with the rank variables set from submitit's JobEnvironment.

    The runner is built inside the job (`factory(spec, job)`), so submitting never imports torch.
    `checkpoint()` (called by submitit's USR2 handler) wraps the runner's own `checkpoint()` in a
    `DelayedSubmission`, so `scaling.train` never imports submitit."""

    def __init__(self, spec: Spec, job: Job, factory: RunnerFactory, runner: Callable[[], Any] | None = None):
        self.spec, self.job, self.factory, self.runner = spec, job, factory, runner

    def __call__(self) -> Any:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
        env = submitit.JobEnvironment()
        os.environ.update({
            "RANK": str(env.global_rank), "WORLD_SIZE": str(env.num_tasks), "LOCAL_RANK": str(env.local_rank),
            "MASTER_ADDR": env.hostnames[0], "MASTER_PORT": str(master_port(env.raw_job_id)),
        })
        env.paths.result_pickle.unlink(missing_ok=True)  # a requeued attempt must not leave the last one's
        if self.runner is None:
            self.runner = self.factory(self.spec, self.job)
        result = self.runner()
        if getattr(result, "status", None) == "KILLED":
            # Stopped by SIGTERM (scancel, scontrol requeue, preemption): SLURM kills or requeues us within
            # KillWait; a USR2 that follows (submitit's interrupt) reaches submitit's handler, now restored.
            time.sleep(STOP_GRACE_S)
        else:
            # Done: the time-limit warning (USR2, `--signal` seconds before the limit) may still come while
            # submitit writes the result or Python shuts down. Submitit would requeue the finished job, and at
            # shutdown Python restores the default action, which kills the task: SLURM then records FAILED
            # (exit 12) for a job that finished. Ignored, it does neither (Python keeps SIG_IGN at shutdown).
            signal.signal(env._usr_sig(), signal.SIG_IGN)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        inner = getattr(self.runner, "checkpoint", None)
        runner = inner(*args, **kwargs) if inner else None
        return DelayedSubmission(SlurmRunner(self.spec, self.job, self.factory, runner))


@dataclass(frozen=True)
class SlurmJobStatus(JobStatus):
    """`JobStatus` with what SLURM says: its state word, raw state and the requeues so far."""

    slurm_state: str = "not submitted"
    "pending, running, requeued, completed, failed, cancelled, timeout, unknown, or not submitted."
    slurm_raw: str = ""
    restarts: int = 0


def _merge_state(tracked: str, word: str) -> str:
    """The launcher-level state (base.STATES) from the tracker's and SLURM's views."""
    if word in ("pending", "requeued"):
        return "PENDING"
    if word == "running":
        return "RUNNING"
    if tracked == "FINISHED" or word in ("completed", "unknown", "not submitted"):
        return tracked
    return "KILLED" if word == "cancelled" else "FAILED"


class SlurmLauncher(Launcher):
    """Submits a sweep to SLURM as job arrays (see the module docstring)."""

    name = "slurm"

    def __init__(self, spec: Spec, cluster: str | None = None, runner_factory: RunnerFactory | None = None,
                 poll_s: float = 5.0, timeout_s: float | None = None, lost_after_s: float = 60.0):
        super().__init__(spec)
        name = cluster or spec.launch.cluster
        self.profile = load_profile(name, spec.source) if name else ClusterProfile()
        self.runner_factory = runner_factory or job_runner
        self.poll_s, self.timeout_s, self.lost_after_s = poll_s, timeout_s, lost_after_s
        self.root = Path(spec.launch.workdir).absolute() / spec.name
        self.folder = self.root / "slurm"
        self.records = JobRecords(self.root / "slurm_jobs.json")

    # --- planning ---------------------------------------------------------------------------------------

    def resources(self, job: Job) -> Resources:
        """The job's resources: sweep, then profile defaults, then built-in defaults; checked."""
        res = self.spec.resources_for(job.size, self.profile.defaults)
        where = f"launch.resources.{job.size}"
        check_resources(res, where)
        parts = self.profile.partitions
        if parts and res.partition not in parts:
            raise SpecError(f"job {job.run_id}: partition {res.partition!r} is not in cluster profile "
                            f"{self.profile.name!r} ({self.profile.source}); valid: {', '.join(parts)}",
                            f"{where}.partition", self.spec.source)
        return res

    def plan(self) -> list[Job]:
        """The sweep's jobs with resources resolved through the cluster profile."""
        return plan(self.spec, self.profile.defaults)

    def groups(self, jobs: Sequence[Job]) -> list[tuple[Resources, list[Job]]]:
        """Jobs grouped by resolved resources (first-seen order), each group at most `max_array_size`."""
        by_shape: dict[Resources, list[Job]] = {}
        for job in jobs:
            by_shape.setdefault(self.resources(job), []).append(job)
        size = self.profile.max_array_size
        return [(res, group[i:i + size]) for res, group in by_shape.items() for i in range(0, len(group), size)]

    def _parameters(self, res: Resources, group: Sequence[Job]) -> dict[str, Any]:
        sizes = "-".join(dict.fromkeys(j.size for j in group))
        name = f"{self.spec.name}-{sizes}"[:64]
        return sbatch_parameters(res, self.profile, name, f"launch.resources.{group[0].size}")

    @property
    def command(self) -> str:
        """The command each task runs (what submitit's SlurmExecutor puts after srun)."""
        python = self.profile.python or shlex.quote(sys.executable)
        return f"{python} -u -m submitit.core._submit {shlex.quote(str(self.folder))}"

    def _executor(self, params: dict[str, Any]) -> submitit.SlurmExecutor:
        executor = submitit.SlurmExecutor(self.folder, max_num_timeout=self.spec.launch.max_requeues,
                                          python=self.profile.python)
        executor.update_parameters(**params)
        return executor

    def render(self, jobs: Sequence[Job]) -> list[tuple[list[Job], str]]:
        """The sbatch script of each array that `submit` would send (nothing is submitted)."""
        out = []
        for res, group in self.groups(jobs):
            params = self._parameters(res, group)
            text = _make_sbatch_string(command=self.command, folder=self.folder, **params,
                                       **({"map_count": len(group)} if len(group) > 1 else {}))
            out.append((group, text))
        return out

    # --- the Launcher interface -------------------------------------------------------------------------

    def submit(self, jobs: Sequence[Job]) -> list[Handle]:
        """Submit every job that is neither finished (`result.json`) nor still queued or running."""
        records = self.records.load()
        active_ids = [records[j.run_id].job_id for j in jobs if j.run_id in records]
        states = query(active_ids) if active_ids else {}
        handles: dict[str, Handle] = {}
        todo = []
        for job in jobs:
            rec = records.get(job.run_id)
            if (Path(job.workdir) / "result.json").exists():
                handles[job.run_id] = Handle(job, rec.job_id if rec else "", log_dir(job), skipped=True)
            elif rec is not None and states[rec.job_id].word in ("pending", "running", "requeued"):
                log.info("%s is already %s as SLURM job %s", job.run_id, states[rec.job_id].word, rec.job_id)
                handles[job.run_id] = self._handle(job, rec.job_id)
            else:
                todo.append(job)
        if todo and shutil.which("sbatch") is None:
            raise LaunchError(f"sbatch is not on the PATH, so {len(todo)} jobs ({_names(todo)}) were not submitted: "
                              "run scaling submit on a SLURM login node (or start the dev cluster: "
                              "bash slurm/dev-cluster.sh start)")
        uri = self.spec.tracking.uri or ""
        if todo and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
            from scaling.track import ensure_store

            ensure_store(uri)  # a brand-new sqlite store must exist before array tasks write to it at once
        new_records = []
        for res, group in self.groups(todo):
            ids = self._submit_group(res, group)
            for job, job_id in zip(group, ids):
                handles[job.run_id] = self._handle(job, job_id)
                new_records.append(JobRecord(job.run_id, job_id, str(self.folder), self.profile.name, time.time()))
            log.info("submitted %d jobs as SLURM %s %s", len(group), "array" if len(group) > 1 else "job",
                     ids[0].split("_")[0])
        if new_records:
            self.records.add(new_records)
        return [handles[j.run_id] for j in jobs]

    def _submit_group(self, res: Resources, group: list[Job]) -> list[str]:
        params = self._parameters(res, group)
        executor = self._executor(params)
        self.folder.mkdir(parents=True, exist_ok=True)
        before = set(self.folder.glob("*.pkl"))
        runners = [SlurmRunner(self.spec, job, self.runner_factory) for job in group]
        try:
            submitted = executor.submit_array(runners)
        except FailedJobError as e:
            for leftover in set(self.folder.glob("*.pkl")) - before:
                leftover.unlink(missing_ok=True)
            message = " ".join(str(e).split()) or "no message"
            where = f"partition {res.partition!r}" if res.partition else "the default partition"
            raise LaunchError(f"sbatch refused {len(group)} jobs ({_names(group)}) for {where}: {message}") from None
        return [j.job_id for j in submitted]

    def _handle(self, job: Job, job_id: str) -> Handle:
        logs = log_dir(job)
        logs.mkdir(parents=True, exist_ok=True)
        paths = JobPaths(self.folder, job_id, 0)
        for suffix, target in ((".out", paths.stdout), (".err", paths.stderr)):
            link = logs / f"slurm-{job_id}{suffix}"
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(target, logs))
        return Handle(job, job_id, logs, native=submitit.SlurmJob(self.folder, job_id))

    def wait(self, handles: Sequence[Handle], progress: ProgressFn | None = None) -> list:
        """Poll SLURM until every job is done; one `JobResult` per handle. Cancelled or vanished jobs end
        the wait too; `timeout_s` (if set) bounds it with a LaunchError naming the jobs still running."""
        ids = [h.backend_id for h in handles if not h.skipped]
        start = time.monotonic()
        unreachable_since: float | None = None
        unknown_since: dict[str, float] = {}
        while True:
            try:
                states = query(ids)
                unreachable_since = None
            except LaunchError as e:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > 300:
                    raise LaunchError(f"SLURM did not answer for 5 minutes ({e}); the jobs may still run: "
                                      "check with squeue and `scaling status`") from None
                time.sleep(self.poll_s)
                continue
            now = time.monotonic()
            for j, s in states.items():
                if s.word == "unknown":
                    unknown_since.setdefault(j, now)
            lost = {j for j, t in unknown_since.items() if states[j].word == "unknown" and now - t > self.lost_after_s}
            if progress is not None:
                progress(self.status([h.job for h in handles], states=states))
            if all(s.done or j in lost for j, s in states.items()):
                break
            if self.timeout_s is not None and now - start > self.timeout_s:
                waiting = [f"{h.job.run_id} ({states[h.backend_id].word})" for h in handles
                           if not h.skipped and not states[h.backend_id].done]
                raise LaunchError(f"gave up waiting after {self.timeout_s:.0f} s for {', '.join(waiting)}; they "
                                  "keep running: `scaling status` follows them, `scaling cancel` stops them")
            time.sleep(self.poll_s)
        return [self._result(h, states.get(h.backend_id)) for h in handles]

    def _result(self, handle: Handle, state: QueueState | None) -> Any:
        from scaling.train import JobResult

        job = handle.job
        done = Path(job.workdir) / "result.json"
        if handle.skipped and done.exists():
            return JobResult.from_json(done.read_text())
        paths = JobPaths(self.folder, handle.backend_id, 0)
        where = f"SLURM job {handle.backend_id}, log {paths.stdout}"
        if paths.result_pickle.exists():
            outcome, value = pickle_load(paths.result_pickle)
            if outcome == "success":
                return value
            last = [line for line in str(value).strip().splitlines() if line.strip()][-1:] or ["no traceback"]
            return JobResult(job.run_id, "FAILED", _last_step(job), {}, f"{last[0].strip()} ({where})")
        word = state.word if state else "unknown"
        detail = f"{state.slurm}, exit {state.exit_code}" if state and state.slurm else "unknown to SLURM"
        status = "KILLED" if word == "cancelled" else "FAILED"
        return JobResult(job.run_id, status, _last_step(job), {}, f"{word} ({detail}; {where})")

    def cancel(self, jobs: Sequence[Job]) -> list[str]:
        """scancel the jobs' SLURM jobs that have not ended; returns their ids."""
        records = self.records.load()
        states = query([records[j.run_id].job_id for j in jobs if j.run_id in records])
        ids = [job_id for job_id, state in states.items() if not state.done]
        scancel(ids)
        log.info("cancelled %d SLURM jobs", len(ids))
        return ids

    def status(self, jobs: Sequence[Job], summaries: dict | None = None,
               states: dict[str, QueueState] | None = None) -> list[SlurmJobStatus]:
        """The tracker's view (step, latest L_iw, MLflow link) plus SLURM's state of each job."""
        records = self.records.load()
        if states is None:
            states = query([records[j.run_id].job_id for j in jobs if j.run_id in records])
        out = []
        for base, job in zip(super().status(jobs, summaries), jobs):
            rec = records.get(job.run_id)
            qs = states.get(rec.job_id) if rec else None
            word = qs.word if qs else "not submitted"
            if (Path(job.workdir) / "result.json").exists() and word in ("unknown", "not submitted"):
                word = "completed"
            fields = asdict(base) | {"state": _merge_state(base.state, word), "slurm_state": word,
                                     "slurm_raw": qs.slurm if qs else "", "restarts": qs.restarts if qs else 0,
                                     "backend_id": rec.job_id if rec else ""}
            if qs and word in ("failed", "timeout", "cancelled") and not base.reason:
                fields["reason"] = f"SLURM {qs.slurm}, exit {qs.exit_code}"
            out.append(SlurmJobStatus(**fields))
        return out

    def resubmittable(self, jobs: Sequence[Job], failed_only: bool = True) -> list[Job]:
        """Jobs to submit again: those whose last SLURM job failed, was cancelled, timed out or vanished
        without finishing (and, unless `failed_only`, those never submitted). They resume from checkpoints."""
        records = self.records.load()
        states = query([records[j.run_id].job_id for j in jobs if j.run_id in records])
        out = []
        for job in jobs:
            if (Path(job.workdir) / "result.json").exists():
                continue
            rec = records.get(job.run_id)
            if rec is None:
                if not failed_only:
                    out.append(job)
            elif states[rec.job_id].done or states[rec.job_id].word == "unknown":
                out.append(job)
        return out


def _names(jobs: Sequence[Job]) -> str:
    names = [j.run_id for j in jobs]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _last_step(job: Job) -> int:
    steps = [int(m.group(1)) for p in (Path(job.workdir) / "checkpoints").glob("step-*.pt")
             if (m := re.fullmatch(r"step-(\d+)\.pt", p.name))]
    return max(steps, default=0)

