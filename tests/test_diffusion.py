"""Forward process, ε/v conversions, λ samplers and the unbiased importance-weighted training loss."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from scaling import diffusion
from scaling.errors import SpecError
from scaling.models import build_model
from scaling.spec import SAMPLERS, DiffusionSpec, ModelSpec, SizeSpec, Weighting
from scaling.weightings import sampler_log_density, weight_np


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine more threads only wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def W(name, **params):
    return Weighting.from_yaml({"name": name, **params}, "test")


def test_alpha_sigma_and_round_trips():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(16, 3, 4, 4, generator=g, dtype=torch.float64)
    lam = torch.linspace(-12, 12, 16, dtype=torch.float64)
    alpha, sigma = diffusion.alpha_sigma(lam)
    assert alpha**2 + sigma**2 == pytest.approx(torch.ones(16, dtype=torch.float64), abs=1e-12)
    assert torch.log(alpha**2 / sigma**2) == pytest.approx(lam, abs=1e-9)
    z = diffusion.add_noise(x, eps, lam)
    assert torch.allclose(z, alpha[:, None, None, None] * x + sigma[:, None, None, None] * eps)
    v = diffusion.target(x, eps, lam, "v")
    assert torch.allclose(v, alpha[:, None, None, None] * eps - sigma[:, None, None, None] * x)
    assert torch.allclose(diffusion.to_eps(v, z, lam, "v"), eps, atol=1e-12)
    assert torch.allclose(diffusion.to_x(v, z, lam, "v"), x, atol=1e-12)
    assert torch.equal(diffusion.to_eps(eps, z, lam, "eps"), eps)
    mid = lam.abs() < 8  # (z − σε)/α loses precision where α → 0
    assert torch.allclose(diffusion.to_x(eps, z, lam, "eps")[mid], x[mid], atol=1e-9)
    with pytest.raises(SpecError, match="valid: eps, v"):
        diffusion.target(x, eps, lam, "x0")


def test_weight_wraps_numpy_formulas():
    lam = torch.linspace(-10, 10, 41)
    for name in ("laplace", "uniform", "min_snr", "edm", "logit_normal", "cosine"):
        assert diffusion.weight(W(name), lam).numpy() == pytest.approx(weight_np(W(name), lam.numpy()), rel=1e-6)


@pytest.mark.parametrize("name", SAMPLERS)
def test_samplers_follow_their_density(name):
    w = W(name)
    s = diffusion.sampler(w)
    lam = s.sample(20_000, torch.Generator().manual_seed(1)).double().numpy()
    assert lam.dtype == np.float64 and np.all(np.isfinite(lam))
    fine = np.linspace(-60, 60, 240_001)
    cdf = integrate.cumulative_trapezoid(np.exp(sampler_log_density(w, fine)), fine, initial=0)
    result = stats.kstest(lam, lambda v: np.interp(v, fine, cdf))
    assert result.pvalue > 1e-3, result
    assert s.log_prob(torch.tensor([0.5])).item() == pytest.approx(sampler_log_density(w, np.array([0.5]))[0])


def test_sampler_is_reproducible_and_rejects_weightings_without_density():
    s = diffusion.sampler("laplace")
    a = s.sample(100, torch.Generator().manual_seed(3))
    assert torch.equal(a, s.sample(100, torch.Generator().manual_seed(3)))
    with pytest.raises(SpecError, match="cannot be sampled"):
        diffusion.sampler("min_snr")


def quad_objective(w, ell):
    return integrate.quad(lambda lam: weight_np(w, lam) * ell(lam), -60, 60, limit=400, points=[-4, 0, 3])[0]


@pytest.mark.parametrize("sampler,target", [
    ("cosine", "laplace"), ("cosine", "edm"), ("uniform", "logit_normal"), ("edm", None), ("logit_normal", None),
    ("laplace", None), ("cosine", "min_snr"),
])
def test_training_loss_is_unbiased(sampler, target):
    """With x = 0 and the denoiser ε̂ = z = σε, the per-level loss is exactly ℓ(λ) = (σ(λ) − 1)² in expectation:
    the training loss must average to ∫ w(λ)·ℓ(λ) dλ for the target weighting w."""
    spec = DiffusionSpec(sampler=W(sampler), weighting=None if target is None else W(target))
    w = spec.weighting or spec.sampler
    expected = quad_objective(w, lambda lam: (math.sqrt(1 / (1 + math.exp(lam))) - 1) ** 2)
    x = torch.zeros(5000, 1, 2, 2)
    g = torch.Generator().manual_seed(7)
    losses = torch.stack([diffusion.training_loss(lambda z, lam, y: z, x, None, g, spec) for _ in range(20)])
    mean, se = losses.mean().item(), losses.std().item() / math.sqrt(len(losses))
    assert abs(mean - expected) < 4 * se + 1e-3 * expected, (mean, expected, se)


def test_importance_ratio():
    lam = torch.linspace(-5, 5, 11)
    assert diffusion.importance_ratio(DiffusionSpec(), lam) is None
    r = diffusion.importance_ratio(DiffusionSpec(sampler=W("edm")), lam)
    z = 1 + math.exp(-2.4 + 2.88) / 0.25
    assert r.numpy() == pytest.approx(((torch.exp(-lam.double()) + 0.25) / 0.25 / z).numpy(), rel=1e-9)
    r = diffusion.importance_ratio(DiffusionSpec(sampler=W("uniform"), weighting=W("laplace")), lam)
    assert r.numpy() == pytest.approx(weight_np("laplace", lam.numpy()) * 20, rel=1e-9)


def test_data_parallel_noise_is_a_slice_of_the_global_draw():
    spec = DiffusionSpec()
    x = torch.zeros(8, 1, 4, 4)
    lam, eps = diffusion.sample_noise(x, torch.Generator().manual_seed(5), spec)
    parts = [diffusion.sample_noise(x[:4], torch.Generator().manual_seed(5), spec, rank=r, world_size=2)
             for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), lam)
    assert torch.equal(torch.cat([p[1] for p in parts]), eps)
    model = build_model(SizeSpec(depth=1, width=16, heads=2), ModelSpec(sizes={}), 4, 1)
    torch.nn.init.normal_(model.out.weight, std=0.1)
    xs = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    full = diffusion.training_loss(model, xs, None, torch.Generator().manual_seed(5), DiffusionSpec(prediction="v"))
    halves = [diffusion.training_loss(model, xs[4 * r:4 * r + 4], None, torch.Generator().manual_seed(5),
                                      DiffusionSpec(prediction="v"), rank=r, world_size=2) for r in range(2)]
    assert (halves[0] + halves[1]).item() / 2 == pytest.approx(full.item(), rel=1e-5)


def test_training_loss_trains_a_dit():
    torch.manual_seed(0)
    model = build_model(SizeSpec(depth=1, width=16, heads=2), ModelSpec(sizes={}), 4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x = torch.sign(torch.randn(1, 1, 4, 4, generator=g)).expand(32, -1, -1, -1)  # one image: learnable
    spec = DiffusionSpec(prediction="v")
    losses = []
    for _ in range(40):
        loss = diffusion.training_loss(model, x, None, g, spec)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
