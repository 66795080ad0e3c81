"""Jobs for the fault drills (tests/test_drills.py).

`held` is an own trainer (`trainer: tests.drill_jobs:held`): real torch training of a small MLP denoiser
through `TrainContext` (metrics, checkpoints, resume). While `<job workdir>/hold` exists and holds a step
number the trainer has reached, it waits there (checking for a stop signal), so a test can interrupt a sweep
with jobs in a known state. Each attempt appends `<pid> <first step>` to `<workdir>/attempts.txt` and every
step writes `<step>` to `<workdir>/progress.txt`.

`python -m tests.drill_jobs SWEEP SIZE STEP` runs one job of a sweep with the built-in trainer exactly as a
launcher does (`JobRunner(spec, job)()`, real MLflow), and SIGKILLs itself while writing the checkpoint of
STEP, once part of the checkpoint's temporary file is on disk.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch

from tests.tiny_trainer import tiny_model


def held(ctx):
    width = 4 * (1 + sorted(ctx.spec.model.sizes, key=lambda s: ctx.spec.model.sizes[s].width).index(ctx.job.size))
    model, opt, step = tiny_model(ctx, width)
    workdir = Path(ctx.job.workdir)
    with open(workdir / "attempts.txt", "a") as fh:
        fh.write(f"{os.getpid()} {step}\n")
    gen = torch.Generator().manual_seed(1000 + step)
    held_at = workdir / "hold"
    every, loss = ctx.spec.train.ckpt_every, None

    def state():
        return {"model": model.state_dict(), "opt": opt.state_dict(), "step": step}

    while step < ctx.job.steps and not ctx.should_stop():
        x = torch.randn(ctx.job.batch_size, 4, generator=gen)
        loss = ((model(x + 0.3 * torch.randn(x.shape, generator=gen)) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        ctx.log(step, {"train/loss": loss.item(), "eval/iw/laplace": 1.0 / width + loss.item() / 100,
                       "progress/samples": step * ctx.job.batch_size,
                       "progress/flops": step * ctx.job.flops_per_step})
        if step % every == 0 or step == ctx.job.steps:
            ctx.save(state())
        (workdir / "progress.txt").write_text(f"{step}\n")
        while _held(held_at, step) and not ctx.should_stop():
            time.sleep(0.02)
    if step < ctx.job.steps and step % every:  # stopped between checkpoints: save where it stopped
        ctx.save(state())
    return {} if loss is None else {"eval/iw/laplace": 1.0 / width + loss.item() / 100}


def _held(path: Path, step: int) -> bool:
    """`path` exists and holds a step number that `step` has reached."""
    try:
        return step >= int(path.read_text())
    except (FileNotFoundError, ValueError):
        return False


def _kill_while_saving(step: int) -> None:
    """Make the built-in trainer SIGKILL this process while it writes the checkpoint of `step`."""
    from scaling.train import checkpoint, loop

    original_write, original_save = checkpoint._HashingWriter.write, loop.Trainer._save

    def write(self, b):  # the checkpoint's temporary file: die once part of it is on disk
        n = original_write(self, b)
        if self.bytes >= 4096:
            self._f.flush()
            os.fsync(self._f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return n

    def save(self, at: int, finished: bool = False) -> None:
        if at == step:
            self.runlog.flush()  # the steps before the kill are in the store: the relaunch logs them again
            checkpoint._HashingWriter.write = write
        original_save(self, at, finished)

    loop.Trainer._save = save


def main() -> None:
    from scaling.plan import plan
    from scaling.spec import load_sweep
    from scaling.train import JobRunner

    sweep, size, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spec = load_sweep(sweep)
    (job,) = [j for j in plan(spec) if j.size == size]
    _kill_while_saving(step)
    JobRunner(spec, job)()
    raise SystemExit(f"{job.run_id} finished: the kill at step {step} never happened")


if __name__ == "__main__":
    main()
