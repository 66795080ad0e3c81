"""The complete example of docs/own-trainer.md, run as a sweep's `trainer: module:function`."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import torch

from scaling.errors import TrainError
from scaling.train import JobRunner
from scaling.train.checkpoint import CheckpointStore
from tests.test_train import _child, _env, _result
from tests.train_fixtures import tiny

REPO = Path(__file__).resolve().parents[1]


def _example(tmp_path: Path) -> Path:
    """Write the docs' example to tmp_path/my_trainer.py."""
    text = (REPO / "docs" / "own-trainer.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (code,) = [b for b in blocks if "def train(ctx)" in b]
    path = tmp_path / "my_trainer.py"
    path.write_text(code)
    return path


def test_docs_example_trains_stops_and_resumes_exactly(tmp_path, monkeypatch):
    _example(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    options = {"budget": 60, "ckpt_every": 10, "eval_every": 30, "log_every": 5}
    spec, job = tiny(tmp_path / "straight", trainer="my_trainer:train", **options)
    runner = JobRunner(spec, job, track=False)
    result = runner()
    assert result.status == "FINISHED" and result.step == 60
    assert result.metrics["eval/iw/laplace"] > 0
    assert [s for s, m in runner.runlog.history if "eval/iw/laplace" in m] == [30, 60]
    assert [s for s, m in runner.runlog.history if "train/loss" in m] == list(range(5, 61, 5))
    straight = CheckpointStore(Path(job.workdir) / "checkpoints").load_latest()[1]

    workdir = tmp_path / "stopped"
    workdir.mkdir()
    env = _env()
    env["PYTHONPATH"] += f":{tmp_path}"
    proc = _child(workdir, env=env, trainer="my_trainer:train", **options)
    _, stopped_job = tiny(workdir, trainer="my_trainer:train", **options)
    first = Path(stopped_job.workdir) / "checkpoints" / "step-10.json"
    deadline = time.monotonic() + 60
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    killed = _result(proc)
    assert killed.status == "KILLED" and 10 <= killed.step < 60

    resumed = JobRunner(*tiny(workdir, trainer="my_trainer:train", **options), track=False)
    assert resumed().status == "FINISHED"
    assert resumed.runlog.history[0][0] > killed.step  # continued, not restarted
    final = CheckpointStore(Path(stopped_job.workdir) / "checkpoints").load_latest()[1]
    for key, value in straight["model"].items():
        assert torch.equal(value, final["model"][key]), key
    assert json.loads((Path(stopped_job.workdir) / "result.json").read_text())["status"] == "FINISHED"


def test_trainer_errors_are_clear(tmp_path, monkeypatch):
    (tmp_path / "bad_trainer.py").write_text(
        "def train(ctx):\n    ctx.save({'x': 1})\n\ndef nan(ctx):\n    ctx.log(3, {'train/loss': float('nan')})\n"
        "\ndef count(ctx):\n    ctx.set_params(2.5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = [("missing_module_xyz:train", "cannot import trainer module 'missing_module_xyz'"),
             ("bad_trainer:nope", "module 'bad_trainer' has no function 'nope'"),
             ("bad_trainer:train", r"needs the step"),
             ("bad_trainer:nan", r"size S: metric train/loss is nan at step 3"),
             ("bad_trainer:count", r"ctx.set_params needs a positive whole number of parameters, got 2.5")]
    for target, message in cases:
        runner = JobRunner(*tiny(tmp_path / target.replace(":", "_"), trainer=target), track=False)
        try:
            runner()
        except TrainError as e:
            assert re.search(message, str(e)), (target, str(e))
            assert runner.runlog.status == "FAILED" and re.search(message, runner.runlog.reason)
        else:
            raise AssertionError(f"{target} did not fail")
