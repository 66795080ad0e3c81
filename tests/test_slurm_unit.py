"""The SLURM backend without a cluster: profiles, resource mapping, arrays, sbatch text (golden file),
sacct/squeue parsing (with fake commands on the PATH), job records and the errors that name the fix."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from scaling.errors import LaunchError, SpecError
from scaling.launch import slurm_queue
from scaling.launch.profiles import extra_options, load_profile, parse_profile, sbatch_parameters
from scaling.launch.slurm import SlurmLauncher, master_port
from scaling.launch.slurm_queue import JobRecord, JobRecords, expand_ids, query, word_of
from scaling.spec import Resources, load_sweep, parse_sweep

from .conftest import REPO, tiny_sweep_dict

DATA = REPO / "tests" / "data"
GOLDEN = DATA / "golden" / "slurm_multigpu.sbatch"


@pytest.fixture
def gpu_profiles(monkeypatch):
    monkeypatch.setenv("SCALING_SLURM_PROFILES", str(DATA / "slurm"))


def gpu_sweep(tmp_path: Path) -> Path:
    data = tiny_sweep_dict(name="big")
    data["launch"] = {"backend": "slurm", "cluster": "gpu-cluster", "workdir": "/shared/runs", "max_requeues": 7,
                      "resources": {"default": {"gpus": 8}, "S": {"gpus": 2, "time_min": 240},
                                    "L": {"nodes": 2, "partition": "preempt", "qos": None}}}
    data["train"]["seeds"] = [0, 1, 2]
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_shipped_profiles_load():
    dev, example = load_profile("dev"), load_profile("example")
    assert dev.partitions == ("debug",) and dev.defaults.partition == "debug"
    assert example.gpu_type == "a100" and example.defaults.gpus == 8
    assert example.defaults.extra_sbatch == ("--exclusive",)


@pytest.mark.parametrize("data, path, words", [
    ({"partitions": ["gpu"], "defualts": {}}, "defualts", "valid keys: description, partitions"),
    ({"defaults": {"gpus": "eight"}}, "defaults.gpus", "expected an integer"),
    ({"partitions": ["gpu"], "defaults": {"partition": "cpu"}}, "defaults.partition", "not among partitions"),
    ({"defaults": {"cpus": 0}}, "defaults.cpus", "must be positive"),
    ({"signal_delay_s": -1}, "signal_delay_s", "0 or more"),
    ({"partitions": ["a b"]}, "partitions[0]", "not allowed"),
])
def test_bad_profiles_name_the_key(data, path, words):
    with pytest.raises(SpecError) as e:
        parse_profile(data, "x", "slurm/x.yaml")
    assert e.value.path == path and words in str(e.value) and "slurm/x.yaml" in str(e.value)


def test_unknown_profile_lists_the_known_ones(tmp_path):
    with pytest.raises(SpecError, match=r"no cluster profile 'nope'.*profiles found: .*dev.*example"):
        load_profile("nope", tmp_path / "sweep.yaml")


def test_one_task_per_gpu_and_sbatch_options():
    profile = parse_profile({"gpu_type": "h100", "signal_delay_s": 90, "setup": ["module load cuda"]})
    res = Resources(gpus=4, nodes=2, cpus=8, mem_gb=1.5, time_min=30, partition="gpu", account="a", qos="q",
                    constraint="80gb", array_parallelism=3, extra_sbatch=("--exclusive", "#SBATCH --reservation=r1"))
    params = sbatch_parameters(res, profile, "job", "launch.resources.S")
    assert params == {"job_name": "job", "time": 30, "nodes": 2, "ntasks_per_node": 4, "cpus_per_task": 8,
                      "signal_delay_s": 90, "mem": "1536M", "gpus_per_node": "h100:4", "partition": "gpu",
                      "account": "a", "qos": "q", "constraint": "80gb", "array_parallelism": 3,
                      "setup": ["module load cuda"],
                      "additional_parameters": {"exclusive": True, "reservation": "r1"}}
    cpu = sbatch_parameters(Resources(gpus=0, tasks_per_node=3, mem_gb=2), parse_profile({}), "j", "x")
    assert cpu["ntasks_per_node"] == 3 and cpu["mem"] == "2G" and "gpus_per_node" not in cpu


def test_bad_extra_sbatch_line_names_it():
    with pytest.raises(SpecError) as e:
        extra_options(["--exclusive", "-N 2"], "launch.resources.XL")
    assert e.value.path == "launch.resources.XL.extra_sbatch[1]"


def test_master_port_is_per_job():
    assert master_port("123") == master_port("123") != master_port("124")
    assert 20000 <= master_port("98765") < 40000


def test_arrays_group_by_resources_and_split(tmp_path, gpu_profiles):
    launcher = SlurmLauncher(load_sweep(gpu_sweep(tmp_path)))
    groups = launcher.groups(launcher.plan())
    assert [(r.gpus, r.nodes, r.partition, [j.run_id for j in g]) for r, g in groups] == [
        (2, 1, "gpu", [f"big-S-6steps-s{i}" for i in range(3)]),
        (8, 1, "gpu", [f"big-M-6steps-s{i}" for i in range(3)]),
        (8, 2, "preempt", [f"big-L-6steps-s{i}" for i in range(3)]),
    ]
    small = SlurmLauncher(load_sweep(gpu_sweep(tmp_path)))
    object.__setattr__(small, "profile", parse_profile({"max_array_size": 2}))
    assert [len(g) for _, g in small.groups(small.plan())] == [2, 1, 2, 1, 2, 1]


def test_multigpu_sbatch_text_matches_golden_file(tmp_path, gpu_profiles):
    launcher = SlurmLauncher(load_sweep(gpu_sweep(tmp_path)))
    scripts = launcher.render(launcher.plan())
    text = "\n".join(f"# {', '.join(j.run_id for j in group)}\n{script}" for group, script in scripts)
    if os.environ.get("SCALING_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "sbatch text changed: check it, then SCALING_UPDATE_GOLDEN=1 pytest ..."
    assert "#SBATCH --gpus-per-node=h100:8" in text and "#SBATCH --ntasks-per-node=8" in text
    assert "#SBATCH --nodes=2" in text and "#SBATCH --array=0-2%3" in text


def test_partition_outside_the_profile_is_refused_before_submission(tmp_path, gpu_profiles):
    path = gpu_sweep(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["launch"]["resources"]["M"] = {"partition": "cpu"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    launcher = SlurmLauncher(load_sweep(path))
    with pytest.raises(SpecError) as e:
        launcher.submit(launcher.plan())
    assert e.value.path == "launch.resources.M.partition"
    assert "big-M-6steps-s0" in str(e.value) and "valid: gpu, preempt" in str(e.value)


def test_missing_sbatch_names_the_jobs(tmp_path, monkeypatch):
    data = tiny_sweep_dict(launch={"backend": "slurm", "workdir": str(tmp_path / "runs")})
    launcher = SlurmLauncher(parse_sweep(data))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LaunchError, match=r"sbatch is not on the PATH, so 3 jobs \(tiny-S-6steps-s0, "):
        launcher.submit(launcher.plan())


def test_state_words_and_array_ids():
    assert expand_ids("12_[0-2,5%4]") == ["12_0", "12_1", "12_2", "12_5"]
    assert expand_ids("12_3") == ["12_3"] and expand_ids("12") == ["12"]
    assert [word_of(s) for s in ("PENDING", "RUNNING", "COMPLETED", "CANCELLED by 0", "TIMEOUT", "OUT_OF_MEMORY",
                                 "NODE_FAIL", "CD", "CA", "weird")] == [
        "pending", "running", "completed", "cancelled", "timeout", "failed", "failed", "completed", "cancelled",
        "unknown"]
    assert word_of("PENDING", restarts=1) == "requeued"


def fake_command(folder: Path, name: str, stdout: str, code: int = 0, stderr: str = "") -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\necho \"$@\" >> {folder}/{name}.calls\nprintf '%s' '{stdout}'\n"
                    f"printf '%s' '{stderr}' >&2\nexit {code}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_query_reads_sacct_and_counts_requeues(tmp_path, monkeypatch):
    fake_command(tmp_path, "sacct", "7_0|REQUEUED|0:0|2026-01-01T00:00:01\n"
                                    "7_0|COMPLETED|0:0|2026-01-01T00:00:09\n"
                                    "7_[1-2%1]|PENDING|0:0|2026-01-01T00:00:01\n"
                                    "8|CANCELLED by 0|0:15|2026-01-01T00:00:02\n")
    fake_command(tmp_path, "squeue", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    states = query(["7_0", "7_1", "7_2", "8"])
    assert {j: (s.word, s.restarts) for j, s in states.items()} == {
        "7_0": ("completed", 1), "7_1": ("pending", 0), "7_2": ("pending", 0), "8": ("cancelled", 0)}
    assert "-j 7,8" in (tmp_path / "sacct.calls").read_text()


def test_query_without_accounting_uses_squeue_and_never_waits_on_vanished_jobs(tmp_path, monkeypatch):
    fake_command(tmp_path, "sacct", "", 1, "sacct: error: Slurm accounting storage is disabled")
    fake_command(tmp_path, "squeue", "9_0|RUNNING|None\n9_1|PENDING|Priority\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    states = query(["9_0", "9_1", "9_2"])
    assert [(s.word, s.done) for s in states.values()] == [("running", False), ("pending", False), ("unknown", False)]


def test_requeued_job_that_left_the_queue_is_done(tmp_path, monkeypatch):
    fake_command(tmp_path, "sacct", "5|PREEMPTED|0:15|2026-01-01T00:00:01\n")
    fake_command(tmp_path, "squeue", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert query(["5"])["5"].word == "cancelled"
    fake_command(tmp_path, "squeue", "5|PENDING|BeginTime\n")
    assert (query(["5"])["5"].word, query(["5"])["5"].restarts) == ("requeued", 1)


def test_missing_sacct_and_squeue_is_a_launch_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match="squeue` is not on the PATH"):
        query(["1"])
    with pytest.raises(LaunchError, match="scancel` is not on the PATH"):
        slurm_queue.scancel(["1"])


def test_records_keep_earlier_job_ids(tmp_path):
    records = JobRecords(tmp_path / "slurm_jobs.json")
    records.add([JobRecord("a", "5_0", "/f", "dev", 1.0), JobRecord("b", "5_1", "/f", "dev", 1.0)])
    records.add([JobRecord("a", "9", "/f", "dev", 2.0)])
    loaded = records.load()
    assert loaded["a"].job_id == "9" and loaded["a"].previous == ("5_0",) and loaded["b"].job_id == "5_1"
    assert json.loads((tmp_path / "slurm_jobs.json").read_text())["format"] == 1
    (tmp_path / "slurm_jobs.json").write_text("{broken")
    with pytest.raises(LaunchError, match="unreadable"):
        records.load()


def test_cli_dry_run_prints_the_sbatch_text(tmp_path, gpu_profiles, capsys):
    from scaling.cli import main

    assert main(["submit", str(gpu_sweep(tmp_path)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 3 and "# --- array of 3 jobs: big-L-6steps-s0" in out
    assert "--cluster" not in out and not (Path("/shared/runs")).exists()
    assert main(["submit", str(gpu_sweep(tmp_path)), "--dry-run", "--cluster", "nope"]) == 2


FINISHED_THEN_WARNED = """
import os, signal, sys, time
from types import SimpleNamespace
import scaling.launch.slurm as slurm
from scaling.launch.slurm import SlurmRunner
from scaling.spec import parse_sweep
from tests.conftest import tiny_sweep_dict

slurm.STOP_GRACE_S = 0  # a KILLED job waits this long for SLURM's kill or requeue
signal.signal(signal.SIGUSR2, lambda *_: sys.exit(3))  # as submitit's handler: requeue, then exit
spec = parse_sweep(tiny_sweep_dict())
runner = SlurmRunner(spec, None, lambda spec, job: lambda: SimpleNamespace(status=sys.argv[1]))
result = runner()
print(result.status, signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN, flush=True)
os.kill(os.getpid(), signal.SIGUSR2)  # the time-limit warning, after the job has finished
time.sleep(0.2)
"""


def test_a_time_limit_warning_after_the_job_finished_neither_requeues_nor_kills_it(tmp_path):
    """SLURM sends USR2 `--signal` seconds before the limit; a job that finishes just before it must exit 0 (a
    CI run recorded FAILED, exit 12, for a job whose result was FINISHED: the signal came during shutdown)."""
    import subprocess
    import sys

    env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "SUBMITIT_FOLDER": str(tmp_path), "SLURM_JOB_ID": "42",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0", "PYTHONPATH": str(REPO)}
    env.pop("SLURM_JOB_NODELIST", None)
    done = subprocess.run([sys.executable, "-c", FINISHED_THEN_WARNED, "FINISHED"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.split()) == (0, ["FINISHED", "True"]), done.stderr
    # a job stopped by a signal (KILLED) keeps submitit's handler: the USR2 that follows requeues it
    killed = subprocess.run([sys.executable, "-c", FINISHED_THEN_WARNED, "KILLED"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert (killed.returncode, killed.stdout.split()) == (3, ["KILLED", "False"]), killed.stderr
