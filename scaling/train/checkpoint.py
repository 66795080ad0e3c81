"""Atomic, verified checkpoints: `<dir>/step-<n>.pt` plus a sidecar `step-<n>.json`.

A checkpoint is written to a temporary file while its SHA-256 is computed, fsynced and renamed into place
(`os.replace`); the sidecar (`{"step", "bytes", "sha256", "finished"}`) is written the same way after it.
A checkpoint counts only when its sidecar exists and the file matches it, so a crash mid-write, a truncated
copy or flipped bytes are detected when loading; the bad file is renamed `*.corrupt` (kept, not deleted)
and the previous checkpoint is used. The newest `keep` complete checkpoints are kept (2 by default).
Temporary files of writes that never finished (`.step-<n>.pt.tmp-<pid>`, left by a process killed
mid-write) are removed when the job resumes or saves again.

Contents are loaded with `torch.load(weights_only=True)`: tensors, numbers, strings, None and
lists/tuples/dicts of them. `rng_state()` turns every random generator's state into that form.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d+)\.pt$")
_TEMP = re.compile(r"^\.step-(\d+)\.(?:pt|json)\.tmp-(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint on disk, as its sidecar describes it."""

    step: int
    path: Path
    sha256: str
    bytes: int
    finished: bool


class _HashingWriter(io.RawIOBase):
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, f: Any):
        super().__init__()
        self._f = f
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.sha256.update(b)
        self.bytes += len(b)
        return self._f.write(b)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and `os.replace`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointStore:
    """The checkpoints of one run, in one folder."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.dir = Path(directory)
        self.keep = keep

    def path(self, step: int) -> Path:
        return self.dir / f"step-{step}.pt"

    def _sidecar(self, path: Path) -> Path:
        return path.with_suffix(".json")

    def save(self, state: dict, step: int, finished: bool = False) -> CheckpointInfo:
        """Write `state` as the checkpoint of `step` atomically, then drop all but the newest `keep`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(step)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                writer = _HashingWriter(f)
                torch.save(state, writer)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        info = CheckpointInfo(step, path, writer.sha256.hexdigest(), writer.bytes, finished)
        meta = {"step": step, "bytes": info.bytes, "sha256": info.sha256, "finished": finished}
        atomic_write_bytes(self._sidecar(path), json.dumps(meta).encode())
        self.prune()
        log.debug("checkpoint %s (%d bytes)", path, info.bytes)
        return info

    def _listed(self) -> list[CheckpointInfo]:
        """Checkpoints that have a readable sidecar, newest first (the files themselves are not checked)."""
        if not self.dir.is_dir():
            return []
        out = []
        for path in self.dir.iterdir():
            match = _NAME.match(path.name)
            if not match:
                continue
            try:
                meta = json.loads(self._sidecar(path).read_text())
                out.append(CheckpointInfo(int(match.group(1)), path, str(meta["sha256"]), int(meta["bytes"]),
                                          bool(meta.get("finished", False))))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # no sidecar: the write never finished
        return sorted(out, key=lambda c: c.step, reverse=True)

    def steps(self) -> list[int]:
        """Steps of the checkpoints with a sidecar, newest first."""
        return [c.step for c in self._listed()]

    def prune(self) -> None:
        """Delete all but the newest `keep` checkpoints, and files of writes that never finished."""
        listed = self._listed()
        for info in listed[self.keep:]:
            info.path.unlink(missing_ok=True)
            self._sidecar(info.path).unlink(missing_ok=True)
        newest = listed[0].step if listed else -1
        for path in self.dir.iterdir():
            match = _NAME.match(path.name)
            if match and int(match.group(1)) < newest and not self._sidecar(path).exists():
                path.unlink(missing_ok=True)  # an older write that crashed before its sidecar
        self._remove_partial_writes(newest)

    def _remove_partial_writes(self, newest: int) -> None:
        """Delete the temporary files of writes that never finished: those of a process that is gone (killed
        mid-write) or of a step not newer than the newest complete checkpoint. This process's own are kept."""
        if not self.dir.is_dir():
            return
        for path in self.dir.iterdir():
            match = _TEMP.match(path.name)
            if not match:
                continue
            step, pid = int(match.group(1)), int(match.group(2))
            if pid != os.getpid() and (step <= newest or not _pid_alive(pid)):
                log.info("removing %s: a checkpoint write of step %d that never finished (process %d)", path.name,
                         step, pid)
                path.unlink(missing_ok=True)

    def _read(self, info: CheckpointInfo) -> dict:
        data = info.path.read_bytes()
        if len(data) != info.bytes:
            raise ValueError(f"{len(data)} bytes, the sidecar says {info.bytes} (truncated?)")
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.sha256:
            raise ValueError(f"SHA-256 {digest[:12]}… does not match the sidecar's {info.sha256[:12]}…")
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"expected a dict, found {type(state).__name__}")
        return state

    def load(self, step: int) -> dict:
        """The verified state of the checkpoint of `step` (ValueError if it is missing or does not verify)."""
        for info in self._listed():
            if info.step == step:
                return self._read(info)
        raise ValueError(f"no complete checkpoint of step {step} in {self.dir}")

    def load_latest(self) -> tuple[CheckpointInfo, dict] | None:
        """The newest checkpoint that verifies, with its state; corrupt ones are renamed `*.corrupt`."""
        listed = self._listed()
        self._remove_partial_writes(listed[0].step if listed else -1)
        for info in listed:
            try:
                return info, self._read(info)
            except Exception as e:  # noqa: BLE001 - any unreadable file is treated the same way
                bad = info.path.with_name(info.path.name + ".corrupt")
                log.warning("checkpoint %s is corrupt (%s); kept as %s, using the previous one", info.path, e, bad.name)
                os.replace(info.path, bad)
                self._sidecar(info.path).unlink(missing_ok=True)
        return None


# --- random number generators -----------------------------------------------------------------------

def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    """Every RNG's state (torch CPU and CUDA, numpy, python, and the given generators) as loadable data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def set_rng_state(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what `rng_state` captured (CUDA states only if this process has as many devices)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, g in (generators or {}).items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])
