"""`JobRunner(spec, job)`: the picklable callable a launcher runs for one job.

`runner()` returns at once if the job already finished (`<workdir>/result.json`); otherwise it joins the
job's process group, installs the stop-signal handlers, opens (or resumes) the job's MLflow run on rank 0,
and runs the built-in trainer (`scaling.train.loop`) or the sweep's own `trainer: module:function` with a
`TrainContext`. It returns a `JobResult`: FINISHED, or KILLED after a stop signal (a checkpoint is saved
first; relaunching resumes). A NaN loss or any other failure marks the MLflow run FAILED with the reason
and raises (`TrainError` for the trainer's own checks).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from scaling.errors import ScalingError, TrainError
from scaling.plan import Job
from scaling.spec import SizeSpec, Spec
from scaling.train.checkpoint import CheckpointStore, atomic_write_bytes
from scaling.train.dist import DistEnv, destroy_process_group, device_for, dist_env, init_process_group
from scaling.train.signals import StopSignals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    """What one attempt at a job ended with."""

    run_id: str
    status: str
    "FINISHED, or KILLED (stopped by a signal after saving a checkpoint; relaunching resumes)."
    step: int
    "Optimizer steps done."
    metrics: Mapping[str, float] = field(default_factory=dict)
    "The last value of each metric (eval/iw/*, train/loss, ...) and this attempt's perf/* timings."
    reason: str | None = None
    "Why the job stopped early, if it did."

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"metrics": dict(self.metrics)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> JobResult:
        return cls(**json.loads(text))


class MemoryRunLog:
    """A run log that keeps metrics in memory (`JobRunner(..., track=False)`, and ranks other than 0)."""

    def __init__(self) -> None:
        self.history: list[tuple[int, dict[str, float]]] = []
        self.artifacts: dict[str, Any] = {}
        self.tags: dict[str, str] = {}
        self.status: str | None = None
        self.reason: str | None = None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.history.append((int(step), dict(metrics)))

    def log_json_artifact(self, name: str, obj: Any) -> None:
        self.artifacts[name] = obj

    def set_tag(self, key: str, value: Any) -> None:
        self.tags[key] = str(value)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def finish(self, status: str = "FINISHED", reason: str | None = None, **_: Any) -> None:
        self.status, self.reason = status, reason


class TrainContext:
    """What a user's own trainer (`trainer: module:function`) receives; see docs/own-trainer.md."""

    def __init__(self, spec: Spec, job: Job, dist: DistEnv, device: torch.device, runlog: Any,
                 stop: StopSignals, store: CheckpointStore, resume: tuple[int, dict] | None):
        self.spec = spec
        self.job = job
        self.size: SizeSpec = spec.model.sizes[job.size]
        self.run_id = job.run_id
        self.checkpoint_dir = store.dir
        self.resume_state: dict | None = resume[1] if resume else None
        "The state passed to the last `save`, or None on a fresh start."
        self.dist = dist
        self.device = device
        self.step = resume[0] if resume else 0
        "The step of the last `log` or `save` (the resumed step at the start)."
        self.metrics: dict[str, float] = {}
        self._runlog, self._stop, self._store = runlog, stop, store

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log metrics at `step` (rank 0 only; other ranks' calls are ignored). Values must be finite numbers."""
        clean = {}
        for key, value in metrics.items():
            value = float(value)
            if not math.isfinite(value):
                raise TrainError(f"size {self.job.size}: metric {key} is {value} at step {step}")
            clean[key] = value
        self.step = int(step)
        self.metrics.update(clean)
        if self.dist.is_main:
            self._runlog.log(int(step), clean)

    def save(self, state: Mapping[str, Any], step: int | None = None) -> None:
        """Checkpoint `state` atomically as step `step` (default `state["step"]`); rank 0 writes, others skip.

        The state may hold tensors, numbers, strings, None and lists/tuples/dicts of them; the last 2 are kept."""
        if step is None:
            if "step" not in state:
                raise TrainError("ctx.save(state) needs the step: set state['step'] or call ctx.save(state, step)")
            step = int(state["step"])
        self.step = int(step)
        if self.dist.is_main:
            self._store.save(dict(state), int(step))

    def set_params(self, count: int) -> None:
        """Record your model's parameter count (rank 0; call once, e.g. after building the model).

        It becomes the run's tag `scaling.params`, which `scaling export` (and so `scaling run`'s fit and
        report) uses for the `params` column instead of the planner's count of the built-in DiT."""
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise TrainError(f"ctx.set_params needs a positive whole number of parameters, got {count!r} "
                             "(e.g. sum(p.numel() for p in model.parameters()))")
        if self.dist.is_main:
            self._runlog.set_tag("scaling.params", count)

    def should_stop(self) -> bool:
        """True once a stop signal arrived: save, then return from the trainer (a relaunch resumes)."""
        return self._stop.requested


class JobRunner:
    """One job of a sweep as a picklable callable (builds nothing until called).

    `track=False` keeps metrics in memory (`runner.runlog.history`) instead of MLflow. `relay=PATH` writes
    them to a relay file that the launcher sends to MLflow (`scaling.track.relay`; the local backend)."""

    def __init__(self, spec: Spec, job: Job, track: bool = True, relay: str | None = None):
        self.spec = spec
        self.job = job
        self.track = track
        self.relay = relay
        self.runlog: Any = None

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "job": self.job, "track": self.track, "relay": self.relay}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"], state["job"], state["track"], state.get("relay"))

    def __repr__(self) -> str:
        return f"JobRunner({self.job.run_id})"

    def checkpoint(self, *args: Any, **kwargs: Any) -> JobRunner:
        """What a requeue runs: a fresh copy of this runner, which resumes from the checkpoint just saved.

        submitit calls this from its signal handler; the SLURM launcher's wrapper turns the returned runner
        into submitit's `DelayedSubmission` (this package never imports submitit)."""
        return JobRunner(self.spec, self.job, self.track, self.relay)

    @property
    def workdir(self) -> Path:
        return Path(self.job.workdir)

    @property
    def result_path(self) -> Path:
        return self.workdir / "result.json"

    def _open_runlog(self, env: DistEnv) -> Any:
        if not (self.track and env.is_main):
            return MemoryRunLog()
        if self.relay:  # the launcher opened the run and sends what this job writes
            from scaling.track.relay import RelayWriter

            log.info("%s logs through the launcher (%s)", self.job.run_id, self.relay)
            return RelayWriter(self.relay)
        from scaling.track import Tracker, job_params, job_tags

        tracker = Tracker(self.spec.tracking.uri, self.spec.experiment)
        return tracker.open_run(self.job.run_id, tags=job_tags(self.spec, self.job),
                                params=job_params(self.spec, self.job))

    def __call__(self) -> JobResult:
        if self.result_path.exists():
            try:
                done = JobResult.from_json(self.result_path.read_text())
                log.info("%s already finished at step %d", self.job.run_id, done.step)
                return done
            except (OSError, ValueError, TypeError) as e:
                log.warning("%s unreadable (%s): running the job again from its checkpoint", self.result_path, e)
        env = dist_env()
        torch.set_num_threads(self.spec.train.threads or self.job.resources.cpus or 1)
        device = device_for(env)
        init_process_group(env, device)
        try:
            with StopSignals() as stop:
                result = self._run(env, device, stop)
                if result.status == "KILLED":
                    stop.chain()  # submitit's handler requeues and exits here; otherwise return KILLED
                return result
        finally:
            destroy_process_group()

    def _run(self, env: DistEnv, device: torch.device, stop: StopSignals) -> JobResult:
        started = time.time()
        self.runlog = self._open_runlog(env)
        try:
            if self.spec.trainer:
                result = self._run_user(env, device, stop)
            else:
                from scaling.train.loop import Trainer

                result = Trainer(self.spec, self.job, env, device, self.runlog, stop).run()
        except BaseException as e:
            reason = str(e) if isinstance(e, ScalingError) else f"{type(e).__name__}: {e}"
            log.error("%s failed: %s", self.job.run_id, reason)
            self.runlog.finish("FAILED", reason)
            raise
        if result.status == "KILLED":
            self.runlog.finish("KILLED", result.reason)
        else:  # the run is marked first: a crash in between leaves no result.json, and a relaunch re-marks it
            self.runlog.finish("FINISHED")
            if env.is_main:
                atomic_write_bytes(self.result_path, result.to_json().encode())
        log.info("%s %s at step %d after %.1f s", self.job.run_id, result.status, result.step, time.time() - started)
        return result

    def _run_user(self, env: DistEnv, device: torch.device, stop: StopSignals) -> JobResult:
        fn = load_trainer(self.spec.trainer or "")
        store = CheckpointStore(self.workdir / "checkpoints")
        resume = store.load_latest()
        if resume:
            log.info("%s resumes from %s", self.job.run_id, resume[0].path)
        ctx = TrainContext(self.spec, self.job, env, device, self.runlog, stop, store,
                           (resume[0].step, resume[1]) if resume else None)
        returned = fn(ctx)
        metrics = dict(ctx.metrics)
        if isinstance(returned, Mapping):
            metrics.update({k: float(v) for k, v in returned.items()})
        self.runlog.flush()
        if stop.requested:
            return JobResult(self.job.run_id, "KILLED", ctx.step, metrics, f"stopped by {stop.name} at step {ctx.step}")
        return JobResult(self.job.run_id, "FINISHED", ctx.step, metrics)


def load_trainer(target: str) -> Callable[[TrainContext], Any]:
    """Import `module:function`."""
    module_name, _, name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TrainError(f"cannot import trainer module {module_name!r} ({e}); put it on PYTHONPATH") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise TrainError(f"module {module_name!r} has no function {name!r} (trainer: {target})")
    return fn
