"""The SLURM backend on a real cluster (`bash slurm/dev-cluster.sh start`): arrays, results, a real time
limit that checkpoints and requeues, `scontrol requeue`, submitit's interrupt, cancel and resubmit.

Jobs run the real `JobRunner` with the small own trainer `tests.slurm_trainer:count` (sleeps per step), so
signals, checkpoints and the MLflow run resumed by run id are all real.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from scaling.errors import LaunchError
from scaling.launch.slurm import SlurmLauncher, master_port
from scaling.spec import load_sweep

from .conftest import REPO

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sinfo") is None,
                       reason="no SLURM here (sinfo not found): bash slurm/dev-cluster.sh install && ... start"),
]

SIZES = {"depth": 1, "width": 16, "heads": 2, "patch": 4}
STEPS = 110
"""Steps of each drill job: 22 s at 0.2 s per step, 55 s for T so that its 1-minute limit always strikes."""


def write_sweep(tmp_path: Path, name: str, sizes: list[str], steps: int, resources: dict, **launch) -> Path:
    data = {
        "name": name,
        "model": {"sizes": {s: dict(SIZES) for s in sizes}},
        "data": {"source": "shapes", "image_size": 8},
        "train": {"budget": steps, "batch_size": 8, "ckpt_every": 10, "log_every": 1, "threads": 1,
                  "seeds": launch.pop("seeds", [0])},
        "trainer": "tests.slurm_trainer:count",
        "launch": {"backend": "slurm", "cluster": launch.pop("cluster", "dev"), "workdir": str(tmp_path / "runs"),
                   "resources": resources, **launch},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def loss_steps(spec, run_id: str) -> list[int]:
    """Steps of `train/loss` in the job's MLflow run(s), as logged."""
    from mlflow import MlflowClient

    from scaling.track import TAG_RUN_ID

    client = MlflowClient(spec.tracking.uri)
    exp = client.get_experiment_by_name(spec.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` = '{run_id}'")
    assert len(runs) == 1, f"{run_id}: {len(runs)} MLflow runs, expected the same run resumed"
    return [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]


def attempts(job) -> list[tuple[int, int]]:
    """(SLURM restart count, first step) of each attempt of a job."""
    path = Path(job.workdir) / "attempts.txt"
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    """One sweep, six jobs, every fault at once (so they overlap in time):
    A: runs to the end; T: time_min 1, 55 s of steps, USR2 25-55 s after its start -> checkpoint, requeue, finish;
    Q: `scontrol requeue` while running; I: submitit's interrupt (preemption: SIGTERM then USR2);
    C: cancelled while running, then `resubmit --failed`; P: cancelled while still pending;
    D: two tasks (one per "GPU") that form a gloo process group from submitit's JobEnvironment.
    A, Q, I and C share their resources, so they go as one job array."""
    tmp_path = tmp_path_factory.mktemp("drill")
    mp = pytest.MonkeyPatch()
    mp.chdir(REPO)  # the jobs import tests.slurm_trainer from the submit directory
    mp.setenv("SCALING_TEST_STEP_S", "0.2")
    mp.setenv("SCALING_TEST_STEP_S_T", "0.5")
    mp.setenv("SCALING_SLURM_PROFILES", str(tmp_path))
    # SLURM checks limits every 30 s and sends USR2 at the first check less than signal_delay_s + 30 s
    # before the limit: with 5 s, USR2 comes 25-55 s into a 1-minute job, always at least 30 s before the kill.
    (tmp_path / "tight.yaml").write_text(yaml.safe_dump({
        "partitions": ["debug"], "signal_delay_s": 5,
        "defaults": {"partition": "debug", "mem_gb": 0.25, "time_min": 5}}))
    path = write_sweep(tmp_path, "drill", ["A", "T", "Q", "I", "C", "P", "D"], STEPS, {
        "T": {"time_min": 1}, "P": {"extra_sbatch": ["--begin=now+3600"]}, "D": {"tasks_per_node": 2}},
        cluster="tight", max_requeues=6)
    launcher = SlurmLauncher(load_sweep(path), poll_s=1, timeout_s=400)
    jobs = {j.size: j for j in launcher.plan()}
    out = {"launcher": launcher, "jobs": jobs, "scripts": launcher.render(list(jobs.values())), "path": path}
    handles = out["handles"] = {h.job.size: h for h in launcher.submit(list(jobs.values()))}
    deadline = time.monotonic() + 150
    while not all(list((Path(jobs[s].workdir) / "checkpoints").glob("step-*.pt")) for s in "QIC"):
        assert time.monotonic() < deadline, "jobs Q, I, C did not reach a checkpoint within 150 s"
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", handles["Q"].backend_id], check=True)
    handles["I"].native._interrupt()
    launcher.cancel([jobs["C"], jobs["P"]])
    started = time.monotonic()
    out["cancelled"] = launcher.wait([handles["C"], handles["P"]])
    out["cancel_wait_s"] = time.monotonic() - started
    out["cancelled_status"] = {s.run_id: s for s in launcher.status([jobs["C"], jobs["P"]])}
    resubmitted = launcher.resubmittable([jobs["C"]], failed_only=True)
    assert [j.size for j in resubmitted] == ["C"]
    handles["C2"] = launcher.submit(resubmitted)[0]
    demo = out["demo"] = SlurmLauncher(load_sweep(REPO / "sweeps" / "demo.yaml", demo_overrides(tmp_path)), poll_s=1,
                                       timeout_s=400)
    demo_handles = demo.submit(demo.plan())  # the built-in trainer, while T is still at it
    keys = ["A", "T", "Q", "I", "C2", "D"]
    out["results"] = dict(zip(keys, launcher.wait([handles[k] for k in keys])))
    out["status"] = {s.run_id: s for s in launcher.status(list(jobs.values()))}
    out["demo_results"] = demo.wait(demo_handles)
    out["demo_status"] = demo.status(demo.plan())
    yield out
    mp.undo()


def test_sweep_as_arrays_gives_results(drill):
    launcher, jobs, handles = drill["launcher"], drill["jobs"], drill["handles"]
    ids = {size: handles[size].backend_id for size in "ATQICP"}
    array = ids["A"].split("_")[0]
    assert [ids[s] for s in "AQIC"] == [f"{array}_{i}" for i in range(4)] and "_" not in ids["T"] + ids["P"]
    for group, script in drill["scripts"]:  # the dry run is what was submitted
        first = handles[group[0].size].backend_id.split("_")[0]
        assert (launcher.folder / f"{first}_submission.sh").read_text() == script
    assert "#SBATCH --array=0-3%4" in drill["scripts"][0][1] and "#SBATCH --begin=now+3600" in drill["scripts"][2][1]
    result = drill["results"]["A"]
    assert (result.run_id, result.status, result.step) == (jobs["A"].run_id, "FINISHED", STEPS)
    assert loss_steps(launcher.spec, jobs["A"].run_id) == list(range(1, STEPS + 1)) and attempts(jobs["A"]) == [(0, 0)]
    status = drill["status"][jobs["A"].run_id]
    assert (status.slurm_state, status.state, status.step, status.train_loss) == ("completed", "FINISHED", STEPS,
                                                                                 1 / STEPS)
    assert (Path(jobs["A"].workdir) / "logs" / f"slurm-{ids['A']}.out").exists()
    sacct = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", array],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert f"{ids['A']}|COMPLETED" in sacct and f"{ids['C']}|CANCELLED by 0" in sacct
    again = launcher.submit([jobs["A"]])  # a finished job is not submitted again
    assert again[0].skipped and launcher.records.load()[jobs["A"].run_id].job_id == ids["A"]


def demo_overrides(tmp_path: Path) -> dict:
    """sweeps/demo.yaml with tiny steps and evaluation, on the dev cluster, stored in tmp_path."""
    return {"train": {"budget": 4, "batch_size": 16, "eval_every": 2, "ckpt_every": 2, "log_every": 1},
            "evaluation": {"samples": 16, "lambda_step": 2.0},
            "launch": {"backend": "slurm", "cluster": "dev", "workdir": str(tmp_path / "demo-runs"),
                       "resources": {"default": {"mem_gb": 1, "time_min": 10}}},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'demo.db'}"}}


def test_demo_sweep_with_the_built_in_trainer_gives_results(drill):
    demo = drill["demo"]
    jobs = demo.plan()
    results = drill["demo_results"]
    assert [(r.run_id, r.status, r.step) for r in results] == [(j.run_id, "FINISHED", 4) for j in jobs]
    assert all(r.metrics["eval/iw/laplace"] > 0 for r in results)
    records = demo.records.load()
    assert len({records[j.run_id].job_id.split("_")[0] for j in jobs}) == 1  # one array: every size and seed
    status = drill["demo_status"]
    assert [(s.slurm_state, s.state, s.step) for s in status] == [("completed", "FINISHED", 4)] * len(jobs)
    assert [s.loss for s in status] == [r.metrics["eval/iw/laplace"] for r in results]


def resumed_once_or_more(drill, size: str) -> list[tuple[int, int]]:
    job = drill["jobs"][size]
    result = drill["results"]["C2" if size == "C" else size]
    assert (result.status, result.step) == ("FINISHED", STEPS), result
    assert loss_steps(drill["launcher"].spec, job.run_id) == list(range(1, STEPS + 1)), "metrics lost or duplicated"
    tries = attempts(job)
    starts = [step for _, step in tries]  # an attempt killed while starting up resumes from where it began
    assert len(tries) >= 2 and starts[0] == 0 and starts == sorted(starts) and starts[-1] > 0, tries
    return tries


def test_time_limit_checkpoints_requeues_and_finishes(drill):
    tries = resumed_once_or_more(drill, "T")
    assert [restarts for restarts, _ in tries] == list(range(len(tries)))  # requeued as the same SLURM job
    status = drill["status"][drill["jobs"]["T"].run_id]
    assert (status.slurm_state, status.restarts) == ("completed", len(tries) - 1)


def test_scontrol_requeue_resumes(drill):
    tries = resumed_once_or_more(drill, "Q")
    assert drill["status"][drill["jobs"]["Q"].run_id].restarts >= 1 and tries[1][0] == 1


def test_submitit_interrupt_resumes(drill):
    resumed_once_or_more(drill, "I")
    assert drill["status"][drill["jobs"]["I"].run_id].restarts >= 1


def test_cancelled_jobs_are_reported_without_hanging(drill):
    running, pending = drill["cancelled"]
    assert drill["cancel_wait_s"] < 30
    assert running.status == "KILLED" and "cancelled" in running.reason and running.step > 0
    assert pending.status == "KILLED" and pending.step == 0 and attempts(drill["jobs"]["P"]) == []
    status = drill["cancelled_status"]
    assert [(s.slurm_state, s.state) for s in status.values()] == [("cancelled", "KILLED")] * 2
    assert drill["status"][drill["jobs"]["P"].run_id].slurm_state == "cancelled"


def test_resubmit_failed_resumes_from_the_checkpoint(drill):
    tries = resumed_once_or_more(drill, "C")
    record = drill["launcher"].records.load()[drill["jobs"]["C"].run_id]
    assert record.previous == (drill["handles"]["C"].backend_id,) and record.job_id == drill["handles"]["C2"].backend_id
    assert tries[-1][0] == 0  # a new SLURM job, not a requeue


def test_one_task_per_gpu_gets_rank_and_master_from_submitit(drill):
    job, result = drill["jobs"]["D"], drill["results"]["D"]
    assert (result.status, result.step, result.metrics["world_size"]) == ("FINISHED", STEPS, 2.0)
    ranks = [json.loads((Path(job.workdir) / f"rank{r}.json").read_text()) for r in (0, 1)]
    job_id = drill["handles"]["D"].backend_id
    assert [(e["RANK"], e["SLURM_PROCID"], e["WORLD_SIZE"], e["LOCAL_RANK"], e["distributed"]) for e in ranks] == [
        ("0", "0", "2", "0", True), ("1", "1", "2", "1", True)]
    assert {e["MASTER_ADDR"] for e in ranks} == {socket.gethostname()}
    assert {e["MASTER_PORT"] for e in ranks} == {str(master_port(job_id))} and ranks[0]["SLURM_JOB_ID"] == job_id
    assert "#SBATCH --ntasks-per-node=2" in drill["scripts"][3][1]


def test_cli_status_resubmit_and_cancel(drill, capsys):
    from scaling.cli import main

    path, jobs = str(drill["path"]), drill["jobs"]
    assert main(["status", path]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[jobs["A"].run_id][1:3] == ["completed", drill["handles"]["A"].backend_id]
    assert rows[jobs["P"].run_id][1] == "cancelled" and rows[jobs["T"].run_id][3] != "0"
    assert main(["resubmit", path, "--failed"]) == 0  # only P ended without finishing (it waits an hour to start)
    out = capsys.readouterr().out
    new_id = drill["launcher"].records.load()[jobs["P"].run_id].job_id
    assert f"{new_id:<12} {jobs['P'].run_id}" in out
    assert sum(line.startswith("    ") for line in out.splitlines()) == 1
    assert main(["cancel", path]) == 0
    assert capsys.readouterr().out.startswith(f"sweep drill: cancelled SLURM jobs {new_id};")
    deadline = time.monotonic() + 20  # sacct may show the job as pending for a moment after scancel
    while drill["launcher"].status([jobs["P"]])[0].slurm_state != "cancelled":
        assert time.monotonic() < deadline, "a cancelled job was not reported cancelled"
        time.sleep(0.5)
    assert main(["cancel", path]) == 0 and "no queued or running SLURM jobs" in capsys.readouterr().out


def test_sbatch_rejections_name_the_job_and_slurms_message(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = write_sweep(tmp_path, "bad", ["S"], 5, {"default": {"partition": "nope", "time_min": 1}}, cluster=None)
    launcher = SlurmLauncher(load_sweep(path))
    with pytest.raises(LaunchError, match=r"sbatch refused 1 jobs \(bad-S-5steps-s0\) for partition 'nope': "
                                          r".*[Ii]nvalid partition"):
        launcher.submit(launcher.plan())
    path = write_sweep(tmp_path, "huge", ["S"], 5, {"default": {"mem_gb": 100000, "time_min": 1}})
    launcher = SlurmLauncher(load_sweep(path))
    with pytest.raises(LaunchError, match=r"sbatch refused 1 jobs \(huge-S-5steps-s0\).*(not available|memory)"):
        launcher.submit(launcher.plan())
    assert not launcher.records.path.exists() and not list(launcher.folder.glob("*.pkl"))
