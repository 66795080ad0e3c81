"""Rank, world size and the rendezvous address of a job, from one place; process-group set-up.

`dist_env()` reads torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`)
when they are set, else SLURM's (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, the first host of
`SLURM_JOB_NODELIST`, a port derived from `SLURM_JOB_ID`), else a single process. The SLURM launcher sets
`MASTER_ADDR`/`MASTER_PORT` from submitit's `JobEnvironment`, which then take precedence.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from scaling.errors import TrainError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a (possibly) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[03-05,9],cpu1` -> `gpu03`."""
    head = re.match(r"([^,\[]+)(\[([^\]]*)\])?", nodelist.strip())
    if not head:
        raise TrainError(f"cannot read SLURM_JOB_NODELIST {nodelist!r}; set MASTER_ADDR to the first node's host name")
    prefix, _, ranges = head.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise TrainError(f"environment variable {key}={env[key]!r} is not an integer") from None


def dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """This process's rank, world size, local rank and rendezvous address (see the module docstring)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        if "MASTER_ADDR" in env:
            addr = env["MASTER_ADDR"]
        elif "SLURM_JOB_NODELIST" in env:
            addr = first_host(env["SLURM_JOB_NODELIST"])
        else:
            addr = "127.0.0.1"
        if "MASTER_PORT" in env:
            port = _int(env, "MASTER_PORT")
        else:  # the same on every task of the job, different between jobs sharing a node
            port = 20000 + (_int(env, "SLURM_JOB_ID") % 20000 if "SLURM_JOB_ID" in env else 0)
    else:
        return DistEnv()
    if world < 1 or not 0 <= rank < world:
        raise TrainError(f"rank {rank} is not within world size {world}; check the launcher's environment")
    return DistEnv(rank, world, local, addr, port)


def device_for(env: DistEnv) -> torch.device:
    """This rank's device: its local GPU if there is one, else the CPU."""
    if torch.cuda.is_available():
        index = env.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_process_group(env: DistEnv, device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the job's process group (NCCL on GPU, gloo on CPU); nothing to do for one process."""
    if not env.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    log.info("rank %d/%d joining %s process group at %s:%d", env.rank, env.world_size, backend,
             env.master_addr, env.master_port)
    try:
        dist.init_process_group(backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                                rank=env.rank, world_size=env.world_size, timeout=timedelta(seconds=timeout_s))
    except Exception as e:  # noqa: BLE001 - any rendezvous failure gets the same advice
        raise TrainError(f"rank {env.rank} could not join the process group at {env.master_addr}:{env.master_port}: "
                         f"{e}; check MASTER_ADDR/MASTER_PORT and that every rank was started") from e


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (identity for one process)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: object, env: DistEnv) -> list[object]:
    """Every rank's `obj`, in rank order (a list of one for one process)."""
    if not env.distributed:
        return [obj]
    out: list[object] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, env: DistEnv) -> object:
    """Rank 0's `obj` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
