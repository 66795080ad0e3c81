"""Shared fixtures: small sweep files written into tmp_path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_SWEEP = {
    "name": "tiny",
    "model": {"sizes": {
        "S": {"depth": 1, "width": 16, "heads": 2, "patch": 4},
        "M": {"depth": 1, "width": 24, "heads": 2, "patch": 4},
        "L": {"depth": 2, "width": 32, "heads": 2, "patch": 4},
    }},
    "data": {"source": "shapes", "image_size": 8, "channels": 1},
    "train": {"budget": 6, "batch_size": 8, "eval_every": 3, "ckpt_every": 3, "log_every": 1, "threads": 1,
              "schedule": {"name": "constant", "warmup_steps": 0}},
    "evaluation": {"samples": 8, "batch_size": 64, "lambda_step": 1.0},
    "fit": {"holdout": ["L"], "bootstrap": 20},
}


def tiny_sweep_dict(**overrides) -> dict:
    """A copy of the tiny sweep (3 sizes, 6 steps, 8x8 images) with top-level overrides."""
    data = copy.deepcopy(TINY_SWEEP)
    data.update(overrides)
    return data


@pytest.fixture
def tiny_sweep(tmp_path: Path) -> Path:
    """A tiny sweep file whose workdir and MLflow store live in tmp_path."""
    data = tiny_sweep_dict()
    data["launch"] = {"workdir": str(tmp_path / "runs")}
    data["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def as_in_a_terminal() -> None:
    """`preexec_fn` of a CLI process that a test Ctrl-Cs: SIGINT back to its default, as in a terminal.

    A test run started in the background by a shell (`pytest ... &`, nohup) inherits SIGINT ignored, and
    Python then never raises KeyboardInterrupt; a terminal's `scaling run` has it at its default."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
