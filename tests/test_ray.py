"""Real Ray (2 CPUs): the `ray` backend and `scaling tune`, with real MLflow stores in tmp_path.

One Ray instance, started in this process, serves the module (the launcher and the tuner find it connected
and leave it running); `test_cli_run_*` runs `scaling run` in a child process that connects to it by
address and then starts and stops a Ray of its own, and checks that none of its Ray processes is left.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from scaling.launch import get_launcher
from scaling.plan import plan
from scaling.spec import load_sweep
from scaling.track import Tracker
from tests.conftest import REPO, tiny_sweep_dict
from tests.ray_trainers import sgd_loss

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_here():
    """A local Ray with 2 CPUs in this process (workers import `tests.*` from the repository)."""
    import ray

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_AUTH_MODE")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved["PYTHONPATH"]]))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module (creating one costs seconds); each test uses its own experiments."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    Tracker(uri, "created-first")
    return uri


def _sweep(tmp_path: Path, store: str, name: str = "tiny", **changes) -> Path:
    data = tiny_sweep_dict(name=name)
    data["launch"] = {"backend": "ray", "workdir": str(tmp_path / "runs"), "resources": {"default": {"cpus": 1}}}
    data["tracking"] = {"uri": store}
    for key, value in changes.items():
        data[key] = value if not isinstance(value, dict) else {**data.get(key, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _runs(spec, experiment: str | None = None) -> tuple[Tracker, dict]:
    tracker = Tracker(spec.tracking.uri, experiment or spec.experiment)
    return tracker, {r.data.tags["scaling.run_id"]: r for r in tracker.find_runs()}


def _steps(tracker, run, key: str) -> list[int]:
    return sorted(m.step for m in tracker.client.get_metric_history(run.info.run_id, key))


def test_failed_jobs_are_retried_from_their_checkpoint(ray_here, store, tmp_path):
    """S trains as 2 ranks, M raises once, L's worker dies once, XL always fails: one retry each
    (max_requeues: 1); the jobs that can finish do."""
    sizes = dict(tiny_sweep_dict()["model"]["sizes"], XL={"depth": 1, "width": 40, "heads": 2, "patch": 4})
    resources = {"default": {"cpus": 1}, "S": {"tasks_per_node": 2}}
    spec = load_sweep(_sweep(tmp_path, store, "retry", trainer="tests.ray_trainers:by_size", model={"sizes": sizes},
                             fit={"holdout": ["XL"]}, launch={"max_requeues": 1, "resources": resources}))
    jobs = plan(spec)
    launcher = get_launcher(spec)
    results = {r.run_id: r for r in launcher.wait(launcher.submit(jobs))}
    rid = {j.size: j.run_id for j in jobs}
    assert [results[rid[s]].status for s in ("S", "M", "L", "XL")] == ["FINISHED", "FINISHED", "FINISHED", "FAILED"]
    assert re.search(r"RuntimeError: broken: fails at step 2 after 2 attempts \(log: .*ray-attempt-2.log\)",
                     results[rid["XL"]].reason)
    tracker, runs = _runs(spec)
    assert {s: runs[rid[s]].info.status for s in rid} == {"S": "FINISHED", "M": "FINISHED", "L": "FINISHED",
                                                         "XL": "FAILED"}
    assert {s: runs[rid[s]].data.tags["scaling.attempt"] for s in rid} == {"S": "1", "M": "2", "L": "2", "XL": "2"}
    assert "broken: fails at step 2" in runs[rid["XL"]].data.tags["scaling.reason"]
    s_metrics = runs[rid["S"]].data.metrics  # 2 ranks on one node talked through torch.distributed
    assert (s_metrics["dist/world_size"], s_metrics["dist/rank_sum"], s_metrics["dist/local_rank_sum"]) == (2, 3, 3)
    s_logs = Path(next(j for j in jobs if j.size == "S").workdir) / "logs"
    assert sorted(p.name for p in s_logs.glob("*.log")) == ["ray-attempt-1-rank0.log", "ray-attempt-1-rank1.log"]
    # M resumed from its checkpoint at step 3: every step once, none twice
    assert _steps(tracker, runs[rid["M"]], "train/loss") == [1, 2, 3, 4, 5, 6]
    assert _steps(tracker, runs[rid["L"]], "train/loss")[-3:] == [4, 5, 6]  # steps 1-3 died with the worker's buffer
    logs = Path(next(j for j in jobs if j.size == "M").workdir) / "logs"
    assert "flaky: failing once" in (logs / "ray-attempt-1.log").read_text()
    assert "resumes from" in (logs / "ray-attempt-2.log").read_text()
    states = {s.run_id: s.state for s in launcher.status(jobs)}
    assert [states[rid[s]] for s in ("S", "M", "L", "XL")] == ["FINISHED", "FINISHED", "FINISHED", "FAILED"]


def test_cancel_stops_jobs_gracefully_and_a_relaunch_resumes_them(ray_here, store, tmp_path):
    """`cancel` reaches each job's worker (SIGUSR2): it checkpoints and ends KILLED; relaunching continues it.
    S is cancelled by the launcher that started it, M by a fresh one (as another process would)."""
    two = {"sizes": {k: v for k, v in tiny_sweep_dict()["model"]["sizes"].items() if k in ("S", "M")}}
    spec = load_sweep(_sweep(tmp_path, store, "stop", trainer="tests.ray_trainers:slow", model=two,
                             fit={"holdout": []}, train={"budget": 100, "ckpt_every": 5}))
    jobs = plan(spec)
    launcher = get_launcher(spec)
    handles = launcher.submit(jobs)
    # each job is stopped once it has a checkpoint (the first is step 5; 2 are kept): 19 s before it could finish
    for job, canceller in zip(jobs, (launcher, get_launcher(spec))):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not list((Path(job.workdir) / "checkpoints").glob("step-*.json")):
            time.sleep(0.1)
        canceller.cancel([job])
    results = launcher.wait(handles)
    for result in results:
        assert result.status == "KILLED" and 5 <= result.step < 100 and "SIGUSR2" in result.reason, result
    tracker, runs = _runs(spec)
    assert {r.info.status for r in runs.values()} == {"KILLED"}
    relaunch = get_launcher(spec)
    assert [r.status for r in relaunch.wait(relaunch.submit(jobs))] == ["FINISHED", "FINISHED"]
    tracker, runs = _runs(spec)
    for job in jobs:
        assert runs[job.run_id].info.status == "FINISHED" and runs[job.run_id].data.tags["scaling.attempt"] == "2"
        assert _steps(tracker, runs[job.run_id], "train/loss") == list(range(1, 101))  # continued, nothing twice
        assert not list((Path(job.workdir) / "logs").glob("*.where.json"))  # only while running
    again = get_launcher(spec)
    handles = again.submit(jobs)  # FINISHED: skipped, nothing starts
    assert all(h.skipped for h in handles) and {r.status for r in again.wait(handles)} == {"FINISHED"}


def test_tune_finds_the_learning_rate_of_the_grid(ray_here, store, tmp_path):
    """8 random log-uniform trials with ASHA find the lr that a 31-point grid says is best (1e-2), within 2x;
    one trial fails once on purpose and resumes from its checkpoint."""
    from scaling.tune import tune

    grid = np.logspace(-4, -1, 31)
    finals = [sgd_loss(lr, 40, 5)[-1][1] for lr in grid]
    grid_best = float(grid[int(np.argmin(finals))])
    sweep = _sweep(tmp_path, store, "sgd", trainer="tests.ray_trainers:sgd_fail_once",
                   train={"budget": 40, "eval_every": 5, "ckpt_every": 5})
    result = tune(sweep, "S", ["lr=log(1e-4,1e-1)"], samples=8, seed=0)
    assert grid_best / 2 <= result.best.values["lr"] <= grid_best * 2
    assert result.best.status == "FINISHED" and result.best.step == 40
    assert result.best.liw == pytest.approx(sgd_loss(result.best.values["lr"], 40, 5)[-1][1])
    assert {t.status for t in result.trials} <= {"FINISHED", "STOPPED"} and len(result.trials) == 8
    assert any(t.status == "STOPPED" for t in result.trials)  # ASHA stopped some early
    spec = load_sweep(sweep)
    tracker, runs = _runs(spec, result.experiment)
    parent = runs[result.name]
    assert parent.info.status == "FINISHED" and parent.data.tags["tune.best.lr"] == str(result.best.values["lr"])
    assert parent.data.metrics["best/eval/iw/laplace"] == pytest.approx(result.best.liw)
    expected = {"FINISHED": "FINISHED", "STOPPED": "KILLED"}
    for t in result.trials:
        run = runs[t.run_id]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == expected[t.status], t
        assert _steps(tracker, run, "eval/iw/laplace")[-1] >= t.step  # what ASHA saw is in MLflow
        assert float(run.data.params["tune.lr"]) == pytest.approx(t.values["lr"])
    retried = [t for t in result.trials if runs[t.run_id].data.tags["scaling.attempt"] == "2"]
    assert len(retried) == 1
    steps = _steps(tracker, runs[retried[0].run_id], "eval/iw/laplace")
    assert steps == sorted(set(steps)) and steps[0] == 5  # resumed: no step logged twice
    overlay = yaml.safe_load(result.overlay.read_text())
    assert overlay == {"model": {"sizes": {"S": {"lr": result.best.values["lr"]}}}}
    rows = result.table.read_text().splitlines()
    assert rows[0] == "trial,run_id,status,step,lr,eval/iw/laplace,error" and len(rows) == 9
    assert result.figure.stat().st_size > 1000


def test_cli_tune_runs_the_built_in_trainer(ray_here, store, tmp_path, capsys):
    """`scaling tune` over a grid of 2 learning rates for the tiny size S: real trials of the built-in
    trainer, nested MLflow runs, the table, the figure and the overlay that the sweep then includes."""
    from scaling.cli import main

    sweep = _sweep(tmp_path, store, "builtin")
    name = "builtin-S-tune-test"
    assert main(["tune", str(sweep), "--size", "S", "--search", "lr=grid(1e-3,1e-2)", "--samples", "1",
                 "--steps", "6", "--eval-every", "3", "--name", name]) == 0
    out = capsys.readouterr().out
    assert f"tune {name}: 2 trials of size S" in out and "overlay: " in out
    folder = tmp_path / "runs" / "builtin" / name
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert sorted(float(r["lr"]) for r in rows) == [1e-3, 1e-2]
    assert (folder / "liw.png").stat().st_size > 1000
    best = rows[0]  # best first
    assert best["status"] == "FINISHED" and best["step"] == "6"
    tracker, runs = _runs(load_sweep(sweep), "builtin-tune")
    parent = runs[name]
    assert parent.info.status == "FINISHED" and parent.data.tags["tune.best.lr"] == best["lr"]
    assert sorted(a.path for a in tracker.client.list_artifacts(parent.info.run_id)) == [
        "builtin.tuned.yaml", "liw.png", "results.csv"]
    for row in rows:
        run = runs[row["run_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == {"FINISHED": "FINISHED", "STOPPED": "KILLED"}[row["status"]]
        assert _steps(tracker, run, "eval/iw/laplace") == ([3, 6] if row["status"] == "FINISHED" else [3])
        assert float(run.data.params["job.lr"]) == float(row["lr"])
        assert run.data.metrics["eval/iw/laplace"] == pytest.approx(float(row["eval/iw/laplace"]))
    assert float(best["eval/iw/laplace"]) == min(float(r["eval/iw/laplace"]) for r in rows if r["status"] == "FINISHED")
    overlay = sweep.with_name("builtin.tuned.yaml")
    assert yaml.safe_load(overlay.read_text()) == {"model": {"sizes": {"S": {"lr": float(best["lr"])}}}}
    including = sweep.with_name("including.yaml")
    including.write_text(yaml.safe_dump(yaml.safe_load(sweep.read_text()) | {"include": [overlay.name]}))
    assert {j.size: j.lr for j in plan(load_sweep(including))} == {"S": float(best["lr"]), "M": 1e-3, "L": 1e-3}


def test_cli_run_connects_by_address_and_starts_its_own_ray(ray_here, store, tmp_path):
    """`scaling run` in a child process: first on this module's Ray (RAY_ADDRESS), then on a Ray it starts
    and stops itself; afterwards none of its Ray processes is left, and this module's Ray still runs."""
    import ray

    # the demo-like sweep: the built-in trainer, 3 sizes, lr scaled with width (μP rule), constant schedule
    remote = _sweep(tmp_path, store, "remote", train={"optimizer": {"lr": 2e-3, "lr_scale": "mup", "base_width": 16}})
    one_size = {"sizes": {"S": tiny_sweep_dict()["model"]["sizes"]["S"]}}
    own = _sweep(tmp_path, store, "own", trainer="tests.ray_trainers:steady", model=one_size, fit={"holdout": []},
                 launch={"max_parallel": 1})
    script = textwrap.dedent(f"""
        import os, sys
        from scaling.cli import main
        first = main(["run", {str(remote)!r}, "--no-fit"])
        del os.environ["RAY_ADDRESS"]
        second = main(["run", {str(own)!r}, "--no-fit"])
        sys.exit(first or second)
    """)
    env = {**os.environ, "RAY_ADDRESS": ray_here, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "started a local Ray with 1 CPUs" in err
    leftovers = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(rf"session_[\d_-]+_{proc.pid}\b", cmd):
            leftovers.append(cmd[:120])
    assert leftovers == []
    assert ray.cluster_resources()["CPU"] == 2  # the cluster it connected to was left running
    for path, count in ((remote, 3), (own, 1)):
        spec = load_sweep(path)
        tracker, runs = _runs(spec)
        assert {r.info.status for r in runs.values()} == {"FINISHED"} and len(runs) == count
        assert {r.data.tags["scaling.attempt"] for r in runs.values()} == {"1"}
        table = (Path(spec.launch.workdir) / spec.name / "table.csv").read_text()
        assert len({line.split(",")[0] for line in table.splitlines()[1:]}) == count
    spec = load_sweep(remote)
    tracker, runs = _runs(spec)
    widths = {name: size.width for name, size in spec.model.sizes.items()}
    for job in plan(spec):
        assert job.lr == pytest.approx(2e-3 * widths["S"] / widths[job.size])  # μP: lr·base_width/width
        lrs = [m.value for m in tracker.client.get_metric_history(runs[job.run_id].info.run_id, "train/lr")]
        assert len(lrs) == 6 and lrs == pytest.approx([job.lr] * 6)
        assert _steps(tracker, runs[job.run_id], "eval/iw/laplace") == [3, 6]
        state = torch.load(Path(job.workdir) / "checkpoints" / "step-6.pt", weights_only=True)
        groups = state["optimizer"]["param_groups"]
        assert [g["lr"] for g in groups] == pytest.approx([job.lr] * len(groups))  # the optimizer's own lr
