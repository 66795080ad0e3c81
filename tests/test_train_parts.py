"""Checkpoint store, RNG state, dist_env, stop signals and the LR schedule (no training)."""

from __future__ import annotations

import fractions
import os
import pickle
import random
import signal

import numpy as np
import pytest
import torch

from scaling.errors import TrainError
from scaling.spec import ScheduleSpec
from scaling.train import JobRunner, dist_env, lr_at
from scaling.train.checkpoint import CheckpointStore, rng_state, set_rng_state
from scaling.train.dist import first_host
from scaling.train.signals import StopSignals
from tests.train_fixtures import tiny


def _state(step: int) -> dict:
    return {"step": step, "w": torch.full((64,), float(step)), "meta": {"name": "x", "list": [1, 2.5, None]}}


def test_checkpoint_roundtrip_and_keeps_last_two(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    for step in (10, 20, 30):
        store.save(_state(step), step, finished=step == 30)
    assert store.steps() == [30, 20]
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["step-20.json", "step-20.pt", "step-30.json", "step-30.pt"]
    info, state = store.load_latest()
    assert info.step == 30 and info.finished
    assert torch.equal(state["w"], torch.full((64,), 30.0)) and state["meta"]["list"] == [1, 2.5, None]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "no_sidecar"])
def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, damage):
    store = CheckpointStore(tmp_path)
    store.save(_state(1), 1)
    info = store.save(_state(2), 2)
    data = info.path.read_bytes()
    if damage == "truncate":
        info.path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        info.path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "garbage":
        (tmp_path / "step-2.json").write_text('{"step": 2, "bytes": 5, "sha256": "ab"}')
        info.path.write_bytes(b"hello")
    else:  # a crash between the checkpoint and its sidecar
        (tmp_path / "step-2.json").unlink()
    found = store.load_latest()
    assert found is not None
    assert found[0].step == 1 and torch.equal(found[1]["w"], torch.full((64,), 1.0))
    if damage != "no_sidecar":
        assert (tmp_path / "step-2.pt.corrupt").exists()  # kept for inspection, out of the way
    store.save(_state(3), 3)  # training goes on: 1 and 3 are the two kept
    assert store.steps() == [3, 1]


def test_checkpoint_refuses_pickled_objects(tmp_path):
    """Checkpoints load with weights_only=True: an arbitrary pickled object is treated as corrupt."""
    store = CheckpointStore(tmp_path)
    store.save(_state(1), 1)
    store.save({"evil": fractions.Fraction(1, 3)}, 2)  # any class outside the allow-list
    info, _ = store.load_latest()
    assert info.step == 1


def test_no_checkpoint(tmp_path):
    assert CheckpointStore(tmp_path / "missing").load_latest() is None


def test_rng_state_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(4)
    saved = rng_state({"g": g})
    CheckpointStore(tmp_path).save({"rng": saved}, 1)
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    g.manual_seed(99)
    set_rng_state(CheckpointStore(tmp_path).load_latest()[1]["rng"], {"g": g})
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2] and torch.equal(first[3], again[3])


def test_dist_env_sources():
    assert dist_env({}).world_size == 1
    torchrun = dist_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.master_addr, torchrun.master_port) == (
        3, 8, 1, "n1", 1234)
    slurm = dist_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_JOB_ID": "4242",
                      "SLURM_JOB_NODELIST": "gpu[07-08,11],cpu1"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.master_addr, slurm.master_port) == (
        5, 16, 5, "gpu07", 24242)
    with_master = dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "MASTER_ADDR": "head", "MASTER_PORT": "9"})
    assert (with_master.master_addr, with_master.master_port) == ("head", 9)
    with pytest.raises(TrainError, match="rank 4 is not within world size 2"):
        dist_env({"RANK": "4", "WORLD_SIZE": "2"})
    with pytest.raises(TrainError, match="not an integer"):
        dist_env({"RANK": "x", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("nodelist,host", [("node1", "node1"), ("a[1-3]", "a1"), ("gpu[010,012]", "gpu010"),
                                           ("x-y[5],z", "x-y5")])
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


def test_stop_signals_set_a_flag_and_chain():
    calls = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        with StopSignals() as stop:
            assert not stop.requested
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.requested and stop.name == "SIGUSR1" and calls == []  # only the flag is set
            assert stop.chain() is True
            assert calls == [signal.SIGUSR1]
        assert signal.getsignal(signal.SIGUSR1) is not stop._handler  # restored
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_ctrl_c_is_not_chained():
    """Python's own SIGINT handler raises KeyboardInterrupt: the trainer saves and returns instead."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # an earlier test (Ray) may have replaced it
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested
            assert stop.chain() is False
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_lr_schedule_is_a_pure_function_of_the_step():
    cos = ScheduleSpec("cosine", warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, 110, 1.0, cos) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 50 / 99)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    lin = ScheduleSpec("linear", warmup_steps=0, min_lr_ratio=0.0)
    assert [lr_at(s, 5, 2.0, lin) for s in range(5)] == pytest.approx([2.0, 1.5, 1.0, 0.5, 0.0])
    assert lr_at(1000, 5, 2.0, ScheduleSpec("constant")) == 2.0


def test_runner_pickles_with_plain_pickle(tmp_path):
    spec, job = tiny(tmp_path)
    runner = pickle.loads(pickle.dumps(JobRunner(spec, job, track=False)))
    assert runner.spec == spec and runner.job == job and runner.track is False
    again = runner.checkpoint("any", key=1)
    assert isinstance(again, JobRunner) and again.job == job and again is not runner
