"""Own trainers (`trainer: tests.ray_trainers:<name>`) for the Ray tests: cheap, deterministic, checkpointed.

`sgd` is a real optimisation whose best learning rate is known from a grid: SGD with the job's lr on a
fixed noisy least-squares problem (too small an lr converges slowly, too large a one is noisy or diverges).
`flaky` fails once (an exception), `crashy` kills its own process once, `broken` always fails; all three
save a checkpoint before failing, so that the retry must resume from it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from scaling.train import TrainContext


def sgd_loss(lr: float, steps: int, every: int, seed: int = 0) -> list[tuple[int, float]]:
    """(step, held-out log10 MSE) every `every` steps of SGD with `lr` (batch 8) on a fixed 20-d problem."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(0, 1, 20)  # features of different scales: an ill-conditioned problem
    w_true = rng.normal(size=20)
    x_test = rng.normal(size=(256, 20)) * scales
    y_test = x_test @ w_true
    w = np.zeros(20)
    out = []
    for step in range(1, steps + 1):
        x = rng.normal(size=(8, 20)) * scales
        y = x @ w_true + rng.normal(scale=2.0, size=8)
        w = w - lr * x.T @ (x @ w - y) / 8
        if step % every == 0 or step == steps:
            mse = float(np.mean((x_test @ w - y_test) ** 2))
            out.append((step, math.log10(min(mse, 1e12) + 1e-12)))
    return out


def sgd(ctx: TrainContext, fail_once: bool = False) -> None:
    """Log `sgd_loss` as the primary L_iw at each evaluation step, checkpointing each time."""
    metric = f"eval/iw/{ctx.spec.evaluation.primary}"
    start = ctx.resume_state["step"] if ctx.resume_state else 0
    for step, value in sgd_loss(ctx.job.lr, ctx.job.steps, ctx.spec.train.eval_every, ctx.job.seed):
        if step <= start:
            continue
        ctx.log(step, {metric: value, "train/lr": ctx.job.lr})
        ctx.save({"step": step})
        if fail_once and _claim(Path(ctx.spec.launch.workdir) / "failed-once"):
            raise RuntimeError(f"{ctx.run_id}: failing once on purpose at step {step}")


def sgd_fail_once(ctx: TrainContext) -> None:
    """`sgd`, but the first run of the sweep's workdir to get here raises after its first evaluation."""
    sgd(ctx, fail_once=True)


def _claim(path: Path) -> bool:
    """True for the one caller that creates `path`."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _steps(ctx: TrainContext, fail_at: int | None, failure) -> None:
    start = ctx.resume_state["step"] if ctx.resume_state else 0
    for step in range(start + 1, ctx.job.steps + 1):
        ctx.log(step, {"train/loss": 1.0 / step, "train/lr": ctx.job.lr})
        if step % ctx.spec.train.ckpt_every == 0:
            ctx.save({"step": step})
        if fail_at is not None and step == fail_at and _claim(ctx.checkpoint_dir.parent / "failed-once"):
            failure()
    ctx.log(ctx.job.steps, {f"eval/iw/{ctx.spec.evaluation.primary}": 1.0 / ctx.job.params})


def steady(ctx: TrainContext) -> None:
    """Logs a decreasing loss every step and a final L_iw; checkpoints every `ckpt_every`."""
    _steps(ctx, None, None)


def flaky(ctx: TrainContext) -> None:
    """Raises once, just after its checkpoint at `ckpt_every`."""
    _steps(ctx, ctx.spec.train.ckpt_every, lambda: (_ for _ in ()).throw(RuntimeError("flaky: failing once")))


def crashy(ctx: TrainContext) -> None:
    """Kills its own process once (a worker crash, not an exception), just after its first checkpoint."""
    _steps(ctx, ctx.spec.train.ckpt_every, lambda: os._exit(3))


def broken(ctx: TrainContext) -> None:
    """Always raises after its first checkpoint."""
    start = ctx.resume_state["step"] if ctx.resume_state else 0
    ctx.save({"step": start + 1})
    raise RuntimeError(f"broken: fails at step {start + 1}")


def ranked(ctx: TrainContext) -> None:
    """`steady` on every rank of a data-parallel job, after logging the all-reduced sums of the ranks and of the
    local ranks (+1 each) as `dist/rank_sum`, `dist/local_rank_sum`, and the world size."""
    import torch
    import torch.distributed as dist

    sums = torch.tensor([ctx.dist.rank + 1.0, ctx.dist.local_rank + 1.0])
    if ctx.dist.distributed:
        dist.all_reduce(sums)
    ctx.log(0, {"dist/world_size": ctx.dist.world_size, "dist/rank_sum": sums[0].item(),
                "dist/local_rank_sum": sums[1].item()})
    steady(ctx)


def by_size(ctx: TrainContext) -> None:
    """S: ranked, M: flaky, L: crashy, anything else: broken."""
    {"S": ranked, "M": flaky, "L": crashy}.get(ctx.job.size, broken)(ctx)


def slow(ctx: TrainContext) -> None:
    """`steady` at 0.2 s a step on its first attempt (time for a test to stop it) and at full speed once
    resumed, stopping cleanly (with a checkpoint) when asked to."""
    import time

    start = ctx.resume_state["step"] if ctx.resume_state else 0
    for step in range(start + 1, ctx.job.steps + 1):
        if not ctx.resume_state:
            time.sleep(0.2)
        ctx.log(step, {"train/loss": 1.0 / step})
        if step % ctx.spec.train.ckpt_every == 0 or ctx.should_stop():
            ctx.save({"step": step})
        if ctx.should_stop():
            return
