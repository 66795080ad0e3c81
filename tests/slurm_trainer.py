"""A small own trainer for the SLURM tests (`trainer: tests.slurm_trainer:count`).

It goes through the real `JobRunner` (stop signals chained to submitit's handler, checkpoints, MLflow
run resumed by run id) but trains nothing: each step sleeps `SCALING_TEST_STEP_S` seconds (default 0.05)
and logs `train/loss = 1/step`. Every attempt appends `<restart count> <first step>` to `attempts.txt`
in the job's workdir (rank 0), so tests can see requeues, and each rank writes its rank variables to
`rank<RANK>.json`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def count(ctx) -> dict:
    step_s = float(os.environ.get(f"SCALING_TEST_STEP_S_{ctx.job.size}", os.environ.get("SCALING_TEST_STEP_S", "0.05")))
    step = int(ctx.resume_state["step"]) if ctx.resume_state else 0
    rank = os.environ.get("RANK", "0")
    if rank == "0":
        with open(Path(ctx.job.workdir) / "attempts.txt", "a") as fh:
            fh.write(f"{os.environ.get('SLURM_RESTART_COUNT', '0')} {step}\n")
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_JOB_ID")
    env = {k: os.environ.get(k) for k in keys}
    (Path(ctx.job.workdir) / f"rank{rank}.json").write_text(json.dumps(env | {"distributed": ctx.dist.distributed}))
    every = ctx.spec.train.ckpt_every
    while step < ctx.job.steps:
        if ctx.should_stop():
            ctx.save({"step": step})
            return {}
        time.sleep(step_s)
        step += 1
        ctx.log(step, {"train/loss": 1.0 / step})
        if step % every == 0:
            ctx.save({"step": step})
    ctx.save({"step": step})
    return {"world_size": float(os.environ.get("WORLD_SIZE", "0"))}
