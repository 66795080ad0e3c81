"""Tiny sweeps for the trainer's tests: models of a few thousand parameters, a handful of steps."""

from __future__ import annotations

from pathlib import Path

from scaling.plan import Job, plan
from scaling.spec import Spec, parse_sweep


def tiny_sweep(workdir: Path, **train: object) -> dict:
    """A sweep mapping with one tiny size; `train` keys override the training settings."""
    return {
        "name": "tiny",
        "model": {"sizes": {"S": {"depth": 1, "width": 16, "heads": 2, "patch": 4}}, "frequency_dim": 16,
                  "mlp_ratio": 2},
        "data": {"source": "shapes", "image_size": 8, "channels": 1, "seed": 0},
        "train": {"budget": 12, "batch_size": 8, "optimizer": {"lr": 3e-3}, "threads": 1,
                  "schedule": {"name": "cosine", "warmup_steps": 2}, "eval_every": 6, "ckpt_every": 4,
                  "log_every": 2, **train},
        "evaluation": {"samples": 8, "lambda_step": 2.0, "batch_size": 64},
        "launch": {"workdir": str(workdir)},
        "fit": {"holdout": []},
    }


def tiny(workdir: Path, tracking_uri: str | None = None, trainer: str | None = None,
         **train: object) -> tuple[Spec, Job]:
    """The tiny sweep's spec and its one job; `trainer` names your own `module:function`."""
    data = tiny_sweep(workdir, **train)
    if tracking_uri:
        data["tracking"] = {"uri": tracking_uri}
    if trainer:
        data["trainer"] = trainer
    spec = parse_sweep(data)
    return spec, plan(spec)[0]
