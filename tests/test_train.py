"""The built-in trainer end to end on tiny models: metrics, checkpoints, exact resume, signals, NaN, DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scaling.errors import TrainError
from scaling.train import JobResult, JobRunner
from scaling.train.checkpoint import CheckpointStore
from tests.mlflow_server import free_port
from tests.train_fixtures import tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One real sqlite MLflow store for this module's tests (creating a store takes seconds)."""
    from scaling.track import ensure_store

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ensure_store(uri)
    return uri


def _env(**extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), **extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        if key not in extra:
            env.pop(key, None)
    return env


def _child(workdir: Path, env: dict | None = None, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.train_child", str(workdir), json.dumps(options)],
                            cwd=workdir.parent, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _result(proc: subprocess.Popen, timeout: float = 120) -> JobResult:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return JobResult.from_json(out.strip().splitlines()[-1])


def _final(job) -> dict:
    info, state = CheckpointStore(Path(job.workdir) / "checkpoints").load_latest()
    assert info.finished and info.step == job.steps
    return state


def _assert_identical(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, sa in a["optimizer"]["state"].items():
        assert all(torch.equal(sa[k], b["optimizer"]["state"][i][k]) for k in sa), i


def test_trains_logs_evaluates_and_checkpoints(tmp_path):
    spec, job = tiny(tmp_path)  # 12 steps: log every 2, eval every 6, checkpoint every 4
    runner = JobRunner(spec, job, track=False)
    result = runner()
    assert result.status == "FINISHED" and result.step == 12
    steps = {step: metrics for step, metrics in runner.runlog.history if "train/loss" in metrics}
    assert sorted(steps) == [2, 4, 6, 8, 10, 12]
    assert steps[4]["progress/samples"] == 32 and steps[4]["progress/flops"] == pytest.approx(4 * job.flops_per_step)
    assert steps[2]["train/lr"] == pytest.approx(3e-3) and steps[12]["train/lr"] == pytest.approx(3e-4)
    assert all(m["perf/samples_per_s"] > 0 for m in steps.values())
    evals = [(step, m) for step, m in runner.runlog.history if "eval/iw/laplace" in m]
    assert [s for s, _ in evals] == [6, 12]
    grid = runner.runlog.artifacts["lambda_grid.json"]["lambda"]
    assert grid == [-10.0 + 2.0 * k for k in range(11)]
    assert sorted(k for k in evals[0][1] if k.startswith("eval/level/")) == [f"eval/level/{k:03d}" for k in range(11)]
    assert {f"eval/iw/{w}" for w in ("laplace", "uniform", "min_snr", "edm", "logit_normal")} <= evals[0][1].keys()
    assert result.metrics["eval/iw/laplace"] == evals[-1][1]["eval/iw/laplace"] < evals[0][1]["eval/iw/laplace"]
    assert CheckpointStore(Path(job.workdir) / "checkpoints").steps() == [12, 8]
    # relaunching a finished job returns at once with the same result
    t = time.perf_counter()
    again = JobRunner(spec, job, track=False)()
    assert again == result and time.perf_counter() - t < 1.0


def test_stop_signal_then_resume_is_bit_identical(tmp_path, caplog):
    """2N steps straight == stopped by SIGTERM mid-run (after chaining to the previous handler) + resumed."""
    options = {"budget": 80, "ckpt_every": 4, "eval_every": 40, "log_every": 8}
    spec, job = tiny(tmp_path / "straight", **options)
    assert JobRunner(spec, job, track=False)().status == "FINISHED"
    straight = _final(job)

    workdir = tmp_path / "stopped"
    workdir.mkdir()
    proc = _child(workdir, chain=True, **options)
    _, stopped_job = tiny(workdir, **options)
    first = Path(stopped_job.workdir) / "checkpoints" / "step-4.json"
    deadline = time.monotonic() + 60
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    killed = _result(proc)
    assert killed.status == "KILLED" and 4 <= killed.step < 80, killed
    assert "SIGTERM" in killed.reason
    chained = json.loads((workdir / "chained.json").read_text())
    assert chained["signal"] == signal.SIGTERM and killed.step in chained["checkpoints"]  # saved, then chained
    assert "JobRunner(tiny-S-80steps-s0)" == chained["requeued"]
    assert not (Path(stopped_job.workdir) / "result.json").exists()

    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    resumed = JobRunner(*tiny(workdir, **options), track=False)()
    assert resumed.status == "FINISHED" and resumed.step == 80
    _assert_identical(straight, _final(stopped_job))

    # a corrupt newest checkpoint is detected; the previous one is used and the result is still exact
    _, copy_job = tiny(copy, **options)
    store = CheckpointStore(Path(copy_job.workdir) / "checkpoints")
    newest, previous = store.steps()
    path = store.path(newest)
    path.write_bytes(path.read_bytes()[:1000])
    with caplog.at_level("INFO"):
        JobRunner(*tiny(copy, **options), track=False)()
    assert f"step-{newest}.pt is corrupt" in caplog.text
    assert any(r.getMessage().endswith(f"resumes at step {previous}") for r in caplog.records)
    _assert_identical(straight, _final(copy_job))


def test_nan_loss_fails_names_step_and_size_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, mlflow_uri):
    from scaling.track import TAG_REASON, Tracker

    monkeypatch.setenv("SCALING_SPOOL_DIR", str(tmp_path / "spool"))
    uri = mlflow_uri
    spec, job = tiny(tmp_path, tracking_uri=uri, optimizer={"lr": 1e30, "grad_clip": None}, ckpt_every=1,
                     schedule={"name": "constant"})
    with pytest.raises(TrainError, match=r"size S .*loss is (nan|inf) at step 2\b"):
        JobRunner(spec, job)()
    store = CheckpointStore(Path(job.workdir) / "checkpoints")
    info, state = store.load_latest()
    assert info.step == 1 and all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (Path(job.workdir) / "result.json").exists()
    (run,) = Tracker(uri, spec.experiment).find_runs(job.run_id)
    assert run.info.status == "FAILED"
    assert "loss is" in run.data.tags[TAG_REASON] and "step 2" in run.data.tags[TAG_REASON]


@pytest.mark.parametrize("micro, compile", [(None, False), (2, False), (2, True)])
def test_two_ranks_with_gloo_match_one_process(tmp_path, micro, compile):
    """Two DDP ranks (each on its half of the batch, in one pass or accumulated over micro-batches of 2 with
    the gradient all-reduced once, eager or through torch.compile's aot_eager traces of the DDP module) train
    what one process trains on the whole batch in one pass."""
    options = {"budget": 8, "batch_size": 8, "ckpt_every": 100, "eval_every": 100}
    spec, job = tiny(tmp_path / "one", **options)
    one = JobRunner(spec, job, track=False)()
    port = str(free_port())
    workdir = tmp_path / "two"
    workdir.mkdir()
    options.update(micro_batch_size=micro, compile=compile)
    backend = {"SCALING_COMPILE_BACKEND": "aot_eager"} if compile else {}
    procs = [_child(workdir, env=_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                                      MASTER_PORT=port, **backend), **options) for r in range(2)]
    results = [_result(p) for p in procs]
    assert [r.status for r in results] == ["FINISHED", "FINISHED"] and results[0].step == 8
    _, two_job = tiny(workdir, **options)
    assert two_job.micro_batch_size == micro
    a, b = _final(job), _final(two_job)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    assert results[0].metrics["train/loss"] == pytest.approx(one.metrics["train/loss"], rel=1e-5)
    assert results[0].metrics["eval/iw/laplace"] == pytest.approx(one.metrics["eval/iw/laplace"], rel=1e-4)
    assert results[1].metrics["eval/iw/laplace"] == results[0].metrics["eval/iw/laplace"]  # both ranks evaluated
    assert len(b["ranks"]) == 2  # every rank's RNG and data position are in the checkpoint


def test_micro_batches_accumulate_the_gradient_of_the_whole_batch(tmp_path, monkeypatch):
    """micro_batch_size 2 of a batch of 8: four forward/backward passes per step, the same λ and ε, the same
    training as one pass (to float rounding), and a share that micro-batches do not divide is refused."""
    from scaling.models import DiT

    options = {"budget": 8, "ckpt_every": 100, "eval_every": 8}
    whole = JobRunner(*tiny(tmp_path / "whole", **options), track=False)()
    spec, job = tiny(tmp_path / "micro", micro_batch_size=2, **options)
    assert job.micro_batch_size == 2
    passes, forward = [], DiT.forward

    def counted(self, z, lam, y=None):
        if torch.is_grad_enabled():  # training passes, not the evaluation's
            passes.append(len(z))
        return forward(self, z, lam, y)

    monkeypatch.setattr(DiT, "forward", counted)
    micro = JobRunner(spec, job, track=False)()
    assert passes == [2] * 4 * 8
    _, whole_job = tiny(tmp_path / "whole", **options)
    a, b = _final(whole_job), _final(job)
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=1e-6, msg=key)
    assert micro.metrics["train/loss"] == pytest.approx(whole.metrics["train/loss"], rel=1e-5)
    assert micro.metrics["eval/iw/laplace"] == pytest.approx(whole.metrics["eval/iw/laplace"], rel=1e-5)

    from scaling.train.dist import DistEnv
    from scaling.train.loop import Trainer

    spec, job = tiny(tmp_path / "three", micro_batch_size=4, batch_size=12, **options)
    with pytest.raises(TrainError, match="trains on 6 samples per step, not a multiple of micro_batch_size 4"):
        Trainer(spec, job, DistEnv(rank=0, world_size=2), torch.device("cpu"), None, None)
    spec, job = tiny(tmp_path / "four", micro_batch_size=4, **options)  # a share of 2: one pass, no error
    Trainer(spec, job, DistEnv(rank=0, world_size=4), torch.device("cpu"), None, None)


def test_mlflow_run_is_killed_then_resumed_and_finished(tmp_path, monkeypatch, mlflow_uri):
    """The real tracker: tags, params, metric names, the λ grid artifact; a stopped job resumes the same run."""
    import mlflow

    from scaling.track import TAG_REASON, TAG_RUN_ID, Tracker

    monkeypatch.setenv("SCALING_SPOOL_DIR", str(tmp_path / "spool"))
    uri = mlflow_uri
    options = {"budget": 40, "ckpt_every": 10, "eval_every": 20, "log_every": 5}
    workdir = tmp_path / "w"
    workdir.mkdir()
    proc = _child(workdir, env=_env(SCALING_SPOOL_DIR=str(tmp_path / "spool")), tracking_uri=uri, **options)
    spec, job = tiny(workdir, tracking_uri=uri, **options)
    first = Path(job.workdir) / "checkpoints" / "step-10.json"
    deadline = time.monotonic() + 90
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: saved and KILLED, not a KeyboardInterrupt traceback
    killed = _result(proc)
    assert killed.status == "KILLED" and killed.step < 40
    tracker = Tracker(uri, spec.experiment)
    (run,) = tracker.find_runs(job.run_id)
    assert run.info.status == "KILLED" and "SIGINT" in run.data.tags[TAG_REASON]

    result = JobRunner(spec, job)()
    assert result.status == "FINISHED"
    (run,) = tracker.find_runs(job.run_id)  # the same run, resumed
    assert run.info.status == "FINISHED" and TAG_REASON not in run.data.tags
    tags, params = run.data.tags, run.data.params
    assert tags[TAG_RUN_ID] == job.run_id and tags["scaling.size"] == "S" and tags["scaling.seed"] == "0"
    assert tags["scaling.budget"] == "40steps" and tags["scaling.attempt"] == "2"
    assert params["job.params"] == str(job.params) and float(params["train.optimizer.lr"]) == 3e-3
    assert params["evaluation.lambda_step"] == "2.0" and params["model.sizes.S.width"] == "16"
    client = mlflow.MlflowClient(uri)
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert {m.step for m in losses} == set(range(5, 41, 5))
    assert {m.step for m in client.get_metric_history(run.info.run_id, "eval/iw/laplace")} == {20, 40}
    assert {m.step for m in client.get_metric_history(run.info.run_id, "eval/level/010")} == {20, 40}
    assert {m.step for m in client.get_metric_history(run.info.run_id, "progress/flops")} >= {40}
    grid = json.loads(Path(client.download_artifacts(run.info.run_id, "lambda_grid.json", str(tmp_path))).read_text())
    assert grid == {"lambda": [-10.0 + 2.0 * k for k in range(11)]}


def test_compiled_training_matches_eager(tmp_path, caplog, monkeypatch):
    """train.compile traces the model's forward and backward (aot_eager: the graphs inductor would compile on
    GPU) and trains to the same loss and L_iw as eager mode."""
    eager = JobRunner(*tiny(tmp_path / "eager", budget=4, eval_every=4), track=False)()
    monkeypatch.setenv("SCALING_COMPILE_BACKEND", "aot_eager")
    with caplog.at_level("INFO"):
        result = JobRunner(*tiny(tmp_path / "compiled", compile=True, budget=4, eval_every=4), track=False)()
    assert "torch.compile with backend aot_eager" in caplog.text
    assert result.status == eager.status == "FINISHED"
    for key in ("train/loss", "eval/iw/laplace"):
        assert abs(result.metrics[key] - eager.metrics[key]) <= 1e-4 * abs(eager.metrics[key]), key


def test_bf16_autocast_path_runs_on_cpu(tmp_path, caplog):
    """precision: bf16 (what `auto` picks on CUDA) trains through torch.autocast; compile is ignored on CPU."""
    spec, job = tiny(tmp_path, precision="bf16", compile=True, budget=4, eval_every=4)
    with caplog.at_level("INFO"):
        result = JobRunner(spec, job, track=False)()
    assert result.status == "FINISHED" and 0 < result.metrics["train/loss"] < 10
    assert "compile is ignored on CPU" in caplog.text and "bf16 autocast on CPU is slow" in caplog.text
