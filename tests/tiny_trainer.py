"""Own trainers (`trainer: tests.tiny_trainer:train`) for the launcher tests: real torch training of a tiny
linear denoiser, real checkpoints through `ctx.save`, a few milliseconds per step (plus `SLOW_S`).

Each call appends `<start> <end> <pid>` to `<workdir>/attempts.txt`, so tests can count attempts and
check how many jobs ran at once, and writes `<pid> <step>` to `<workdir>/progress.txt` after every step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch


def tiny_model(ctx, width: int):
    """A 4 -> width -> 4 MLP seeded by the job and its SGD, restored from the checkpoint; and the step."""
    torch.manual_seed(ctx.job.seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = 0
    if ctx.resume_state is not None:
        model.load_state_dict(ctx.resume_state["model"])
        opt.load_state_dict(ctx.resume_state["opt"])
        step = int(ctx.resume_state["step"])
    return model, opt, step


def train(ctx):
    slow = float(os.environ.get("TINY_TRAINER_SLOW_S", "0"))
    started = time.time()
    model, opt, step = tiny_model(ctx, {"S": 4, "M": 8, "L": 16}.get(ctx.job.size, 4))
    gen = torch.Generator().manual_seed(1000 + step)
    every = ctx.spec.train.ckpt_every
    try:
        while step < ctx.job.steps and not ctx.should_stop():
            x = torch.randn(ctx.job.batch_size, 4, generator=gen)
            loss = ((model(x + 0.1 * torch.randn(x.shape, generator=gen)) - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            ctx.log(step, {"train/loss": loss.item(), "eval/iw/laplace": loss.item() / 2,
                           "progress/samples": step * ctx.job.batch_size,
                           "progress/flops": step * ctx.job.flops_per_step})
            if step % every == 0 or step == ctx.job.steps:
                ctx.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step})
            (Path(ctx.job.workdir) / "progress.txt").write_text(f"{os.getpid()} {step}\n")
            time.sleep(slow)
        if ctx.should_stop() and step % every and step < ctx.job.steps:  # stopped: save, like the built-in trainer
            ctx.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step})
    finally:
        with open(Path(ctx.job.workdir) / "attempts.txt", "a") as fh:
            fh.write(f"{started} {time.time()} {os.getpid()}\n")
    return {"eval/iw/laplace": loss.item() / 2}


def train_fail_m(ctx):
    """Size M fails after two steps; the others train."""
    if ctx.job.size == "M":
        ctx.log(1, {"train/loss": 1.0})
        ctx.log(2, {"train/loss": 0.9})
        raise RuntimeError("size M diverged on purpose")
    return train(ctx)
