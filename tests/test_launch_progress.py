"""The progress, status and summary views (pure formatting)."""

from __future__ import annotations

from scaling.launch.base import JobStatus
from scaling.launch.progress import ProgressView, status_lines, summary_lines
from scaling.train import JobResult


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_shows_step_loss_and_an_eta_from_the_step_rate():
    clock = Clock()
    view = ProgressView(clock)
    run = JobStatus("d-S", "RUNNING", step=100, steps=600, loss=0.25, train_loss=0.5)
    lines = view.lines([run, JobStatus("d-M", "PENDING", steps=600), JobStatus("d-L", "FINISHED", 600, 600, 0.2)])
    assert lines[0] == "1/3 done (1 finished, 1 running, 1 pending)"
    assert "d-S  RUNNING   step 100/600  loss 0.5  L_iw 0.25  ETA ?" in lines[1]
    clock.now += 50.0  # 100 steps in 50 s -> 400 steps left take 200 s
    lines = view.lines([JobStatus("d-S", "RUNNING", step=200, steps=600, loss=0.2, train_loss=0.4)])
    assert lines[1].endswith("ETA 3m20s")


def test_status_and_summary_lines():
    statuses = [JobStatus("d-S", "FINISHED", 600, 600, 0.2, url="http://x/#/r/1", log="runs/d/d-S/logs"),
                JobStatus("d-M", "FAILED", 20, 600, None, log="runs/d/d-M/logs", reason="TrainError: NaN")]
    lines = status_lines(statuses)
    assert lines[0].split() == ["run", "id", "state", "step", "L_iw", "MLflow", "run", "log"]
    assert lines[1].split() == ["d-S", "FINISHED", "600/600", "0.2", "http://x/#/r/1", "runs/d/d-S/logs"]
    assert lines[3] == "  d-M: TrainError: NaN"
    results = [JobResult("d-S", "FINISHED", 600, {}), JobResult("d-M", "FAILED", 20, {}, "TrainError: NaN (log: x)")]
    summary = summary_lines(statuses, results)
    assert summary[2].split() == ["d-M", "FAILED", "20/600", "-", "runs/d/d-M/logs"]
    assert summary[-1] == "  d-M: TrainError: NaN (log: x)"
