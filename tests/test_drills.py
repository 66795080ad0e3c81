"""Fault drills: hard kills mid-checkpoint, Ctrl-C on a whole sweep, two sweeps into one store, a NaN in one size.

Real processes (`scaling run` and its submitit jobs), real torch training of tiny models, a real MLflow
sqlite store in tmp_path. Malformed inputs (sweep files, tables, fit JSON) are drilled in
tests/test_drills_inputs.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from scaling.cli import main
from scaling.launch.local import latest_log
from scaling.plan import plan
from scaling.spec import load_sweep
from scaling.track import TAG_ATTEMPT, TAG_REASON, Tracker, ensure_store, export_table
from scaling.train import JobRunner
from scaling.train.checkpoint import CheckpointStore

from .conftest import REPO, as_in_a_terminal, tiny_sweep_dict

DEADLINE_S = 120


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, created once (creating one takes seconds); tests copy it."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    ensure_store(f"sqlite:///{path}")
    return path


@pytest.fixture
def drill_env(tmp_path, monkeypatch):
    """Jobs import `scaling` and `tests.*` from this tree; spool files and fits/reports land in tmp_path."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_sweep(tmp_path: Path, name: str = "tiny", sizes: tuple[str, ...] = ("S", "M", "L"),
                trainer: str | None = "tests.drill_jobs:held", store: Path | None = None, fit: dict | None = None,
                **train) -> Path:
    """A tiny sweep file: jobs in tmp_path/work, MLflow in `store` (default tmp_path/mlflow.db)."""
    data = tiny_sweep_dict(name=name)
    all_sizes = {**data["model"]["sizes"], "XL": {"depth": 2, "width": 48, "heads": 2, "patch": 4}}
    data["model"] = {"sizes": {k: all_sizes[k] for k in sizes}}
    if trainer:
        data["trainer"] = trainer
    data["train"] = {**data["train"], "budget": 12, "ckpt_every": 4, "eval_every": 4, **train}
    data["fit"] = fit or {"laws": ["power"], "holdout": [], "bootstrap": 20}
    data["launch"] = {"workdir": str(tmp_path / "work"), "max_parallel": 2,
                      "resources": {"default": {"time_min": 10}}}
    data["tracking"] = {"uri": f"sqlite:///{store or tmp_path / 'mlflow.db'}"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = DEADLINE_S) -> None:
    """Poll `condition` until it holds; fail after `timeout` s, or at once if `proc` has exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"exited {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def scaling_process(*args: str) -> subprocess.Popen:
    """`scaling ARGS...` in its own process group (as in a terminal), output captured."""
    return subprocess.Popen([sys.executable, "-m", "scaling.cli", *args], start_new_session=True,
                            preexec_fn=as_in_a_terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, sig: int | None = None) -> tuple[str, str]:
    """Send `sig` to the process group of `proc` (if given) and wait for it; SIGKILL the group if it hangs."""
    try:
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        return proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise


def span(jobs) -> tuple[float, float]:
    """When the first of `jobs` started (submitit's first log line) and the last one finished (result.json)."""
    starts = []
    for job in jobs:
        for out in (Path(job.workdir) / "logs").glob("*_log.out"):
            stamp = out.read_text().split("(", 1)[1].split(")", 1)[0]  # submitit INFO (2026-11-22 01:18:07,371) - ...
            seconds, ms = stamp.split(",")
            starts.append(time.mktime(time.strptime(seconds, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000)
    return min(starts), max((Path(j.workdir) / "result.json").stat().st_mtime for j in jobs)


def attempts(job) -> list[tuple[int, int]]:
    """(pid, first step) of each attempt of a `held` job."""
    path = Path(job.workdir) / "attempts.txt"
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()] if path.exists() else []


def progress(job) -> int:
    path = Path(job.workdir) / "progress.txt"
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else 0


def histories(client: MlflowClient, run) -> dict[str, list[int]]:
    """Steps of every metric of an MLflow run, in the order they are stored."""
    return {key: [m.step for m in client.get_metric_history(run.info.run_id, key)] for key in run.data.metrics}


# --- 1. SIGKILL in the middle of writing a checkpoint ---------------------------------------------------

@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_resumes_from_the_last_complete_one(drill_env, empty_store, capsys):
    tmp_path = drill_env
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    sweep = write_sweep(tmp_path, sizes=("S",), trainer=None, log_every=1)
    spec = load_sweep(sweep)
    (job,) = plan(spec)
    ckpt = Path(job.workdir) / "checkpoints"

    # the job (the built-in trainer, as a launcher runs it) kills itself while writing the checkpoint of step 8
    child = subprocess.Popen([sys.executable, "-m", "tests.drill_jobs", str(sweep), "S", "8"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = child.communicate(timeout=DEADLINE_S)
    assert child.returncode == -signal.SIGKILL, err[-3000:]
    assert CheckpointStore(ckpt).steps() == [4]  # step 8 never became a checkpoint
    (partial,) = [p for p in ckpt.iterdir() if p.name.startswith(".step-8.")]
    assert partial.name == f".step-8.pt.tmp-{child.pid}" and partial.stat().st_size >= 4096
    assert not (ckpt / "step-8.pt").exists() and not (ckpt / "step-8.json").exists()
    tracker = Tracker(spec.tracking.uri, spec.experiment)
    assert tracker.summaries()[job.run_id].status == "RUNNING"  # died without ending its run
    assert tracker.summaries()[job.run_id].step == 8  # steps 5-8 reached the store before the kill

    # relaunch: `scaling run` resumes the job from step 4, in the same MLflow run
    assert main(["run", str(sweep), "--no-fit"]) == 0
    assert f"{job.run_id}  FINISHED  12/12" in capsys.readouterr().out
    log = latest_log(job).with_suffix(".err").read_text()
    assert f"{job.run_id} resumes at step 4" in log
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-12.json", "step-12.pt", "step-8.json", "step-8.pt"]
    (run,) = tracker.find_runs(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_ATTEMPT] == "2"
    # steps 5-8 were logged by both attempts; the export holds one value per (run, metric, step)
    client = MlflowClient(spec.tracking.uri)
    assert sorted(histories(client, run)["train/loss"]) == sorted([*range(1, 9), *range(5, 13)])
    table = export_table(spec.tracking.uri, spec.experiment)
    assert list(table["step"]) == list(range(1, 13))

    # the same job never interrupted: identical parameters and metrics (resume is exact on CPU)
    reference = load_sweep(sweep, {"launch": {"workdir": str(tmp_path / "reference")}})
    (ref_job,) = plan(reference)
    runner = JobRunner(reference, ref_job, track=False)
    runner()
    _, ref_state = CheckpointStore(Path(ref_job.workdir) / "checkpoints").load_latest()
    _, state = CheckpointStore(ckpt).load_latest()
    assert state["step"] == ref_state["step"] == 12
    for key, tensor in ref_state["model"].items():
        assert torch.equal(state["model"][key], tensor), key
    ref = {}
    for step, metrics in runner.runlog.history:
        for key, value in metrics.items():
            ref.setdefault(key, {})[step] = value
    assert dict(zip(table["step"], table["train/loss"])) == ref["train/loss"]
    evaluated = table.dropna(subset=["eval/iw/laplace"])
    assert dict(zip(evaluated["step"], evaluated["eval/iw/laplace"])) == ref["eval/iw/laplace"]


# --- 2. Ctrl-C on `scaling run` with one job finished and one running, then the same command again ---------

@pytest.mark.slow
def test_ctrl_c_on_a_sweep_then_run_again_redoes_nothing_finished_and_duplicates_no_metric(drill_env, empty_store,
                                                                                          capsys):
    tmp_path = drill_env
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    sweep = write_sweep(tmp_path, sizes=("S", "M"))
    spec = load_sweep(sweep)
    jobs = {j.size: j for j in plan(spec)}
    done, held = jobs["M"], jobs["S"]
    Path(held.workdir).mkdir(parents=True)
    (Path(held.workdir) / "hold").write_text("6")  # S waits at step 6 (checkpoint at 4) until stopped

    cli = scaling_process("run", str(sweep), "--no-fit")
    try:
        wait_for(lambda: (Path(done.workdir) / "result.json").exists() and progress(held) == 6,
                 "M to finish while S waits at step 6", cli)
    finally:
        out, err = finish(cli, signal.SIGINT)  # Ctrl-C in the terminal: SIGINT to the whole process group
    assert cli.returncode == 130, err[-3000:]
    assert "run the same command again to resume" in err and "Traceback" not in err
    tracker = Tracker(spec.tracking.uri, spec.experiment)
    before = tracker.summaries()
    assert before[done.run_id].status == "FINISHED"
    assert before[held.run_id].status == "KILLED" and before[held.run_id].step == 6
    assert "stopped by SIG" in before[held.run_id].reason
    assert CheckpointStore(Path(held.workdir) / "checkpoints").steps() == [6, 4]
    assert main(["status", str(sweep)]) == 0
    status = capsys.readouterr().out
    assert f"{done.run_id}  FINISHED" in status and f"{held.run_id}  KILLED" in status
    done_attempts, done_logs = attempts(done), sorted(latest_log(done).parent.iterdir())

    # the same command again: M is not started, S resumes at step 6 in its own MLflow run
    (Path(held.workdir) / "hold").unlink()
    assert main(["run", str(sweep), "--no-fit"]) == 0
    out = capsys.readouterr().out
    assert all(f"{j.run_id}  FINISHED  12/12" in out for j in jobs.values())
    assert attempts(done) == done_attempts and len(done_attempts) == 1  # no new training of M
    assert sorted(latest_log(done).parent.iterdir()) == done_logs  # ... not even a new process
    client = MlflowClient(spec.tracking.uri)
    for job in jobs.values():
        (run,) = tracker.find_runs(job.run_id)
        assert run.info.run_id == before[job.run_id].mlflow_run_id and run.info.status == "FINISHED"
        assert TAG_REASON not in run.data.tags
        assert run.data.tags[TAG_ATTEMPT] == ("1" if job is done else "2")
        assert [step for _, step in attempts(job)] == ([0] if job is done else [0, 6])
        for key, steps in histories(client, run).items():  # stopped at a checkpoint: no step logged twice
            assert steps == list(range(1, 13)), (job.run_id, key)
    table = export_table(spec.tracking.uri, spec.experiment)
    assert len(table) == 2 * 12 and not table.duplicated(["run_id", "step"]).any()
    assert set(table["status"]) == {"FINISHED"}


# --- 3. two sweeps at once into one MLflow store ------------------------------------------------------

@pytest.mark.slow
def test_two_sweeps_at_once_into_one_new_store_stay_separate(drill_env, capsys):
    tmp_path = drill_env
    store = tmp_path / "shared" / "mlflow.db"  # does not exist yet: both create it at the same moment
    sweeps = {name: write_sweep(tmp_path, name=name, sizes=("S", "M"), store=store, budget=8)
              for name in ("alpha", "beta")}
    procs = {name: scaling_process("run", str(path), "--no-fit") for name, path in sweeps.items()}
    outputs = {name: finish(proc) for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name][1][-3000:]
    specs = {name: load_sweep(path) for name, path in sweeps.items()}
    jobs = {name: plan(spec) for name, spec in specs.items()}
    logs = [text for out, err in outputs.values() for text in (out, err)]
    logs += [p.read_text() for js in jobs.values() for j in js for p in (Path(j.workdir) / "logs").glob("*_log.*")]
    for text in logs:
        assert "database is locked" not in text and "Traceback" not in text and "OperationalError" not in text

    alpha, beta = (span(js) for js in jobs.values())
    assert alpha[0] < beta[1] and beta[0] < alpha[1]  # the two sweeps trained at the same time

    client = MlflowClient(f"sqlite:///{store}")
    assert {e.name for e in client.search_experiments()} >= {"alpha", "beta"}
    for name, spec in specs.items():
        own = {j.run_id for j in jobs[name]}
        runs = Tracker(spec.tracking.uri, spec.experiment).find_runs()
        assert {r.data.tags["scaling.run_id"] for r in runs} == own and len(runs) == 2
        assert {r.data.tags["scaling.sweep"] for r in runs} == {name}
        assert all(r.info.status == "FINISHED" for r in runs)
        assert main(["export", str(sweeps[name])]) == 0
        assert "16 rows, 2 runs" in capsys.readouterr().out  # 2 sizes x 8 steps: its own runs only
        table = export_table(spec.tracking.uri, spec.experiment)
        assert set(table["run_id"]) == own and set(table["sweep"]) == {name}
        assert main(["fit", str(sweeps[name]), "--no-curves"]) == 0  # reads work/<sweep>/table.csv
        capsys.readouterr()
        fits = sorted((tmp_path / "fits" / name).glob("*.json"))
        assert [f.name for f in fits] == ["iw-laplace__power__params.json"]
        points = json.loads(fits[0].read_text())["points"]
        assert {p["run_id"] for p in points} == own


# --- 5. a NaN in one size of a sweep --------------------------------------------------------------------

@pytest.mark.slow
def test_a_nan_fails_its_job_by_name_and_the_fit_goes_on_without_that_size(drill_env, empty_store, capsys):
    tmp_path = drill_env
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    sweep = write_sweep(tmp_path, sizes=("S", "M", "L", "XL"), trainer=None, budget=6, ckpt_every=3, eval_every=3,
                        log_every=1, optimizer={"grad_clip": None},
                        fit={"laws": ["power"], "holdout": ["XL"], "bootstrap": 20})
    data = yaml.safe_load(sweep.read_text())
    data["model"]["sizes"]["M"]["lr"] = 1e30  # the built-in trainer, M only: its loss overflows at step 2
    sweep.write_text(yaml.safe_dump(data))
    spec = load_sweep(sweep)
    jobs = {j.size: j for j in plan(spec)}

    assert main(["run", str(sweep)]) == 1  # a job failed; the table, fits and report are made all the same
    out = capsys.readouterr().out
    for size in ("S", "L", "XL"):
        assert re.search(rf"{jobs[size].run_id} +FINISHED +6/6", out)
    assert re.search(rf"{jobs['M'].run_id} +FAILED", out)
    reason = re.search(rf"{jobs['M'].run_id}: (.*)", out).group(1)
    assert re.search(r"TrainError: size M \(.*\): the training loss is (nan|inf) at step 2\b", reason), reason
    (run,) = Tracker(spec.tracking.uri, spec.experiment).find_runs(jobs["M"].run_id)
    assert run.info.status == "FAILED" and "at step 2" in run.data.tags[TAG_REASON]

    fit = json.loads((tmp_path / "fits" / "tiny" / "iw-laplace__power__params.json").read_text())
    assert fit["sizes"] == ["S", "L"]
    (xl,) = fit["holdout"]  # XL predicted from S and L, and compared with the XL that ran
    assert xl["label"] == "XL" and xl["actual"] > 0 and xl["runs"] == [jobs["XL"].run_id]
    missing = [w for w in fit["warnings"] if w.startswith("size M is missing from the fit")]
    assert missing and f"{jobs['M'].run_id}: status FAILED" in missing[0]
    assert "warning: size M is missing from the fit" in out
    assert (tmp_path / "reports" / "tiny" / "index.html").exists()
    assert "M has no evaluated run" in out  # the report says so too
