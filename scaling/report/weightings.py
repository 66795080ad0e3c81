"""The importance weightings w(λ) in numpy, to draw them next to the per-level losses.

The report must not import torch, so these are the formulas of issue #3 written once more with numpy
(log-SNR λ = log(α²/σ²), variance preserving). Only the shape matters for the figure: each curve is
drawn scaled to a maximum of 1.

| name | formula | source |
|---|---|---|
| `laplace` | exp(−|λ−μ|/b) / 2b, μ = 0, b = 0.5 | Hang & Gu 2024, "Improved noise schedule for diffusion training" |
| `uniform` | 1/(hi−lo) on [lo, hi] | flat in λ |
| `min_snr` | min(1, γ·e^−λ), γ = 5 (on the ε loss) | Hang et al. 2023 (min-SNR weighting strategy) |
| `edm` | p(λ)·(e^−λ + σ_d²)/σ_d², ln σ ~ N(P_mean, P_std²), σ = e^(−λ/2) | Karras et al. 2022 (EDM) |
| `logit_normal` | density of λ = −2·logit(t), logit(t) ~ N(m, s²) | Esser et al. 2024 (SD3) |
| `cosine` | sech(λ/2) / 2π, the λ density of the cosine schedule | Nichol & Dhariwal 2021 |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from scaling.errors import ReportError
from scaling.spec import WEIGHTINGS


def _normal_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2.0 * math.pi))


def laplace(lam: np.ndarray, mu: float = 0.0, b: float = 0.5) -> np.ndarray:
    return np.exp(-np.abs(lam - mu) / b) / (2.0 * b)


def uniform(lam: np.ndarray, lo: float = -10.0, hi: float = 10.0) -> np.ndarray:
    return np.where((lam >= lo) & (lam <= hi), 1.0 / (hi - lo), 0.0)


def min_snr(lam: np.ndarray, gamma: float = 5.0) -> np.ndarray:
    return np.minimum(1.0, gamma * np.exp(-lam))


def edm(lam: np.ndarray, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5) -> np.ndarray:
    density = 0.5 * _normal_pdf(-lam / 2.0, p_mean, p_std)  # ln σ = −λ/2, |d ln σ / dλ| = 1/2
    return density * (np.exp(-lam) + sigma_data**2) / sigma_data**2


def logit_normal(lam: np.ndarray, m: float = 0.0, s: float = 1.0) -> np.ndarray:
    return 0.5 * _normal_pdf(-lam / 2.0, m, s)  # logit(t) = −λ/2 for rectified flow


def cosine(lam: np.ndarray) -> np.ndarray:
    return 1.0 / (2.0 * math.pi * np.cosh(lam / 2.0))


FORMULAS: dict[str, Callable[..., np.ndarray]] = {
    "laplace": laplace, "uniform": uniform, "min_snr": min_snr, "edm": edm,
    "logit_normal": logit_normal, "cosine": cosine,
}


def parse_label(label: str) -> tuple[str, dict[str, float]]:
    """`laplace` -> ('laplace', defaults); `laplace_b1` -> ('laplace', {mu: 0, b: 1}) (see `Weighting.label`)."""
    for name in sorted(WEIGHTINGS, key=len, reverse=True):
        if label != name and not label.startswith(name + "_"):
            continue
        params = dict(WEIGHTINGS[name])
        rest = label[len(name) + 1:]
        for part in filter(None, rest.split("_")):
            key = next((k for k in sorted(params, key=len, reverse=True) if part.startswith(k)), None)
            try:
                if key is None:
                    raise ValueError(part)
                params[key] = float(part[len(key):])
            except ValueError:
                raise ReportError(f"cannot read weighting parameters from {label!r}: {part!r} is not "
                                  f"<parameter><number> with a parameter of {name!r} ({', '.join(params) or 'none'})"
                                  ) from None
        return name, params
    raise ReportError(f"unknown weighting {label!r} in the table; known: {', '.join(WEIGHTINGS)}")


def weight(label: str, lam: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
    """w(λ) of the weighting named `label` (a column suffix of `eval/iw/<label>`) on the grid `lam`."""
    name, parsed = parse_label(label)
    return FORMULAS[name](np.asarray(lam, dtype=float), **(dict(params) if params is not None else parsed))
