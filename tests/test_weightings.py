"""Weighting formulas: values at points, unit mass, and the EDM / SD3 conversions checked from their sources."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from scaling.errors import SpecError
from scaling.spec import SAMPLERS, WEIGHTINGS, Weighting
from scaling.weightings import (
    INTEGRABLE,
    grid_deltas,
    iw_from_levels,
    log_weight_np,
    sampler_log_density,
    weight_np,
)


def W(name, **params):
    return Weighting.from_yaml({"name": name, **params}, "test")


def mass(fn, lo=-80.0, hi=80.0):
    return integrate.quad(fn, lo, hi, limit=500, points=[-4, 0, 2.4, 4])[0]


@pytest.mark.parametrize("name", INTEGRABLE)
@pytest.mark.parametrize("params", [{}, "other"])
def test_integrable_weightings_have_unit_mass(name, params):
    other = {"laplace": {"mu": 1.0, "b": 2.0}, "uniform": {"lo": -3.0, "hi": 5.0}, "cosine": {},
             "edm": {"p_mean": -0.5, "p_std": 0.8, "sigma_data": 1.0}, "logit_normal": {"m": 0.5, "s": 0.7}}
    w = W(name, **(other[name] if params == "other" else {}))
    assert mass(lambda lam: weight_np(w, lam)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_densities_have_unit_mass(name):
    w = W(name)
    assert mass(lambda lam: np.exp(sampler_log_density(w, lam))) == pytest.approx(1.0, abs=1e-6)


def test_formulas_at_points():
    assert weight_np("laplace", 0.0) == pytest.approx(1.0)  # 1 / (2b), b = 0.5
    assert weight_np("laplace", 1.0) == pytest.approx(math.exp(-2.0))
    assert weight_np(W("laplace", mu=1, b=2), -1.0) == pytest.approx(math.exp(-1.0) / 4)
    assert weight_np("uniform", np.array([-10.0, 0.0, 10.0, 10.5])).tolist() == pytest.approx([0.05, 0.05, 0.05, 0])
    assert weight_np("min_snr", np.array([-3.0, math.log(5.0), 3.0])) == pytest.approx([1.0, 1.0, 5 * math.exp(-3)])
    assert weight_np("cosine", 0.0) == pytest.approx(1 / (2 * math.pi))
    assert weight_np("cosine", 4.0) == pytest.approx(1 / (2 * math.pi * math.cosh(2.0)))
    lam = np.array([-6.0, -1.0, 0.0, 2.4, 7.0])
    z_edm = 1 + math.exp(2 * -1.2 + 2 * 1.2**2) / 0.25
    edm = stats.norm.pdf(lam, 2.4, 2.4) * (np.exp(-lam) + 0.25) / 0.25 / z_edm
    assert weight_np("edm", lam) == pytest.approx(edm, rel=1e-12)
    z_ln = 1 + 2 * math.exp(0.5) + math.exp(2.0)
    ln = stats.norm.pdf(lam, 0, 2) * (1 + np.exp(-lam / 2)) ** 2 / z_ln
    assert weight_np("logit_normal", lam) == pytest.approx(ln, rel=1e-12)


def test_log_weights_are_finite_far_out():
    lam = np.array([-200.0, 200.0])
    for name in ("laplace", "min_snr", "edm", "logit_normal", "cosine"):
        assert np.all(np.isfinite(log_weight_np(W(name), lam))), name


def change_of_variables(density_of_u, u_of_lam, du_dlam, eps_factor):
    """w(λ) ∝ p_u(u(λ))·|du/dλ|·(ε-loss factor), normalised numerically: independent of the closed forms."""
    def raw(lam):
        return density_of_u(u_of_lam(lam)) * np.abs(du_dlam(lam)) * eps_factor(lam)
    z = mass(raw, -40.0, 40.0)  # beyond ±40 the weightings have no mass and t(λ) rounds to 0 or 1
    return lambda lam: raw(lam) / z


def test_edm_weighting_from_its_source():
    """Karras et al.: ln σ ~ N(P_mean, P_std²), loss weight (σ²+σ_d²)/(σσ_d)² on ‖D−x‖² = σ²‖ε̂−ε‖², σ² = e^−λ."""
    w = change_of_variables(lambda u: stats.norm.pdf(u, -1.2, 1.2), lambda lam: -lam / 2, lambda lam: -0.5,
                            lambda lam: (np.exp(-lam) + 0.25) / 0.25)
    lam = np.linspace(-12, 12, 97)
    assert weight_np("edm", lam) == pytest.approx(w(lam), rel=1e-6)
    p = Weighting.from_yaml({"name": "edm", "p_mean": 0.3, "p_std": 0.5, "sigma_data": 2.0}, "t")
    w = change_of_variables(lambda u: stats.norm.pdf(u, 0.3, 0.5), lambda lam: -lam / 2, lambda lam: -0.5,
                            lambda lam: (np.exp(-lam) + 4.0) / 4.0)
    assert weight_np(p, lam) == pytest.approx(w(lam), rel=1e-6)


def test_logit_normal_weighting_from_its_source():
    """SD3: z = (1−t)x + tε, logit t ~ N(0, 1), unweighted ‖v̂ − v‖² with v = ε − x."""
    # change of variables t = sigmoid(−λ/2): π(t)·|dt/dλ|·(1 − t)^−2 with π the logit-normal density
    sig = lambda u: 1 / (1 + np.exp(-u))  # noqa: E731
    w = change_of_variables(lambda t: stats.norm.pdf(np.log(t / (1 - t))) / (t * (1 - t)), lambda lam: sig(-lam / 2),
                            lambda lam: -sig(-lam / 2) * sig(lam / 2) / 2, lambda lam: 1 / sig(lam / 2) ** 2)
    lam = np.linspace(-12, 12, 97)
    assert weight_np("logit_normal", lam) == pytest.approx(w(lam), rel=1e-6)


def test_cosine_density_from_its_schedule():
    t = (np.arange(1_000_000) + 0.5) / 1_000_000
    lam = -2 * np.log(np.tan(np.pi * t / 2))
    hist, edges = np.histogram(lam, bins=40, range=(-10, 10))
    centres = (edges[1:] + edges[:-1]) / 2
    assert hist / len(lam) / np.diff(edges) == pytest.approx(weight_np("cosine", centres), rel=0.02)


def test_iw_from_levels():
    grid = np.linspace(-10, 10, 81)
    assert grid_deltas(grid) == pytest.approx(np.full(81, 0.25))
    levels = np.cos(grid) + 2
    w = weight_np("edm", grid)
    assert iw_from_levels(levels, grid, "edm") == pytest.approx((w * levels).sum() / w.sum())
    assert iw_from_levels(np.full(81, 3.0), grid, "min_snr") == pytest.approx(3.0)
    uneven = np.array([0.0, 1.0, 3.0])
    assert grid_deltas(uneven) == pytest.approx([1.0, 1.5, 2.0])
    with pytest.raises(SpecError, match="no mass"):
        iw_from_levels(np.ones(3), np.array([20.0, 21.0, 22.0]), W("uniform"))
    with pytest.raises(SpecError, match="per-level"):
        iw_from_levels(np.ones(3), grid, "laplace")


def test_bad_parameters_are_named():
    with pytest.raises(SpecError, match="b must be positive"):
        weight_np(W("laplace", b=0), 0.0)
    with pytest.raises(SpecError, match="valid"):
        weight_np("nope", 0.0)
    assert set(WEIGHTINGS) == set(INTEGRABLE) | {"min_snr"}


def test_weightings_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, scaling.weightings; assert 'torch' not in sys.modules and 'mlflow' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
