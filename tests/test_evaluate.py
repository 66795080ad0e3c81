"""The importance-weighted loss: grid, fixed noise, determinism over batch sizes, formula, model modes."""

import numpy as np
import pytest
import torch

from scaling import diffusion
from scaling.data import heldout
from scaling.errors import SpecError
from scaling.evaluate import EvalResult, Evaluator, importance_weighted_loss, lambda_grid, pair_noise
from scaling.models import build_model
from scaling.spec import DataSpec, EvalSpec, ModelSpec, SizeSpec
from scaling.weightings import weight_np

WEIGHTINGS = ("laplace", "uniform", "min_snr", "edm", "logit_normal", "cosine")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return heldout(DataSpec(image_size=8), 6)


def small_dit(seed=0, num_classes=0):
    torch.manual_seed(seed)
    model = build_model(SizeSpec(depth=2, width=32, heads=2), ModelSpec(sizes={}, num_classes=num_classes), 8, 1)
    for p in model.parameters():  # leave adaLN-Zero's identity start: a model that does something
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_lambda_grid():
    grid = lambda_grid(EvalSpec())
    assert len(grid) == 81 and grid[0] == -10 and grid[-1] == 10
    assert torch.allclose(torch.diff(grid), torch.full((80,), 0.25, dtype=torch.float64))
    assert len(lambda_grid(EvalSpec(lambda_min=-1, lambda_max=1, lambda_step=0.1))) == 21
    assert lambda_grid(EvalSpec(lambda_min=0, lambda_max=1, lambda_step=0.3)).tolist() == pytest.approx([0, .3, .6, .9])


def test_same_numbers_on_any_batch_size_and_every_call(data):
    model = small_dit()
    grid = torch.linspace(-8, 8, 9, dtype=torch.float64)
    results = [importance_weighted_loss(model, data, grid, WEIGHTINGS, noise_seed=3, batch_size=bs)
               for bs in (1, 7, 54, 1000)]
    again = importance_weighted_loss(model, data, grid, WEIGHTINGS, noise_seed=3, batch_size=7)
    for r in results[1:] + [again]:
        assert np.allclose(r.per_level, results[0].per_level, rtol=1e-6, atol=0)
        for name in WEIGHTINGS:
            assert r.iw[name] == pytest.approx(results[0].iw[name], rel=1e-6, abs=0)
    pairs = Evaluator(data, grid, WEIGHTINGS, noise_seed=3, batch_size=5).pair_losses(model)
    assert pairs.shape == (9, 6) and np.allclose(pairs.mean(1), results[0].per_level, rtol=1e-6, atol=0)
    other = importance_weighted_loss(model, data, grid, WEIGHTINGS, noise_seed=4, batch_size=7)
    assert not np.allclose(other.per_level, results[0].per_level)


def test_per_level_loss_matches_a_direct_computation(data):
    """ε-model ε̂ = z: ℓ(λ) = mean over images and elements of (α·x + (σ−1)·ε)² with the fixed noise."""
    x, _ = data
    grid = torch.tensor([-4.0, 0.0, 2.0, 6.0], dtype=torch.float64)
    result = importance_weighted_loss(lambda z, lam, y: z, x, grid, ["laplace", "edm"], noise_seed=11)
    expected = []
    for k, lam in enumerate(grid.float()):
        alpha, sigma = diffusion.alpha_sigma(lam)
        eps = torch.stack([pair_noise(11, i, k, tuple(x.shape[1:])) for i in range(len(x))])
        expected.append((alpha * x + (sigma - 1) * eps).pow(2).mean().item())
    assert result.per_level == pytest.approx(np.array(expected), rel=1e-6)
    w = weight_np("edm", grid.numpy()) * np.array([4.0, 3.0, 3.0, 4.0])  # w(λ_k)·Δλ_k on this uneven grid
    assert result.iw["edm"] == pytest.approx((w * result.per_level).sum() / w.sum(), rel=1e-12)
    assert isinstance(result, EvalResult) and result.grid.tolist() == grid.tolist()


def test_v_and_eps_models_of_the_same_denoiser_agree(data):
    model = small_dit(1)
    grid = torch.linspace(-6, 6, 5, dtype=torch.float64)

    def as_v(z, lam, y):  # the same denoiser, reporting v̂ = (ε̂ − σ·z)/α
        alpha, sigma = diffusion.alpha_sigma(lam[:, None, None, None])
        return (model(z, lam, y) - sigma * z) / alpha

    eps_result = importance_weighted_loss(model, data, grid, ["laplace"], noise_seed=2)
    v_result = importance_weighted_loss(as_v, data, grid, ["laplace"], noise_seed=2, prediction="v")
    assert v_result.per_level == pytest.approx(eps_result.per_level, rel=1e-4)


def test_model_mode_and_grad_are_restored(data):
    model = small_dit(num_classes=5)
    model.train()
    seen = []

    def probe(z, lam, y):
        seen.append((model.training, torch.is_grad_enabled(), None if y is None else y.clone()))
        return model(z, lam, y)

    Evaluator(data, [-1.0, 1.0], ["laplace"], noise_seed=0)(model.forward)
    assert model.training
    Evaluator(data, [-1.0, 1.0], ["laplace"], noise_seed=0)(probe)
    assert seen and not any(grad for _, grad, _ in seen)
    assert torch.equal(torch.cat([y for _, _, y in seen])[:6], data[1])  # labels follow their images


def test_evaluator_caches_noise_that_equals_the_per_pair_noise(data, monkeypatch):
    x, _ = data
    model = small_dit()
    ev = Evaluator(x, [-2.0, 0.0, 2.0], ["laplace"], noise_seed=9, batch_size=4)
    assert torch.equal(ev.noise(torch.tensor([2, 0]), torch.tensor([5, 1]))[0], pair_noise(9, 5, 2, (1, 8, 8)))
    first = ev(model)
    assert sorted(ev._noise) == list(range(0, 18, 4))  # every batch's noise, kept
    assert torch.equal(ev._noise[16], ev.noise(torch.tensor([2, 2]), torch.tensor([4, 5])))  # pairs 16, 17
    monkeypatch.setattr("scaling.evaluate.CACHE_LIMIT_BYTES", 0)
    fresh = Evaluator(x, [-2.0, 0.0, 2.0], ["laplace"], noise_seed=9, batch_size=4)
    assert np.array_equal(fresh(model).per_level, first.per_level) and not fresh._noise
    assert np.array_equal(ev(model).per_level, first.per_level)  # from the cache: the same numbers
    assert ev.pairs == 18


def test_ranks_take_every_other_batch(data):
    x, _ = data
    shards = [Evaluator(x, [-2.0, 0.0, 2.0], ["laplace"], noise_seed=9, batch_size=4, rank=r, world_size=3)
              for r in range(3)]
    assert [[(b.start, b.stop) for b in e.batches()] for e in shards] == [[(0, 4), (12, 16)], [(4, 8), (16, 18)],
                                                                         [(8, 12)]]
    one = Evaluator(x, [-2.0, 0.0, 2.0], ["laplace"], noise_seed=9, batch_size=4).batches()
    assert sorted(p for e in shards for b in e.batches() for p in b) == [p for b in one for p in b]
    idle = Evaluator(x, [-2.0, 0.0, 2.0], ["laplace"], noise_seed=9, batch_size=4, rank=5, world_size=6)
    assert idle.batches() == []  # more ranks than batches: this one only joins the all-reduce
    with pytest.raises(RuntimeError, match="process group"):  # a shard alone would miss the other pairs
        shards[1](small_dit())
    with pytest.raises(ValueError, match="rank 3 is not within world size 3"):
        Evaluator(x, [0.0, 1.0], ["laplace"], noise_seed=0, rank=3, world_size=3)


def _evaluate_as_rank(rank: int, world_size: int, port: int, out: str) -> None:
    """One rank of `test_ranks_share_the_evaluation...`: its result and the pairs its model saw."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model, seen = small_dit(), []

        def probe(z, lam, y):
            seen.append(len(z))
            return model(z, lam, y)

        x = heldout(DataSpec(image_size=8), 6)
        result = Evaluator(x, torch.linspace(-8, 8, 9, dtype=torch.float64), WEIGHTINGS, noise_seed=3,
                           batch_size=7, rank=rank, world_size=world_size)(probe)
        torch.save({"per_level": result.per_level, "iw": dict(result.iw), "seen": sum(seen)}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_share_the_evaluation_and_each_gets_the_one_process_result(data, tmp_path):
    """Two gloo ranks evaluate every other batch and all-reduce: the same numbers, bit for bit, as one process."""
    import torch.multiprocessing as mp

    from tests.mlflow_server import free_port

    mp.spawn(_evaluate_as_rank, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2)]
    one = Evaluator(data, torch.linspace(-8, 8, 9, dtype=torch.float64), WEIGHTINGS, noise_seed=3,
                    batch_size=7)(small_dit())
    assert [r["seen"] for r in ranks] == [28, 26]  # 54 pairs in 8 batches of 7 (the last of 5): 4 each
    for r in ranks:
        assert np.array_equal(r["per_level"], one.per_level)
        assert r["iw"] == dict(one.iw)


def test_metrics_keys():
    r = EvalResult(iw={"laplace": 0.5}, per_level=np.array([1.0, 2.0]), grid=np.array([0.0, 1.0]))
    assert r.metrics() == {"eval/iw/laplace": 0.5, "eval/level/000": 1.0, "eval/level/001": 2.0}


def test_bad_input(data):
    x, y = data
    with pytest.raises(SpecError, match="repeat"):
        Evaluator(x, [0.0, 1.0], ["laplace", "laplace"], noise_seed=0)
    with pytest.raises(SpecError, match=r"\(N, C, H, W\)"):
        Evaluator(x[0], [0.0, 1.0], ["laplace"], noise_seed=0)
    with pytest.raises(SpecError, match="labels"):
        Evaluator((x, y[:2]), [0.0, 1.0], ["laplace"], noise_seed=0)
