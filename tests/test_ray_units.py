"""The Ray backend's pure parts (no Ray started): per-process resources, local CPUs, absolute paths, /proc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scaling.launch.ray import local_cpus, process_resources, ranks
from scaling.launch.ray_session import children, portable
from scaling.launch.ray_worker import send_signal, started
from scaling.plan import plan
from scaling.spec import Resources, parse_sweep
from tests.conftest import tiny_sweep_dict


@pytest.mark.parametrize("res, world, need", [
    (Resources(cpus=4), 1, {"CPU": 4, "GPU": 0, "memory": 0}),
    (Resources(cpus=8, gpus=1, mem_gb=32), 1, {"CPU": 8, "GPU": 1, "memory": 32 * 2**30}),
    (Resources(cpus=8, gpus=8, nodes=2, mem_gb=512), 16, {"CPU": 8, "GPU": 1, "memory": 64 * 2**30}),
    (Resources(cpus=2, gpus=4, tasks_per_node=1), 1, {"CPU": 2, "GPU": 4, "memory": 0}),
    (Resources(cpus=1, tasks_per_node=2), 2, {"CPU": 1, "GPU": 0, "memory": 0}),
])
def test_each_process_asks_for_its_share_of_the_node(res, world, need):
    assert ranks(res) == world
    assert process_resources(res) == need


def test_a_local_ray_gets_max_parallel_jobs_worth_of_cpus():
    data = tiny_sweep_dict()
    data["launch"] = {"max_parallel": 3, "resources": {"default": {"cpus": 2}, "L": {"cpus": 2, "tasks_per_node": 2}}}
    spec = parse_sweep(data)
    assert local_cpus(spec, plan(spec)) == 12  # the largest job (2 ranks x 2 CPUs) three times
    assert local_cpus(spec, plan(spec)[:1]) == 6


def test_portable_makes_every_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tiny_sweep_dict()
    data["data"] = {"source": "npz", "path": "data/x.npz", "image_size": 8}
    data["launch"] = {"workdir": "runs"}
    data["tracking"] = {"uri": "sqlite:///mlflow.db"}
    spec = portable(parse_sweep(data))
    assert spec.launch.workdir == str(tmp_path / "runs")
    assert spec.data.path == str(tmp_path / "data" / "x.npz")
    assert spec.tracking.uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_children_and_signals_find_the_right_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in [p for p, _ in children(os.getpid())]
        when = started(child.pid)
        assert when is not None and when != started(os.getpid())
        assert not send_signal(child.pid, 15, str(int(when) + 1))  # a different process with the same pid: spared
        assert child.poll() is None
        assert send_signal(child.pid, 15, when)
        assert child.wait(10) == -15
        assert not send_signal(child.pid, 15)  # gone
    finally:
        child.kill()
    assert child.pid not in [p for p, _ in children(os.getpid())]  # reaped: no longer listed
