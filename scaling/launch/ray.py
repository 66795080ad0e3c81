"""The `ray` backend: a sweep's jobs as Ray tasks on a Ray cluster, or on a Ray started for the sweep.

Where: `launch.ray_address`, else `RAY_ADDRESS`, else a local Ray started with
`launch.max_parallel × (the largest job's CPUs)` CPUs and shut down when the sweep ends (its `raylet`,
`gcs_server` and workers are checked to be gone). A process that is already connected to Ray keeps its
connection and Ray is left running.

Each job is one Ray task (`num_cpus`, `num_gpus`, `memory` from `spec.resources_for(size)`) that runs
`JobRunner(spec, job)()`; a job with several ranks (`nodes × tasks_per_node > 1`) is a placement group
of one actor per rank with `RANK`/`WORLD_SIZE`/`LOCAL_RANK`/`MASTER_ADDR`/`MASTER_PORT` set, rank 0's
node as the rendezvous. A job that raises (other than a `ScalingError`, which the same input would raise
again) or whose worker dies is started again up to `launch.max_requeues` times; `JobRunner` resumes it
from its latest checkpoint and the same MLflow run. Each attempt's output goes to
`<workdir>/logs/ray-attempt-<n>.log`. A job that still fails ends FAILED in MLflow with the reason.

`cancel` stops jobs gracefully with SIGUSR2 (a stop signal of the trainer; Ray workers block SIGINT), sent
by a task pinned to each process's node: the job saves a checkpoint and ends KILLED. See docs/ray.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scaling.errors import LaunchError
from scaling.launch.base import Handle, JobStatus, Launcher, ProgressFn, log_dir
from scaling.launch.ray_session import address_of, import_ray, portable, ray_session, remote
from scaling.launch.ray_worker import Rank, run_job, send_signal
from scaling.plan import Job
from scaling.spec import Resources, Spec

log = logging.getLogger(__name__)


def ranks(res: Resources) -> int:
    """Processes of one job: nodes × tasks per node (default: one per GPU, or 1)."""
    return (res.nodes or 1) * (res.tasks_per_node or max(res.gpus or 0, 1))


def process_resources(res: Resources) -> dict[str, float]:
    """What each process of a job asks Ray for: CPU, GPU and memory (bytes); `gpus` and `mem_gb` are per node
    in the spec, shared by the node's `tasks_per_node` processes (default: one per GPU, or 1)."""
    per_node = res.tasks_per_node or max(res.gpus or 0, 1)
    return {"CPU": res.cpus or 1, "GPU": (res.gpus or 0) / per_node,
            "memory": int((res.mem_gb or 0) * 2**30 / per_node)}


def local_cpus(spec: Spec, jobs: Sequence[Job]) -> int:
    """CPUs of a local Ray for these jobs: `max_parallel` jobs of the largest CPU need at once."""
    need = max((j.resources.cpus or 1) * ranks(j.resources) for j in jobs) if jobs else 1
    return max(need, spec.launch.max_parallel * need)


# --- the driver side --------------------------------------------------------------------------------

@dataclass
class _Attempt:
    """A job's current attempt: one task, or a placement group of rank actors."""

    job: Job
    number: int
    refs: list = field(default_factory=list)
    "The results, rank 0's first (for a rank group: once its actors are placed)."
    group: Any = None
    actors: list = field(default_factory=list)
    setup: list = field(default_factory=list)
    "A rank group's placement: rank 0's (address, port), then each rank's node."

    @property
    def backend_id(self) -> str:
        return self.group.id.hex() if self.group is not None else self.refs[0].hex()


class RayLauncher(Launcher):
    """Runs jobs as Ray tasks (see the module docstring). `address` overrides the sweep's and RAY_ADDRESS."""

    name = "ray"

    def __init__(self, spec: Spec, address: str | None = None, num_cpus: int | None = None):
        super().__init__(spec)
        self.spec = portable(self.spec)
        self.address = address or address_of(spec)
        self.num_cpus = num_cpus
        self.max_retries = spec.launch.max_requeues
        self._session: contextlib.ExitStack | None = None
        self._attempts: dict[str, _Attempt] = {}
        self._cancelled: set[str] = set()
        self._results: dict[str, Any] = {}

    def connect(self, jobs: Sequence[Job]) -> str:
        """Join (or start) Ray for this launcher; `close()` ends it."""
        if self._session is None:
            stack = contextlib.ExitStack()
            how = stack.enter_context(ray_session(self.address, self.num_cpus or local_cpus(self.spec, jobs)))
            self._session, self.how = stack, how
            self._check_fits(jobs)
        return self.how

    def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            session.close()

    def _check_fits(self, jobs: Sequence[Job]) -> None:
        ray = import_ray()
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        for job in jobs:
            need = process_resources(job.resources)
            if not any(all(n.get(k, 0) >= v for k, v in need.items() if v) for n in nodes):
                have = "; ".join(f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU, {n.get('memory', 0) / 2**30:.1f} "
                                 "GiB" for n in nodes)
                message = (f"{job.run_id} needs {need['CPU']:g} CPU, {need['GPU']:g} GPU, "
                           f"{need['memory'] / 2**30:.1f} GiB per process; no Ray node has that ({have}): lower "
                           f"launch.resources.{job.size}")
                if self.how == "local":
                    raise LaunchError(message)
                log.warning("%s (an autoscaling cluster may add such a node)", message)

    def submit(self, jobs: Sequence[Job]) -> list[Handle]:
        done = self.finished(jobs)
        todo = [j for j in jobs if j.run_id not in done]
        if todo:
            self.connect(todo)
        started = {}
        for job in sorted(todo, key=lambda j: -j.total_flops):  # largest first: it runs beside the small ones
            attempt = self._start(job, 1)
            started[job.run_id] = Handle(job, attempt.backend_id, log_dir(job), native=attempt)
        for job in jobs:
            if job.run_id in done:
                log.info("%s is FINISHED: skipped", job.run_id)
        return [started.get(j.run_id) or Handle(j, "", log_dir(j), skipped=True) for j in jobs]

    def _start(self, job: Job, number: int) -> _Attempt:
        job = replace(job, workdir=str(Path(job.workdir).resolve()))  # workers may run in other folders
        world = ranks(job.resources)
        need = process_resources(job.resources)
        gpus = need["GPU"]
        opts: dict[str, Any] = {"num_cpus": need["CPU"], "num_gpus": gpus, "max_retries": 0, "name": job.run_id}
        if need["memory"]:
            opts["memory"] = need["memory"]
        attempt = _Attempt(job, number)
        if world == 1:
            attempt.refs = [remote(run_job).options(**opts).remote(self.spec, job, number)]
        else:
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            bundle = {"CPU": opts["num_cpus"], **({"GPU": gpus} if gpus else {}),
                      **({"memory": opts["memory"]} if "memory" in opts else {})}
            attempt.group = placement_group([bundle] * world, strategy="PACK", name=job.run_id)
            attempt.actors = [remote(Rank).options(
                num_cpus=opts["num_cpus"], num_gpus=gpus, max_restarts=0, name=f"{job.run_id}-attempt{number}-rank{i}",
                scheduling_strategy=PlacementGroupSchedulingStrategy(attempt.group, placement_group_bundle_index=i),
            ).remote() for i in range(world)]
            attempt.setup = [attempt.actors[0].where.remote(), *(a.node.remote() for a in attempt.actors)]
        self._attempts[job.run_id] = attempt
        log.info("%s: attempt %d started (%d process%s)", job.run_id, number, world, "es" if world > 1 else "")
        return attempt

    def _end(self, attempt: _Attempt) -> None:
        ray = import_ray()
        for actor in attempt.actors:
            ray.kill(actor)
        if attempt.group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(attempt.group)

    def wait(self, handles: Sequence[Handle], progress: ProgressFn | None = None) -> list:
        from scaling.train import JobResult

        results: dict[str, Any] = {}
        known = self.summaries() if any(h.skipped for h in handles) else {}
        for h in handles:
            if h.skipped:
                s = known.get(h.job.run_id)
                step = (s.step or h.job.steps) if s else h.job.steps
                results[h.job.run_id] = JobResult(h.job.run_id, "FINISHED", step, dict(s.metrics) if s else {},
                                                  "finished before")
        pending = {h.job.run_id: self._attempts[h.job.run_id] for h in handles if not h.skipped}
        ray = import_ray()
        last = 0.0
        try:
            while pending:
                refs = [ref for a in pending.values() for ref in a.refs or a.setup]
                ready, _ = ray.wait(refs, num_returns=1, timeout=2.0)
                for run_id, attempt in list(pending.items()):
                    if not any(r in ready for r in attempt.refs or attempt.setup):
                        continue
                    outcome = self._poll(attempt)
                    if outcome is None:  # still placing or running
                        continue
                    del pending[run_id]
                    if isinstance(outcome, BaseException) and run_id in self._cancelled:
                        outcome = self._killed(attempt)
                    if isinstance(outcome, BaseException):
                        if attempt.number <= self.max_retries:
                            log.warning("%s attempt %d failed (%s); starting attempt %d, which resumes from the "
                                        "latest checkpoint", run_id, attempt.number, _first_line(outcome),
                                        attempt.number + 1)
                            pending[run_id] = self._start(attempt.job, attempt.number + 1)
                            continue
                        outcome = self._failed(attempt, outcome)
                    results[run_id] = self._results[run_id] = outcome
                    log.info("%s %s at step %d", run_id, outcome.status, outcome.step)
                if progress and time.monotonic() - last > 5:
                    last = time.monotonic()
                    progress(self.status([h.job for h in handles]))
        except KeyboardInterrupt:
            log.warning("interrupted: stopping %d jobs (each saves a checkpoint; relaunching resumes)", len(pending))
            self.cancel([a.job for a in pending.values()])
            refs = [ref for a in pending.values() for ref in a.refs]
            ray.wait(refs, num_returns=len(refs), timeout=60)
            for attempt in pending.values():
                self._end(attempt)
            raise
        finally:
            self.close()
        return [results[h.job.run_id] for h in handles]

    def _poll(self, attempt: _Attempt) -> Any:
        """Start a rank group's ranks once its actors are placed; then `_collect`. None while neither is done."""
        ray = import_ray()
        if attempt.refs:
            return self._collect(attempt)
        _, rest = ray.wait(attempt.setup, num_returns=len(attempt.setup), timeout=0)
        if rest:
            return None
        try:
            (addr, port), *nodes = ray.get(attempt.setup)
        except Exception as e:  # noqa: BLE001 - an actor died while being placed
            self._end(attempt)
            return e
        world = len(attempt.actors)
        for rank, actor in enumerate(attempt.actors):
            env = {"RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": addr, "MASTER_PORT": str(port),
                   "LOCAL_RANK": str(nodes[:rank].count(nodes[rank]))}
            attempt.refs.append(actor.run.remote(self.spec, attempt.job, attempt.number, env))
        log.info("%s: %d ranks placed, rank 0 at %s:%d", attempt.job.run_id, world, addr, port)
        return None

    def _collect(self, attempt: _Attempt) -> Any:
        """The attempt's JobResult, its exception, or None while some rank still runs."""
        ray = import_ray()
        ready, rest = ray.wait(attempt.refs, num_returns=len(attempt.refs), timeout=0)
        outcomes = []
        for ref in ready:
            try:
                outcomes.append(ray.get(ref))
            except Exception as e:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, RayActorError...
                outcomes.append(e)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        failed = [o for o in outcomes if getattr(o, "status", None) == "FAILED"]
        if rest and not errors and not failed:
            return None
        self._end(attempt)  # a failed rank takes the others down with it
        if errors or failed:
            return (errors or failed)[0]
        return ray.get(attempt.refs[0])

    def _killed(self, attempt: _Attempt) -> Any:
        """The KILLED result of an attempt cancelled before it started (or killed while stopping)."""
        from scaling.train import JobResult

        s = self.summaries().get(attempt.job.run_id)
        reason = "cancelled"
        if s is not None and s.status == "RUNNING":
            self.tracker.client.set_tag(s.mlflow_run_id, "scaling.reason", reason)
            self.tracker.client.set_terminated(s.mlflow_run_id, status="KILLED")
        return JobResult(attempt.job.run_id, "KILLED", (s.step or 0) if s else 0, dict(s.metrics) if s else {}, reason)

    def _failed(self, attempt: _Attempt, error: BaseException) -> Any:
        """A FAILED result for an attempt that raised or died; its MLflow run ends FAILED with the reason."""
        from scaling.train import JobResult

        job = attempt.job
        path = log_dir(job) / f"ray-attempt-{attempt.number}.log"
        reason = f"{_first_line(error)} after {attempt.number} attempts (log: {path})"
        s = self.summaries().get(job.run_id)
        if s is not None and s.status == "RUNNING":  # the worker died before JobRunner could say so
            self.tracker.client.set_tag(s.mlflow_run_id, "scaling.reason", reason[:5000])
            self.tracker.client.set_terminated(s.mlflow_run_id, status="FAILED")
        log.error("%s FAILED: %s", job.run_id, reason)
        return JobResult(job.run_id, "FAILED", (s.step or 0) if s else 0, dict(s.metrics) if s else {}, reason)

    def status(self, jobs: Sequence[Job], summaries: dict | None = None) -> list[JobStatus]:
        """The tracker's view; a job started here that has no MLflow run yet is PENDING (or as it ended)."""
        out = []
        for s in super().status(jobs, summaries):
            if s.state == "UNKNOWN" and s.run_id in self._attempts:
                ended = self._results.get(s.run_id)
                s = replace(s, state=ended.status if ended else "PENDING", reason=ended.reason if ended else None,
                            backend_id=self._attempts[s.run_id].backend_id)
            out.append(s)
        return out

    def cancel(self, jobs: Sequence[Job]) -> None:
        """Stop these jobs gracefully: each of their processes gets SIGUSR2 (a stop signal of the trainer; Ray
        workers block SIGINT), saves a checkpoint and ends KILLED; a job not started yet is dropped. Jobs of
        another `scaling run` are reached through the cluster (a local Ray only from its own process)."""
        ray = import_ray()
        running = {s.run_id for s in self.status(jobs) if s.state in ("RUNNING", "PENDING")}
        if not self._attempts and running and not (self.address or ray.is_initialized()):
            raise LaunchError("these jobs run in the local Ray of the `scaling run` that started them: press Ctrl-C "
                              "there (its jobs save a checkpoint and end KILLED; relaunching resumes)")
        if not running and not self._attempts:
            return
        self.connect(jobs)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        signals = []
        for job in jobs:
            attempt = self._attempts.get(job.run_id)
            self._cancelled.add(job.run_id)
            number = attempt.number if attempt else _last_attempt(job)
            places = sorted(log_dir(job).glob(f"ray-attempt-{number}.where.json")) + sorted(
                log_dir(job).glob(f"ray-attempt-{number}-rank*.where.json"))
            if attempt is not None and not places:  # not started: drop it
                for ref in attempt.refs:
                    ray.cancel(ref, force=False)
                self._end(attempt)
                continue
            if attempt is None and job.run_id not in running:
                continue
            for place in places:
                where = json.loads(place.read_text())
                node = NodeAffinitySchedulingStrategy(where["node"], soft=False)
                signals.append(remote(send_signal).options(num_cpus=0, scheduling_strategy=node, max_retries=0)
                               .remote(where["pid"], signal.SIGUSR2, where.get("started")))
            log.info("%s: asked %d process(es) to stop", job.run_id, len(places))
        ray.wait(signals, num_returns=len(signals), timeout=60)
        if not self._attempts:
            self.close()


def _last_attempt(job: Job) -> int:
    numbers = [int(m.group(1)) for p in log_dir(job).glob("ray-attempt-*.where.json")
               if (m := re.match(r"ray-attempt-(\d+)", p.name))]
    return max(numbers, default=0)


def _first_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None)
    text = f"{type(cause).__name__}: {cause}" if cause is not None else f"{type(error).__name__}: {error}"
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0][:500] if lines else type(error).__name__
