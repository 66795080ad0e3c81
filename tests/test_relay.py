"""Relayed tracking (local backend): the job writes a relay file without mlflow, the launcher sends it to a
real MLflow store (sqlite in tmp_path)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from scaling.errors import TrackError
from scaling.track import TAG_ATTEMPT, TAG_REASON, Tracker
from scaling.track.relay import Relay, RelayWriter, replay_leftover

from .conftest import REPO, tiny_sweep_dict


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", spool_dir=tmp_path / "spool")


def _history(tracker: Tracker, run_id: str, key: str) -> list[tuple[int, float]]:
    [run] = tracker.find_runs(run_id)
    client = MlflowClient(tracking_uri=tracker.uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def _run(tracker: Tracker, run_id: str):
    [run] = tracker.find_runs(run_id)
    return run


def test_what_the_job_writes_reaches_its_run(tracker, tmp_path):
    path = tmp_path / "job" / "relay.jsonl"
    relay = Relay(path, tracker.open_run("r1", tags={"scaling.size": "S"}))
    writer = RelayWriter(path)
    writer.log(10, {"train/loss": 1.5, "train/lr": 1e-3})
    writer.log_json_artifact("lambda_grid.json", {"lambda": [-1.0, 0.0, 1.0]})
    assert relay.pump() == 3  # start, metrics, artifact
    writer.log(20, {"train/loss": 1.25, "eval/iw/laplace": 0.07})
    writer.set_tag("scaling.params", 1234)
    writer.finish("FINISHED")
    with pytest.raises(TrackError, match="finished"):
        writer.log(30, {"train/loss": 1.0})
    assert relay.close("FAILED", "the launcher's guess") == ("FINISHED", None)  # the job's own end wins
    assert not path.exists()
    assert _history(tracker, "r1", "train/loss") == [(10, 1.5), (20, 1.25)]
    assert _history(tracker, "r1", "eval/iw/laplace") == [(20, 0.07)]
    run = _run(tracker, "r1")
    assert run.info.status == "FINISHED" and run.data.tags["scaling.params"] == "1234"
    assert run.data.tags["scaling.size"] == "S"
    artifact = Path(run.info.artifact_uri.removeprefix("file://")) / "lambda_grid.json"
    assert json.loads(artifact.read_text()) == {"lambda": [-1.0, 0.0, 1.0]}


def test_bad_metrics_fail_in_the_job_not_in_the_launcher(tmp_path):
    writer = RelayWriter(tmp_path / "relay.jsonl")
    with pytest.raises(TrackError, match="not allowed"):
        writer.log(1, {"bad name!": 1.0})
    with pytest.raises(TrackError, match="expected a number"):
        writer.log(1, {"train/loss": "high"})
    with pytest.raises(TrackError, match="not a final status"):
        writer.finish("DONE")


def test_a_torn_last_line_waits_until_it_is_whole(tracker, tmp_path):
    path = tmp_path / "relay.jsonl"
    relay = Relay(path, tracker.open_run("r1"))
    line = json.dumps({"s": 5, "t": 1000, "m": {"train/loss": 2.0}}) + "\n"
    path.write_text(line[:17])  # a writer in the middle of its line
    assert relay.pump() == 0
    with open(path, "a") as fh:
        fh.write(line[17:])
        fh.write('[1, 2]\n{"end": "DONE"}\n{"s": 6, "t": 1, "m": {"train/loss": "x"}}\n')  # malformed: skipped
    assert relay.pump() == 4
    relay.close("KILLED", "SIGKILL")  # no end record: the launcher's verdict is the run's status
    assert _history(tracker, "r1", "train/loss") == [(5, 2.0)]
    run = _run(tracker, "r1")
    assert run.info.status == "KILLED" and run.data.tags[TAG_REASON] == "SIGKILL"


def test_a_job_dead_without_its_end_record_gets_the_launchers_verdict(tracker, tmp_path):
    path = tmp_path / "relay.jsonl"
    relay = Relay(path, tracker.open_run("r1"))
    writer = RelayWriter(path)
    writer.log(1, {"train/loss": 3.0})  # then SIGKILL: no end record
    assert relay.close("FAILED", "exit code -9 (log: x.err)") == ("FAILED", "exit code -9 (log: x.err)")
    run = _run(tracker, "r1")
    assert run.info.status == "FAILED" and "exit code -9" in run.data.tags[TAG_REASON]
    assert _history(tracker, "r1", "train/loss") == [(1, 3.0)]


def test_a_requeued_attempt_is_counted_and_its_end_supersedes_the_first(tracker, tmp_path):
    path = tmp_path / "relay.jsonl"
    runlog = tracker.open_run("r1")
    relay = Relay(path, runlog, attempt=runlog.attempt)
    first = RelayWriter(path)
    first.log(4, {"train/loss": 2.0})
    first.finish("KILLED", "timed out at step 4; relaunch resumes")
    relay.pump()
    assert relay.end == ("KILLED", "timed out at step 4; relaunch resumes")
    second = RelayWriter(path)  # submitit requeued the job: same file, new process
    second.log(8, {"train/loss": 1.0})
    relay.pump()
    assert relay.end is None  # the second attempt has not ended yet
    relay.close("FAILED", "no end record")  # ... and never wrote its end
    run = _run(tracker, "r1")
    assert run.data.tags[TAG_ATTEMPT] == "2" and run.info.status == "FAILED"
    assert _history(tracker, "r1", "train/loss") == [(4, 2.0), (8, 1.0)]


def test_a_file_left_by_a_dead_launcher_is_sent_once_by_the_next_launch(tracker, tmp_path):
    path = tmp_path / "relay.jsonl"
    half = Relay(path, tracker.open_run("r1"))
    writer = RelayWriter(path)
    for step in (1, 2, 3):
        writer.log(step, {"train/loss": float(step)})
    half.pump()
    half.runlog.flush()  # the dead launcher had sent steps 1-3 already ...
    writer.log(4, {"train/loss": 4.0})  # ... but not step 4
    writer.finish("FINISHED")
    again = tracker.open_run("r1")  # the next launch
    assert replay_leftover(path, again) == 6  # start, 4 metrics, end
    assert not path.exists()
    again.finish("FINISHED")
    assert _history(tracker, "r1", "train/loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]  # no duplicates
    assert _run(tracker, "r1").data.tags[TAG_ATTEMPT] == "2"
    assert replay_leftover(path, tracker.open_run("r1")) == 0


def test_a_relayed_job_never_imports_mlflow(tmp_path):
    """The point of the relay: a real job (built-in trainer, evaluation, checkpoints) in a fresh process
    logs everything without importing mlflow."""
    import yaml

    data = tiny_sweep_dict()
    data.pop("trainer", None)
    data["fit"] = {"holdout": []}
    data["train"] = {**data["train"], "budget": 6, "eval_every": 3, "ckpt_every": 3, "log_every": 2}
    data["launch"] = {"workdir": str(tmp_path / "runs")}
    data["tracking"] = {"uri": f"sqlite:///{tmp_path / 'never.db'}"}
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(yaml.safe_dump(data))
    relay = tmp_path / "relay.jsonl"
    code = textwrap.dedent(f"""
        import sys
        from scaling.plan import plan
        from scaling.spec import load_sweep
        from scaling.train import JobRunner
        spec = load_sweep({str(sweep)!r})
        result = JobRunner(spec, plan(spec)[0], relay={str(relay)!r})()
        assert result.status == "FINISHED", result
        print("mlflow imported:", "mlflow" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": ""},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mlflow imported: False" in done.stdout
    assert not (tmp_path / "never.db").exists()
    records = [json.loads(line) for line in relay.read_text().splitlines()]
    assert "start" in records[0] and records[-1] == {"end": "FINISHED", "reason": None}
    steps = [r["s"] for r in records if "m" in r and "train/loss" in r["m"]]
    assert steps == [2, 4, 6]
    evals = [r["s"] for r in records if "m" in r and any(k.startswith("eval/iw/") for k in r["m"])]
    assert evals == [3, 6]
    assert any(r.get("artifact") == "lambda_grid.json" for r in records)
