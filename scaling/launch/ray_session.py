"""Joining Ray for a sweep or a tune: an existing cluster, or a local Ray started and stopped here.

`ray_session(address, num_cpus)` connects to `address` (disconnecting after), or starts a local Ray with
`num_cpus` CPUs and shuts it down after, checking that its `raylet`, `gcs_server` and other processes are
gone (and killing any that are not). A process already connected to Ray keeps its connection.

With an explicit address Ray 2.x sends its authentication token only if `RAY_AUTH_MODE=token` is set
before Ray is imported; the error for a refused token says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling.errors import LaunchError
from scaling.spec import Spec

log = logging.getLogger(__name__)

_REMOTES: dict[str, Any] = {}


def remote(obj: Any) -> Any:
    """`ray.remote(obj)`, made once per process."""
    if obj.__qualname__ not in _REMOTES:
        _REMOTES[obj.__qualname__] = import_ray().remote(obj)
    return _REMOTES[obj.__qualname__]


def import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as e:
        raise LaunchError("the ray backend and `scaling tune` need Ray: pip install 'scaling[ray]'") from e
    return ray


def address_of(spec: Spec) -> str | None:
    """The Ray cluster of a sweep: `launch.ray_address`, else `RAY_ADDRESS`, else None (start a local Ray)."""
    return spec.launch.ray_address or os.environ.get("RAY_ADDRESS") or None


def portable(spec: Spec) -> Spec:
    """The spec with its paths absolute (tracking store, workdir, data), as this process sees them: Ray runs
    jobs and trials in other processes and folders (Tune changes into each trial's folder)."""
    from scaling.launch.base import resolved

    spec = resolved(spec)
    launch = dataclasses.replace(spec.launch, workdir=str(Path(spec.launch.workdir).expanduser().resolve()))
    data = spec.data
    if data.path:
        data = dataclasses.replace(data, path=str(Path(data.path).expanduser().resolve()))
    return dataclasses.replace(spec, launch=launch, data=data)


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, name) of every descendant of process `pid` (Linux /proc; [] where there is none)."""
    parents: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if rest[0] == "Z":  # a zombie has exited already
            continue
        names[int(entry.name)] = name
        parents.setdefault(int(rest[1]), []).append(int(entry.name))
    out, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        out.append((child, names[child]))
        todo.extend(parents.get(child, []))
    return out


def _stop_leftovers(pids: list[tuple[int, str]], timeout: float = 15.0) -> list[tuple[int, str]]:
    """Wait for the processes `pids` to exit; kill those left after `timeout` s. Returns the killed ones."""
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        current = set(children(os.getpid()))
        alive = [p for p in alive if p in current]
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[str]:
    """Connect this process to Ray for the duration of the block; yield how: existing, cluster or local.

    existing: already connected (left as it is); cluster: `address` (disconnected after); local: a Ray
    started here with `num_cpus` CPUs, shut down after, with no Ray process left behind."""
    ray = import_ray()
    if ray.is_initialized():
        yield "existing"
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        try:
            ray.init(address=address, **quiet)
        except Exception as e:  # noqa: BLE001 - ray raises ConnectionError, AuthenticationError, ValueError...
            auth = "token" in str(e).lower() or "authenticat" in str(e).lower()
            hint = ("the cluster wants a token: export RAY_AUTH_MODE=token before starting, with the cluster's "
                    "token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN" if auth else
                    "check launch.ray_address / RAY_ADDRESS (host:port of the head's GCS, or ray://host:10001)")
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LaunchError(f"cannot connect to the Ray cluster at {address}: {first}; {hint}") from e
        how = "cluster"
    else:
        before = set(children(os.getpid()))
        ray.init(address="local", num_cpus=num_cpus, **quiet)
        started = [p for p in children(os.getpid()) if p not in before]
        how = "local"
        log.info("started a local Ray with %s CPUs (%d processes)", num_cpus, len(started))
    try:
        yield how
    finally:
        ray.shutdown()
        if how == "local":
            killed = _stop_leftovers(started)
            if killed:
                names = ", ".join(f"{n}[{p}]" for p, n in killed)
                log.warning("Ray left %s running after shutdown; killed them", names)
