"""The tracker against real MLflow: a sqlite store in tmp_path and a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from scaling.errors import TrackError
from scaling.export import write_table
from scaling.track import TAG_ATTEMPT, TAG_REASON, Tracker, export_table

from .conftest import REPO
from .mlflow_server import MlflowServer


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_resume_continues_the_same_run_without_duplicates(uri, tmp_path):
    tracker = Tracker(uri, "exp", spool_dir=tmp_path / "spool")
    first = tracker.open_run("exp-S-10steps-s0", tags={"scaling.size": "S"}, params={"job.params": 1234, "a.b": 1})
    for step in range(0, 8):
        first.log(step, {"train/loss": 10.0 + step, "progress/samples": 8.0 * step})
    first.log_json_artifact("lambda_grid.json", {"lambda": [-1.0, 0.0, 1.0]})
    first.finish("KILLED", reason="SIGTERM at step 7")
    # the job restarts from its checkpoint at step 5 and logs steps 5..9 again, with other values
    second = Tracker(uri, "exp", spool_dir=tmp_path / "spool").open_run(
        "exp-S-10steps-s0", tags={"scaling.size": "S"}, params={"job.params": 1234, "a.b": 2})
    assert second.mlflow_run_id == first.mlflow_run_id
    for step in range(5, 10):
        second.log(step, {"train/loss": 20.0 + step, "progress/samples": 8.0 * step})
    second.finish("FINISHED")

    client = MlflowClient(uri)
    runs = client.search_runs([tracker.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert TAG_REASON not in run.data.tags and run.data.tags[TAG_ATTEMPT] == "2"
    assert run.data.params["a.b"] == "1"  # params keep their first value
    assert client.list_artifacts(run.info.run_id)[0].path == "lambda_grid.json"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 13  # MLflow keeps both attempts

    table = export_table(uri, "exp")
    assert list(table["step"]) == list(range(10))
    expected = [10.0 + s for s in range(5)] + [20.0 + s for s in range(5, 10)]
    assert list(table["train/loss"]) == expected
    assert list(table["samples"]) == [8.0 * s for s in range(10)]
    assert set(table["run_id"]) == {"exp-S-10steps-s0"} and set(table["size"]) == {"S"}
    assert set(table["params"]) == {1234} and set(table["status"]) == {"FINISHED"}


def test_final_statuses_and_reasons(uri):
    tracker = Tracker(uri, "exp")
    for rid, status, reason in (("a", "FINISHED", None), ("b", "FAILED", "TrainError: loss is NaN at step 3"),
                                ("c", "KILLED", "preempted")):
        run = tracker.open_run(rid)
        run.log(0, {"train/loss": 1.0})
        run.finish(status, reason)
    summaries = tracker.summaries()
    assert {k: (v.status, v.reason) for k, v in summaries.items()} == {
        "a": ("FINISHED", None), "b": ("FAILED", "TrainError: loss is NaN at step 3"), "c": ("KILLED", "preempted")}
    with pytest.raises(TrackError, match="valid: FINISHED, FAILED, KILLED"):
        tracker.open_run("d").finish("DONE")


def test_context_manager_marks_a_crash_failed(uri):
    tracker = Tracker(uri, "exp")
    with pytest.raises(ValueError), tracker.open_run("x") as run:
        run.log(1, {"train/loss": 2.0})
        raise ValueError("boom")
    summary = tracker.summaries()["x"]
    assert summary.status == "FAILED" and summary.reason == "ValueError: boom" and summary.step == 1


def test_bad_input_is_refused_in_the_caller(uri):
    run = Tracker(uri, "exp").open_run("x")
    with pytest.raises(TrackError, match="not allowed"):
        run.log(0, {"bad:name": 1.0})
    with pytest.raises(TrackError, match="expected a number"):
        run.log(0, {"train/loss": "abc"})
    with pytest.raises(TypeError):
        run.log_json_artifact("x.json", {"x": object()})
    run.finish()
    with pytest.raises(TrackError, match="is finished"):
        run.log(1, {"train/loss": 1.0})
    with pytest.raises(TrackError, match="not a URI"):
        Tracker("mlflow.db", "exp")


def test_large_logs_are_split_into_batches_of_1000(uri):
    run = Tracker(uri, "exp").open_run("big")
    for step in range(700):  # 2,800 metrics: three log_batch calls at least
        run.log(step, {f"eval/level/{k:03d}": step + k / 10 for k in range(4)})
    assert run.flush(timeout=60)
    run.finish()
    table = export_table(uri, "exp")
    assert len(table) == 700 and table["eval/level/003"].iloc[-1] == pytest.approx(699.3)


def _foreign_store(uri: str) -> None:
    """Runs logged by plain MLflow code (not this tracker): other tag, param and metric names."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("other")
    for name, n_params in (("tiny", 1000), ("small", 4000)):
        with mlflow.start_run(run_name=f"run-{name}"):
            mlflow.set_tag("model_size", name)
            mlflow.log_param("n_params", n_params)
            for step in range(3):
                mlflow.log_metrics({"val_loss": 1.0 / (step + 1) / n_params, "epoch": float(step * 10)}, step=step)
            mlflow.log_metric("val_loss", float("nan"), step=3)


def test_export_reads_runs_logged_by_other_code(uri, tmp_path):
    _foreign_store(uri)
    table = export_table(uri, "other", size_col="model_size", params_col="n_params", metrics=["val_loss"])
    assert list(table.columns) == ["run_id", "sweep", "size", "params", "budget", "seed", "status", "step", "samples",
                                   "flops", "val_loss"]
    assert list(table["run_id"].unique()) == ["run-small", "run-tiny"]
    assert set(zip(table["size"], table["params"])) == {("small", 4000), ("tiny", 1000)}
    assert len(table) == 8 and math.isnan(table["val_loss"].iloc[3])
    by_epoch = export_table(uri, "other", metrics=["val_loss"], step_col="epoch")
    assert sorted(set(by_epoch["step"])) == [0, 10, 20]
    with pytest.raises(TrackError, match="model_size"):
        export_table(uri, "other", size_col="modelsize")
    with pytest.raises(TrackError, match="experiments there: Default, other"):
        export_table(uri, "missing")
    with pytest.raises(TrackError, match="not logged by any run"):
        export_table(uri, "other", metrics=["val_los"])
    out = write_table(table, tmp_path / "t" / "table.csv")
    back = pd.read_csv(out)
    assert list(back.columns) == list(table.columns) and len(back) == 8


def test_sql_and_client_readers_agree(uri):
    tracker = Tracker(uri, "exp")
    rng = np.random.default_rng(0)
    for i in range(3):
        run = tracker.open_run(f"r{i}", tags={"scaling.size": f"S{i}", "scaling.seed": "0"},
                               params={"job.params": 100 * (i + 1)})
        for attempt in range(2):
            for step in range(attempt * 5, 12):
                run.log(step, {"train/loss": float(rng.normal()), "eval/iw/laplace": float(rng.normal())})
            run.flush()
            time.sleep(0.01)
        run.finish()
    fast = export_table(uri, "exp", reader="sql")
    slow = export_table(uri, "exp", reader="client")
    pd.testing.assert_frame_equal(fast, slow)
    assert len(fast) == 36 and not fast.duplicated(["run_id", "step"]).any()


def test_what_the_store_refuses_is_spooled_and_sent_by_the_next_open_run(uri, tmp_path):
    spool = tmp_path / "spool"
    tracker = Tracker(uri, "exp", spool_dir=spool)
    run = tracker.open_run("r")
    run.log(0, {"train/loss": 0.0})
    assert run.flush(timeout=30)
    client = MlflowClient(uri)
    client.delete_run(run.mlflow_run_id)  # e.g. someone deleted it in the UI: the store refuses new metrics
    for step in range(1, 40):
        run.log(step, {"train/loss": float(step)})
    with pytest.raises(TrackError, match="setting r to FINISHED failed"):
        run.finish("FINISHED", timeout=10)
    lines = (spool / "exp" / "r.jsonl").read_text().splitlines()
    assert len(lines) == 39
    client.restore_run(run.mlflow_run_id)
    again = Tracker(uri, "exp", spool_dir=spool).open_run("r")
    assert again.mlflow_run_id == run.mlflow_run_id
    again.finish("FINISHED")
    assert not list((spool / "exp").iterdir())
    table = export_table(uri, "exp")
    assert list(table["train/loss"]) == list(map(float, range(40))) and set(table["status"]) == {"FINISHED"}


WRITER = """
import sys
from scaling.track import Tracker
uri, name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
run = Tracker(uri, "par").open_run(name, flush_interval=0.05)
for step in range(steps):
    run.log(step, {"train/loss": step + 0.5, "eval/iw/laplace": -step, "progress/samples": step * 8})
run.finish()
"""


@pytest.mark.slow
def test_four_concurrent_writers_lose_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"  # a brand-new store: the writers also race to create it
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, f"w{i}", "600"], env=env, stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err
        assert "database is locked" not in err and "Traceback" not in err
    table = export_table(uri, "par")
    assert sorted(set(table["run_id"])) == ["w0", "w1", "w2", "w3"]
    assert len(table) == 4 * 600
    assert table[["train/loss", "eval/iw/laplace", "samples"]].notna().all().all()
    assert (table["train/loss"] == table["step"] + 0.5).all()
    assert set(table["status"]) == {"FINISHED"}


@pytest.mark.slow
def test_server_outage_loses_no_metric(tmp_path):
    server = MlflowServer(tmp_path).start()
    try:
        tracker = Tracker(server.uri, "exp", spool_dir=tmp_path / "spool")
        run = tracker.open_run("outage", params={"job.params": 10})
        for step in range(100):
            run.log(step, {"train/loss": float(step)})
        assert run.flush(timeout=30)

        # 1. the server goes away while the job logs: the job goes on, the tracker retries until it is back
        server.stop()
        started = time.monotonic()
        for step in range(100, 200):
            run.log(step, {"train/loss": float(step)})
        assert time.monotonic() - started < 1.0  # logging never waits for the store
        assert not run.flush(timeout=2) and run.pending == 100
        restart = threading.Thread(target=server.start)
        restart.start()
        assert run.flush(timeout=120)
        restart.join()

        for step in range(200, 250):
            run.log(step, {"train/loss": float(step)})
        run.finish("FINISHED")
        assert not (tmp_path / "spool").exists()

        table = export_table(server.uri, "exp")
        assert list(table["step"]) == list(range(250)) and list(table["train/loss"]) == list(map(float, range(250)))
        assert set(table["status"]) == {"FINISHED"}
    finally:
        server.stop()


def test_metrics_reach_the_store_while_the_job_runs(uri):
    tracker = Tracker(uri, "exp")
    run = tracker.open_run("live", flush_interval=0.5)
    run.log(3, {"train/loss": 1.5})
    deadline = time.monotonic() + 20
    while tracker.summaries()["live"].step != 3:  # no flush: the background sender sends it on its own
        assert time.monotonic() < deadline, "a logged metric did not reach the store within 20 s"
        time.sleep(0.2)
    assert run.pending == 0
    run.finish()


def test_an_own_trainers_parameter_count_wins_over_the_planners(uri):
    """`ctx.set_params(n)` tags the run `scaling.params`; the export's `params` is that count."""
    tracker = Tracker(uri, "exp")
    for run_id, own in (("mine", 97), ("planned", None)):
        run = tracker.open_run(run_id, tags={"scaling.size": "S"}, params={"job.params": 4892})
        if own is not None:
            run.set_tag("scaling.params", own)
        run.log(1, {"val/loss": 0.5})
        run.finish()
    table = export_table(uri, "exp")
    assert dict(zip(table["run_id"], table["params"])) == {"mine": 97, "planned": 4892}


def test_cli_export_of_another_tools_experiment(uri, tmp_path, capsys):
    from scaling.cli import main

    _foreign_store(uri)
    out = tmp_path / "other.csv"
    assert main(["export", "--experiment", "other", "--uri", uri, "--size-col", "model_size", "--params-col",
                 "n_params", "--metric", "val_loss", "-o", str(out)]) == 0
    assert f"8 rows, 2 runs, 11 columns -> {out}" in capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(table["size"].unique()) == ["small", "tiny"] and list(table.columns)[-1] == "val_loss"
    assert main(["export", "--experiment", "nope", "--uri", uri, "-o", str(out)]) == 1
    assert "no experiment 'nope'" in capsys.readouterr().err
    assert main(["export"]) == 2

