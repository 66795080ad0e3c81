"""The planner: deterministic run ids, budgets, per-size resources and learning rates."""

from __future__ import annotations

import pytest

from scaling.errors import SpecError
from scaling.plan import plan
from scaling.sizes import param_count
from scaling.spec import Resources, load_sweep, parse_sweep

from .conftest import REPO, tiny_sweep_dict


def test_replanning_gives_the_same_ids():
    spec = load_sweep(REPO / "sweeps" / "demo.yaml")
    first, second = plan(spec), plan(load_sweep(REPO / "sweeps" / "demo.yaml"))
    assert [j.run_id for j in first] == [j.run_id for j in second]
    assert first == second
    assert [j.run_id for j in first] == [f"demo-{s}-{first[0].budget.label}-s{seed}"
                                         for s in ("S", "M", "L", "XL") for seed in spec.seeds_for(s)]
    assert [len(spec.seeds_for(s)) for s in ("S", "M", "L", "XL")] == [4, 4, 2, 2]


def test_micro_batch_per_size_over_the_sweeps():
    data = tiny_sweep_dict()
    assert {j.micro_batch_size for j in plan(parse_sweep(data))} == {None}  # default: the whole share at once
    data["train"]["micro_batch_size"] = 4
    data["model"]["sizes"]["L"]["micro_batch_size"] = 2
    jobs = plan(parse_sweep(data))
    assert [(j.size, j.micro_batch_size, j.batch_size) for j in jobs] == [("S", 4, 8), ("M", 4, 8), ("L", 2, 8)]
    data["train"]["micro_batch_size"] = 16  # larger than the batch: one pass, not an error
    assert plan(parse_sweep(data))[0].micro_batch_size == 16


def test_seeds_per_size_with_a_default_and_their_errors():
    data = tiny_sweep_dict()
    data["train"]["seeds"] = {"default": [0], "S": [0, 1, 2]}
    jobs = plan(parse_sweep(data))
    assert [(j.size, j.seed) for j in jobs] == [("S", 0), ("S", 1), ("S", 2), ("M", 0), ("L", 0)]
    assert "tiny-S-" in jobs[2].run_id and jobs[2].run_id.endswith("-s2")
    bad = {
        "train.seeds: no seeds for size M; list it or add default: [0]": {"S": [0], "L": [1]},
        "train.seeds.Q: unknown size 'Q'; valid: default, S, M, L": {"default": [0], "Q": [1]},
        "train.seeds.S: seeds repeat: [2, 2]": {"default": [0], "S": [2, 2]},
        "train.seeds.default: at least one seed is needed": {"default": []},
        "train.seeds.default[0]: expected an integer, got 'a'": {"default": ["a"]},
        "train.seeds: seeds repeat: [1, 1]": [1, 1],
    }
    for message, seeds in bad.items():
        data["train"]["seeds"] = seeds
        with pytest.raises(SpecError) as e:
            parse_sweep(data)
        assert message in str(e.value), (seeds, str(e.value))


def test_ids_cover_sizes_budgets_and_seeds():
    data = tiny_sweep_dict()
    data["train"].update(budget=[6, "2xC"], seeds=[0, 1])
    jobs = plan(parse_sweep(data))
    assert len(jobs) == 3 * 2 * 2
    assert len({j.run_id for j in jobs}) == len(jobs)
    assert "tiny-M-2xC-s1" in {j.run_id for j in jobs}


def test_compute_budget_steps():
    data = tiny_sweep_dict()
    data["train"].update(budget="2xC", tokens_per_param=20, batch_size=8)
    spec = parse_sweep(data)
    for job in plan(spec):
        params = param_count(spec.model.sizes[job.size], spec.model, spec.data)
        tokens = 2 * 20 * params
        assert job.steps == -(-tokens // (8 * job.tokens_per_sample))  # ceil
        assert job.steps * 8 * job.tokens_per_sample >= tokens


def test_flops_budget_is_equal_compute():
    data = tiny_sweep_dict()
    data["train"].update(budget="1e12flops")
    jobs = plan(parse_sweep(data))
    for job in jobs:
        assert job.total_flops == pytest.approx(1e12, rel=job.flops_per_step / 1e12 + 1e-9)
    assert jobs[0].steps > jobs[-1].steps  # the smallest size trains longest


def test_per_size_resources_and_profile():
    data = tiny_sweep_dict()
    data["launch"] = {"resources": {"default": {"gpus": 1, "mem_gb": 8}, "L": {"gpus": 4, "nodes": 2}}}
    spec = parse_sweep(data)
    profile = Resources(partition="gpu", time_min=120, gpus=8)
    by_size = {j.size: j.resources for j in plan(spec, profile)}
    assert (by_size["S"].gpus, by_size["S"].nodes, by_size["S"].mem_gb) == (1, 1, 8)
    assert (by_size["L"].gpus, by_size["L"].nodes) == (4, 2)
    assert by_size["L"].partition == "gpu" and by_size["S"].time_min == 120  # from the profile


def test_learning_rates_per_size_and_mup():
    data = tiny_sweep_dict()
    data["model"]["sizes"]["M"]["lr"] = 5e-4
    data["train"]["optimizer"] = {"lr": 1e-3, "lr_scale": "mup", "base_width": 16}
    lrs = {j.size: j.lr for j in plan(parse_sweep(data))}
    assert lrs["S"] == pytest.approx(1e-3)  # width 16 = base width
    assert lrs["M"] == pytest.approx(5e-4)  # its own lr wins
    assert lrs["L"] == pytest.approx(1e-3 * 16 / 32)
