"""What the `ray` backend runs on Ray workers: one attempt at a job (`run_job`), the rank actors of a
multi-process job (`Rank`), and `send_signal`, which `RayLauncher.cancel` runs on a job's node.

Each attempt writes its output and the `scaling` log to `<workdir>/logs/ray-attempt-<n>[-rank<r>].log`, and
while it runs, where it runs (node id, pid, its start time, host) to the `.where.json` next to it, which is
how `cancel` reaches it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.launch.base import log_dir
from scaling.plan import Job
from scaling.spec import Spec

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _attempt_log(path: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (file descriptors too) and `scaling` logs to `path` meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("scaling")
    level, propagate = logger.level, logger.propagate
    with open(path, "ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
            handler.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_job(spec: Spec, job: Job, attempt: int, env: dict[str, str] | None = None) -> Any:
    """One attempt at a job on a Ray worker: `JobRunner(spec, job)()` with this rank's environment.

    A `ScalingError` (bad input, NaN loss) becomes a FAILED result, which is not retried; anything else
    propagates and the launcher tries again."""
    import ray

    from scaling.train import JobResult, JobRunner

    env = env or {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    name = f"ray-attempt-{attempt}" + (f"-rank{env['RANK']}" if env.get("WORLD_SIZE", "1") != "1" else "")
    path = log_dir(job) / f"{name}.log"
    where = path.with_suffix(".where.json")
    with _environ(env), _attempt_log(path):
        here = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "host": socket.gethostname(),
                "started": started(os.getpid())}
        _write_json(where, here)  # how `cancel` finds this process while it runs
        log.info("%s: attempt %d on %s (pid %d)", job.run_id, attempt, here["host"], here["pid"])
        try:
            return JobRunner(spec, job)()
        except ScalingError as e:
            return JobResult(job.run_id, "FAILED", 0, {}, f"{e} (log: {path})")
        finally:
            where.unlink(missing_ok=True)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), to tell it from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def send_signal(pid: int, signum: int, start: str | None = None) -> bool:
    """Send `signum` to process `pid` of this node if it is still the one that started at `start` (the body
    of `cancel`'s node-pinned task). False if it is gone."""
    if start is not None and started(pid) != start:
        return False
    try:
        os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False


class Rank:
    """One rank of a multi-process job (a Ray actor in the job's placement group)."""

    def where(self) -> tuple[str, int]:
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, spec: Spec, job: Job, attempt: int, env: dict[str, str]) -> Any:
        return run_job(spec, job, attempt, env)
