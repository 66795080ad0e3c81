"""The local launcher end to end: real submitit subprocesses, real torch training, real MLflow (sqlite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from scaling.cli import main
from scaling.launch import get_launcher
from scaling.launch.local import latest_log
from scaling.plan import plan
from scaling.spec import load_sweep
from scaling.track import TAG_ATTEMPT, Tracker, export_table

from .conftest import REPO, as_in_a_terminal, tiny_sweep_dict


@pytest.fixture(autouse=True)
def _job_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # jobs import `scaling` and `tests.tiny_trainer` from this tree


def write_sweep(tmp_path: Path, trainer: str = "tests.tiny_trainer:train", sizes: tuple[str, ...] = ("S", "M", "L"),
                **train) -> Path:
    data = tiny_sweep_dict(trainer=trainer)
    data["model"] = {"sizes": {k: v for k, v in data["model"]["sizes"].items() if k in sizes}}
    data["fit"] = {"holdout": [], "bootstrap": 20}
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
def test_a_failed_job_does_not_stop_the_others(tmp_path, capsys):
    sweep = write_sweep(tmp_path, trainer="tests.tiny_trainer:train_fail_m", sizes=("S", "M"))
    assert main(["run", str(sweep), "--no-fit", "--max-parallel", "2"]) == 1
    out = capsys.readouterr().out
    spec = load_sweep(sweep)
    m, s = plan(spec)  # the YAML was written with sorted keys: M before S
    assert m.size == "M" and s.size == "S"
    assert f"{s.run_id}  FINISHED" in out and f"{m.run_id}  FAILED" in out
    assert "size M diverged on purpose" in out and str(Path(m.workdir) / "logs") in out
    summaries = Tracker(spec.tracking.uri, spec.experiment).summaries()
    assert summaries[m.run_id].status == "FAILED"
    assert "RuntimeError: size M diverged on purpose" in summaries[m.run_id].reason
    assert summaries[s.run_id].status == "FINISHED"  # M failed first; S still ran


def _wait_for_step(job, step: int, not_pid: int | None = None, timeout: float = 120) -> int:
    """Wait until the job's trainer (a process other than `not_pid`) reports `step`; return its pid."""
    path = Path(job.workdir) / "progress.txt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # one read: the trainer rewrites the file (truncate, then write), so a second read may find it empty
        parts = path.read_text().split() if path.exists() else []
        if len(parts) == 2:
            pid, at = map(int, parts)
            if at >= step and pid != not_pid:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"{job.run_id} did not reach step {step} in {timeout} s")


@pytest.mark.slow
def test_interrupted_jobs_resume_the_same_run_without_duplicates(tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_TRAINER_SLOW_S", "0.15")
    monkeypatch.setenv("SCALING_FLUSH_S", "0.2")  # the store follows the job closely
    spec = load_sweep(write_sweep(tmp_path, sizes=("S",), budget=40, ckpt_every=20))
    job = plan(spec)[0]
    launcher = get_launcher(spec)
    tracker = launcher.tracker

    # 1. Ctrl-C in the terminal of `scaling run` (SIGINT to its whole process group): the job saves a
    #    checkpoint and ends KILLED, `scaling run` exits 130
    cli = subprocess.Popen([sys.executable, "-m", "scaling.cli", "run", spec.source, "--no-fit"],
                           start_new_session=True, preexec_fn=as_in_a_terminal, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    first_pid = _wait_for_step(job, 3)
    os.killpg(cli.pid, signal.SIGINT)
    out, err = cli.communicate(timeout=120)
    assert cli.returncode == 130, err
    assert "run the same command again to resume" in err
    assert tracker.summaries()[job.run_id].status == "KILLED"
    assert "stopped by SIG" in tracker.summaries()[job.run_id].reason
    saved = sorted(int(p.stem.split("-")[1]) for p in (Path(job.workdir) / "checkpoints").glob("step-*.pt"))
    assert saved and 3 <= saved[-1] < 20  # a checkpoint at the step where it stopped

    # 2. a hard kill (SIGKILL) once steps after the checkpoint at step 20 are in the store: they are lost
    #    with the process, and logged again after the resume
    launcher = get_launcher(spec)
    handles = launcher.submit([job])
    _wait_for_step(job, 21, not_pid=first_pid)
    deadline = time.monotonic() + 60
    while (tracker.summaries()[job.run_id].step or 0) < 21:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    controller = int(handles[0].native.sjob.job_id)
    children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    for pid in [*children, controller]:
        os.kill(int(pid), signal.SIGKILL)
    killed_at = tracker.summaries()[job.run_id].step
    assert 21 <= killed_at < 40
    time.sleep(0.5)
    [st] = get_launcher(spec).status([job])  # seen from another process: the run says RUNNING, no process
    assert st.state == "KILLED" and "process is gone" in st.reason
    [result] = launcher.wait(handles)  # the launcher that started it ends its run: killed by a signal
    assert result.status == "KILLED" and "log: " in result.reason
    assert tracker.summaries()[job.run_id].status == "KILLED"

    # 3. relaunch: the same MLflow run continues from the checkpoint at step 20 and finishes
    launcher = get_launcher(spec)
    [result] = launcher.wait(launcher.submit([job]))
    assert result.status == "FINISHED" and result.step == 40
    assert len(attempts(job)) == 2  # the SIGKILLed attempt could not write its line

    client = MlflowClient(spec.tracking.uri)
    runs = client.search_runs([tracker.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags[TAG_ATTEMPT] == "3"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert len(history) >= 40 + (killed_at - 20)  # steps 21..killed_at are in the store twice
    table = export_table(spec.tracking.uri, spec.experiment)
    assert list(table["step"]) == list(range(1, 41))
    assert list(table["samples"]) == [float(s * job.batch_size) for s in range(1, 41)]
    last = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}  # the resumed values win
    assert list(table["train/loss"]) == [last[s] for s in range(1, 41)]


def _spans(job) -> list[tuple[float, float]]:
    """(start, end) of each attempt of a job, from submitit's files: its log's first line, its result file."""
    spans = []
    for out in Path(job.workdir, "logs").glob("*_log.out"):
        first = out.read_text().splitlines()[0]  # submitit INFO (2026-11-22 01:18:07,371) - Starting ...
        stamp = first.split("(", 1)[1].split(")", 1)[0]
        start = time.mktime(time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S")) + int(stamp.split(",")[1]) / 1000
        spans.append((start, out.with_name(out.name.replace("_log.out", "_result.pkl")).stat().st_mtime))
    return spans


@pytest.mark.slow
def test_run_trains_fits_and_reports_then_a_relaunch_skips_everything(tmp_path, tiny_sweep, capsys, monkeypatch):
    """The main job in small: `scaling run` with the built-in trainer, 3 sizes, 2 at a time."""
    monkeypatch.chdir(tmp_path)  # fits/ and reports/ are written under the current folder
    data = yaml.safe_load(tiny_sweep.read_text())
    data["fit"] = {"laws": ["power"], "holdout": ["L"], "bootstrap": 20}  # 2 sizes to fit: 2-parameter laws only
    data["launch"]["max_parallel"] = 2
    tiny_sweep.write_text(yaml.safe_dump(data))
    assert main(["run", str(tiny_sweep)]) == 0
    out = capsys.readouterr().out
    spec = load_sweep(tiny_sweep)
    jobs = plan(spec)
    for job in jobs:
        assert f"{job.run_id}  FINISHED  {job.steps}/{job.steps}" in out
        assert latest_log(job) is not None and latest_log(job).parent == Path(job.workdir) / "logs"
    spans = [span for job in jobs for span in _spans(job)]
    assert len(spans) == 3
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 2  # never more than max_parallel at once

    table = export_table(spec.tracking.uri, spec.experiment)
    assert sorted(table["run_id"].unique()) == sorted(j.run_id for j in jobs)
    assert set(table["status"]) == {"FINISHED"} and not table.duplicated(["run_id", "step"]).any()
    assert dict(zip(table["run_id"], table["params"])) == {j.run_id: j.params for j in jobs}
    primary = f"eval/iw/{spec.evaluation.primary}"
    last = table.dropna(subset=[primary]).groupby("run_id")["step"].max()
    assert all(last[j.run_id] == j.steps for j in jobs)
    table_csv = Path(spec.launch.workdir) / spec.name / "table.csv"
    assert f"table: {table_csv}" in out and len(pd.read_csv(table_csv)) == len(table)
    client = MlflowClient(spec.tracking.uri)
    for run in client.search_runs([Tracker(spec.tracking.uri, spec.experiment).experiment_id]):
        assert "lambda_grid.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert list((tmp_path / "fits" / spec.name).glob("*.json"))  # `scaling fit` ran on the table
    assert (tmp_path / "reports" / spec.name / "index.html").exists() and "report: " in out

    assert main(["status", str(tiny_sweep)]) == 0
    status = capsys.readouterr().out.splitlines()
    assert len(status) == 4 and all("FINISHED" in line and f"{jobs[0].steps}/" in line for line in status[1:])
    assert all("http://127.0.0.1:5000/#/experiments/" in line for line in status[1:])

    assert main(["run", str(tiny_sweep), "--no-fit"]) == 0  # everything FINISHED: nothing starts again
    assert all(len(_spans(job)) == 1 for job in jobs)
