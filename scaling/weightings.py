"""Weightings w(λ) over the log-SNR λ, and the importance-weighted loss from per-level losses (numpy only).

λ = log(α²/σ²) is the log signal-to-noise ratio of the variance-preserving process z = α·x + σ·ε.
Every weighting is expressed **on the ε loss**: the objective it stands for is ∫ w(λ)·ℓ(λ) dλ with
ℓ(λ) = E‖ε̂ − ε‖² (per element). A published objective that weights another loss (x or v) at a λ drawn from
some density is converted with ‖x̂ − x‖² = e^−λ·‖ε̂ − ε‖² and, for a density q over λ, w = q·(loss factor)
(Kingma & Gao 2023, "Understanding diffusion objectives as the ELBO with simple data augmentation").

Formulas (parameters and defaults in `scaling.spec.WEIGHTINGS`; N(λ; m, s²) is the normal density):

    laplace       exp(−|λ−μ|/b) / 2b                                   Hang & Gu 2024 (μ=0, b=0.5)
    uniform       1 / (hi−lo) on [lo, hi], 0 outside                    flat in λ
    min_snr       min(1, γ·e^−λ)   (not integrable: left unnormalised)  Hang et al. 2023 (γ=5): the x-loss
                  weight min(SNR, γ) divided by SNR = e^λ
    edm           N(λ; −2·P_mean, (2·P_std)²) · (e^−λ + σ_d²)/σ_d² / Z  Karras et al. 2022: ln σ ~ N(P_mean, P_std²)
                  Z = 1 + exp(2·P_mean + 2·P_std²)/σ_d²                with σ = e^−λ/2 (VE noise level), loss
                                                                        weight (σ²+σ_d²)/(σ·σ_d)² on the x loss
    logit_normal  N(λ; −2m, (2s)²) · (1 + e^−λ/2)² / Z                  Esser et al. 2024 (SD3, m=0, s=1): rectified
                  Z = 1 + 2·exp(m + s²/2) + exp(2m + 2s²)               flow z = (1−t)x + tε, logit t ~ N(m, s²), so
                                                                        λ = −2·logit t; unweighted v = ε − x loss:
                                                                        ‖v̂−v‖² = (1 + e^−λ/2)²·‖ε̂−ε‖²
    cosine        sech(λ/2) / 2π                                        Nichol & Dhariwal 2021: t ~ U(0,1) with
                                                                        ᾱ = cos²(πt/2), i.e. λ = −2·log tan(πt/2),
                                                                        unweighted ε loss (untruncated)

All but `min_snr` are normalised to unit mass over ℝ (Z computed in closed form above), so they are the
density of λ under which the objective is an expectation. The λ *densities* of the training samplers
(`sampler_log_density`) are the same for laplace, uniform and cosine; for edm and logit_normal the sampler
draws λ from the normal N(−2·P_mean, (2·P_std)²) resp. N(−2m, (2s)²), and the remaining factor is the loss
weight w/p (so `diffusion.sampler: edm` alone trains with EDM's objective).

The importance-weighted loss over a λ grid with cell widths Δλ_k:
    L_iw = Σ_k w(λ_k)·ℓ(λ_k)·Δλ_k / Σ_k w(λ_k)·Δλ_k
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from scaling.errors import SpecError
from scaling.spec import SAMPLERS, WEIGHTINGS, Weighting

LOG_2PI = math.log(2.0 * math.pi)
INTEGRABLE = ("laplace", "uniform", "edm", "logit_normal", "cosine")
"""Weightings with finite mass (normalised to 1); `min_snr` is constant as λ → −∞ and stays unnormalised."""


def _params(w: Weighting) -> Mapping[str, float]:
    if w.name not in WEIGHTINGS:
        raise SpecError(f"unknown weighting {w.name!r}; valid: {', '.join(WEIGHTINGS)}")
    return {**WEIGHTINGS[w.name], **dict(w.params)}


def as_weighting(w: Weighting | str | Mapping[str, Any]) -> Weighting:
    """A `Weighting` from itself, a name (`'edm'`) or a mapping (`{'name': 'laplace', 'b': 1}`)."""
    return w if isinstance(w, Weighting) else Weighting.from_yaml(w, "weighting")


def _log_normal_pdf(lam: np.ndarray, mean: float, std: float) -> np.ndarray:
    return -0.5 * ((lam - mean) / std) ** 2 - math.log(std) - 0.5 * LOG_2PI


def _log_sech_half(lam: np.ndarray) -> np.ndarray:
    """log sech(λ/2) = −|λ|/2 + log 2 − log(1 + e^−|λ|), stable for any λ."""
    a = np.abs(lam)
    return -a / 2 + math.log(2.0) - np.log1p(np.exp(-a))


def edm_normalizer(p_mean: float, p_std: float, sigma_data: float) -> float:
    """Z = ∫ N(λ; −2P_mean, 4P_std²)·(e^−λ + σ_d²)/σ_d² dλ = 1 + E[e^−λ]/σ_d², E[e^−λ] = exp(2P_mean + 2P_std²)."""
    return 1.0 + math.exp(2 * p_mean + 2 * p_std**2) / sigma_data**2


def logit_normal_normalizer(m: float, s: float) -> float:
    """Z = E[(1 + e^−λ/2)²] for λ ~ N(−2m, 4s²) = 1 + 2·exp(m + s²/2) + exp(2m + 2s²)."""
    return 1.0 + 2 * math.exp(m + s**2 / 2) + math.exp(2 * m + 2 * s**2)


def sampler_log_density(w: Weighting, lam: np.ndarray) -> np.ndarray:
    """log p(λ) of the training sampler named by `w` (a proper density over ℝ), float64."""
    lam = np.asarray(lam, dtype=np.float64)
    p = _params(w)
    if w.name not in SAMPLERS:
        raise SpecError(f"{w.name!r} cannot be sampled; valid samplers: {', '.join(SAMPLERS)}")
    if w.name == "edm":
        return _log_normal_pdf(lam, -2 * p["p_mean"], 2 * p["p_std"])
    if w.name == "logit_normal":
        return _log_normal_pdf(lam, -2 * p["m"], 2 * p["s"])
    return log_weight_np(w, lam)  # laplace, uniform, cosine: the weighting is the density


def log_weight_np(w: Weighting, lam: np.ndarray) -> np.ndarray:
    """log w(λ), float64 (−inf where w is 0). See the module docstring for each formula."""
    lam = np.asarray(lam, dtype=np.float64)
    p = _params(w)
    name = w.name
    if name == "laplace":
        b = p["b"]
        if b <= 0:
            raise SpecError(f"laplace b must be positive, got {b}")
        return -np.abs(lam - p["mu"]) / b - math.log(2 * b)
    if name == "uniform":
        lo, hi = p["lo"], p["hi"]
        if hi <= lo:
            raise SpecError(f"uniform needs lo < hi, got lo={lo}, hi={hi}")
        inside = (lam >= lo) & (lam <= hi)
        return np.where(inside, -math.log(hi - lo), -np.inf)
    if name == "min_snr":
        gamma = p["gamma"]
        if gamma <= 0:
            raise SpecError(f"min_snr gamma must be positive, got {gamma}")
        return np.minimum(0.0, math.log(gamma) - lam)
    if name == "edm":
        sd = p["sigma_data"]
        if p["p_std"] <= 0 or sd <= 0:
            raise SpecError(f"edm needs p_std > 0 and sigma_data > 0, got {dict(p)}")
        factor = np.logaddexp(-lam, 2 * math.log(sd)) - 2 * math.log(sd)  # log((e^−λ + σ_d²)/σ_d²)
        z = edm_normalizer(p["p_mean"], p["p_std"], sd)
        return _log_normal_pdf(lam, -2 * p["p_mean"], 2 * p["p_std"]) + factor - math.log(z)
    if name == "logit_normal":
        if p["s"] <= 0:
            raise SpecError(f"logit_normal s must be positive, got {p['s']}")
        factor = 2 * np.logaddexp(0.0, -lam / 2)  # log((1 + e^−λ/2)²)
        z = logit_normal_normalizer(p["m"], p["s"])
        return _log_normal_pdf(lam, -2 * p["m"], 2 * p["s"]) + factor - math.log(z)
    if name == "cosine":
        return _log_sech_half(lam) - math.log(2 * math.pi)
    raise SpecError(f"unknown weighting {name!r}; valid: {', '.join(WEIGHTINGS)}")


def weight_np(w: Weighting | str, lam: np.ndarray) -> np.ndarray:
    """w(λ) as float64 numpy (the formula of the module docstring)."""
    return np.exp(log_weight_np(as_weighting(w), lam))


def grid_deltas(grid: np.ndarray) -> np.ndarray:
    """Cell widths Δλ_k of a sorted grid: half the distance to each neighbour (equal to the step on a regular grid)."""
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.size < 2 or np.any(np.diff(g) <= 0):
        raise SpecError("a λ grid must be 1-D, increasing, with at least 2 points")
    edges = np.concatenate([[g[0] - (g[1] - g[0]) / 2], (g[1:] + g[:-1]) / 2, [g[-1] + (g[-1] - g[-2]) / 2]])
    return np.diff(edges)


def iw_from_levels(per_level: np.ndarray, grid: np.ndarray, w: Weighting | str) -> float:
    """L_iw = Σ w(λ_k)·ℓ_k·Δλ_k / Σ w(λ_k)·Δλ_k from per-level losses (e.g. logged `eval/level/*`)."""
    per_level = np.asarray(per_level, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    if per_level.shape != grid.shape:
        raise SpecError(f"{per_level.size} per-level losses for a grid of {grid.size} levels")
    mass = weight_np(w, grid) * grid_deltas(grid)
    total = mass.sum()
    if not total > 0:
        raise SpecError(f"weighting {as_weighting(w).label!r} has no mass on the grid [{grid[0]}, {grid[-1]}]")
    return float((mass * per_level).sum() / total)
