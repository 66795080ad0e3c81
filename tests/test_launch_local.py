"""The local launcher end to end: real submitit subprocesses, real torch training, real MLflow (sqlite)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from scaling.cli import main
from scaling.launch import get_launcher
from scaling.launch.local import latest_log
from scaling.plan import plan
from scaling.spec import load_sweep
from scaling.track import TAG_ATTEMPT, Tracker, export_table

from .conftest import REPO, tiny_sweep_dict


@pytest.fixture(autouse=True)
def _job_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # jobs import `scaling` and `tests.tiny_trainer` from this tree


def write_sweep(tmp_path: Path, trainer: str = "tests.tiny_trainer:train", **train) -> Path:
    data = tiny_sweep_dict(trainer=trainer)
    data["train"] = {**data["train"], "budget": 12, "ckpt_every": 4, **train}
    data["launch"] = {"workdir": str(tmp_path / "runs"), "max_parallel": 2,
                      "resources": {"default": {"time_min": 10}}}
    data["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def attempts(job) -> list[tuple[float, float]]:
    path = Path(job.workdir) / "attempts.txt"
    return [tuple(map(float, line.split()[:2])) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_run_trains_every_job_then_a_relaunch_skips_them(tmp_path, capsys):
    sweep = write_sweep(tmp_path)
    assert main(["run", str(sweep)]) == 0
    out = capsys.readouterr().out
    spec = load_sweep(sweep)
    jobs = plan(spec)
    for job in jobs:
        assert f"{job.run_id}  FINISHED  12/12" in out
        assert len(attempts(job)) == 1
        assert latest_log(job) is not None and latest_log(job).parent == Path(job.workdir) / "logs"
    # never more than launch.max_parallel = 2 jobs at once
    spans = [a for job in jobs for a in attempts(job)]
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 2
    table_csv = tmp_path / "runs" / "tiny" / "table.csv"
    assert f"table: {table_csv}" in out
    table = export_table(spec.tracking.uri, spec.experiment)
    assert sorted(table["run_id"].unique()) == sorted(j.run_id for j in jobs)
    assert len(table) == 3 * 12 and set(table["status"]) == {"FINISHED"}
    assert dict(zip(table["run_id"], table["params"])) == {j.run_id: j.params for j in jobs}
    assert table_csv.read_text().count("\n") == 1 + 3 * 12

    assert main(["status", str(sweep)]) == 0
    status = capsys.readouterr().out.splitlines()
    assert len(status) == 4 and all("FINISHED" in line and "12/12" in line for line in status[1:])
    assert all("http://127.0.0.1:5000/#/experiments/" in line for line in status[1:])

    started = time.monotonic()
    assert main(["run", str(sweep), "--no-fit"]) == 0  # everything FINISHED: nothing starts
    assert time.monotonic() - started < 20
    assert all(len(attempts(job)) == 1 for job in jobs)


@pytest.mark.slow
def test_a_failed_job_does_not_stop_the_others(tmp_path, capsys):
    sweep = write_sweep(tmp_path, trainer="tests.tiny_trainer:train_fail_m")
    assert main(["run", str(sweep), "--no-fit", "--max-parallel", "1"]) == 1
    out = capsys.readouterr().out
    spec = load_sweep(sweep)
    s, m, big = plan(spec)
    assert f"{s.run_id}  FINISHED" in out and f"{big.run_id}  FINISHED" in out
    assert f"{m.run_id}  FAILED" in out
    assert "size M diverged on purpose" in out and str(Path(m.workdir) / "logs") in out
    summaries = Tracker(spec.tracking.uri, spec.experiment).summaries()
    assert summaries[m.run_id].status == "FAILED"
    assert "RuntimeError: size M diverged on purpose" in summaries[m.run_id].reason
    assert summaries[s.run_id].status == summaries[big.run_id].status == "FINISHED"


def _wait_for_step(tracker: Tracker, run_id: str, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = tracker.summaries().get(run_id)
        if summary is not None and summary.step is not None and summary.step >= step:
            return
        time.sleep(0.5)
    raise AssertionError(f"{run_id} did not reach step {step} in {timeout} s")


@pytest.mark.slow
def test_interrupted_jobs_resume_the_same_run_without_duplicates(tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_TRAINER_SLOW_S", "0.15")
    spec = load_sweep(write_sweep(tmp_path, budget=40, ckpt_every=8))
    job = plan(spec)[0]
    launcher = get_launcher(spec)
    tracker = launcher.tracker

    # 1. a graceful stop (SIGTERM): the job saves a checkpoint and ends KILLED
    handles = launcher.submit([job])
    _wait_for_step(tracker, job.run_id, 5)
    launcher.cancel([job])
    [result] = launcher.wait(handles)
    assert result.status == "KILLED"
    assert tracker.summaries()[job.run_id].status == "KILLED"

    # 2. a hard kill (SIGKILL) after the next checkpoint: steps after it are lost and logged again
    launcher = get_launcher(spec)
    handles = launcher.submit([job])
    first_step = tracker.summaries()[job.run_id].step
    _wait_for_step(tracker, job.run_id, 21)
    controller = int(handles[0].native.sjob.job_id)
    children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    for pid in [*children, controller]:
        os.kill(int(pid), signal.SIGKILL)
    [result] = launcher.wait(handles)
    assert result.status in ("FAILED", "KILLED")
    [st] = get_launcher(spec).status([job])  # the run says RUNNING, its process is gone
    assert st.state == "KILLED" and "process is gone" in st.reason

    # 3. relaunch: the same MLflow run continues from the last checkpoint and finishes
    launcher = get_launcher(spec)
    [result] = launcher.wait(launcher.submit([job]))
    assert result.status == "FINISHED" and result.step == 40
    assert len(attempts(job)) == 2 and first_step >= 5  # the SIGKILLed attempt could not write its line

    runs = MlflowClient(spec.tracking.uri).search_runs([tracker.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags[TAG_ATTEMPT] == "3"
    history = MlflowClient(spec.tracking.uri).get_metric_history(runs[0].info.run_id, "train/loss")
    assert len(history) > 40  # steps after the checkpoint were logged twice
    table = export_table(spec.tracking.uri, spec.experiment)
    assert list(table["step"]) == list(range(1, 41))
    assert list(table["samples"]) == [float(s * job.batch_size) for s in range(1, 41)]
