"""Variance-preserving diffusion in log-SNR λ: forward process, ε/v targets, λ samplers, weightings, loss.

    α² = sigmoid(λ), σ² = sigmoid(−λ), z = α·x + σ·ε,  v = α·ε − σ·x  (so ε = σ·z + α·v, x = α·z − σ·v)

The training loss is always measured on ε (whatever the network predicts, its output is converted to ε̂),
so that it is an unbiased, single-sample estimate of the objective ∫ w(λ)·ℓ(λ) dλ (w normalised to unit
mass) whose grid version `scaling.evaluate` reports as L_iw:

    loss = mean_i  r(λ_i) · mean‖ε̂_i − ε_i‖²,   λ_i ~ p,   r = w / p

where p is the sampler's density and w the target weighting (`DiffusionSpec.weighting`, default: the
sampler's own weighting), of unit mass as `scaling.weightings` defines it (`min_snr`, which has no finite
mass, is used as is: the loss then estimates ∫ min(1, γe^−λ)·ℓ(λ) dλ).
For laplace, uniform and cosine the sampler's own weighting is its density, so r = 1; for edm and
logit_normal r is the published loss weight (see `scaling.weightings`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from scaling.errors import SpecError
from scaling.spec import SAMPLERS, DiffusionSpec, Weighting
from scaling.weightings import _params, as_weighting, log_weight_np, sampler_log_density, weight_np

PREDICTIONS = ("eps", "v")


def _expand(lam: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """λ of shape (B,) -> (B, 1, 1, ...) broadcastable against `like` (B, ...)."""
    lam = torch.as_tensor(lam, device=like.device)
    return lam.reshape(lam.shape + (1,) * (like.dim() - lam.dim())).to(like.dtype)


def alpha_sigma(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, σ) with α² = sigmoid(λ), σ² = sigmoid(−λ); α² + σ² = 1."""
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def add_noise(x: torch.Tensor, eps: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """z = α·x + σ·ε; x, ε (B, ...), λ (B,)."""
    alpha, sigma = alpha_sigma(_expand(lam, x))
    return alpha * x + sigma * eps


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise SpecError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def target(x: torch.Tensor, eps: torch.Tensor, lam: torch.Tensor, prediction: str) -> torch.Tensor:
    """What the network should output: ε, or v = α·ε − σ·x."""
    _check_prediction(prediction)
    if prediction == "eps":
        return eps
    alpha, sigma = alpha_sigma(_expand(lam, x))
    return alpha * eps - sigma * x


def to_eps(pred: torch.Tensor, z: torch.Tensor, lam: torch.Tensor, prediction: str) -> torch.Tensor:
    """ε̂ from the network output: ε̂ = pred (eps) or σ·z + α·v̂ (v)."""
    _check_prediction(prediction)
    if prediction == "eps":
        return pred
    alpha, sigma = alpha_sigma(_expand(lam, z))
    return sigma * z + alpha * pred


def to_x(pred: torch.Tensor, z: torch.Tensor, lam: torch.Tensor, prediction: str) -> torch.Tensor:
    """x̂ from the network output: (z − σ·ε̂)/α (eps) or α·z − σ·v̂ (v)."""
    _check_prediction(prediction)
    alpha, sigma = alpha_sigma(_expand(lam, z))
    if prediction == "eps":
        return (z - sigma * pred) / alpha
    return alpha * z - sigma * pred


def weight(w: Weighting | str, lam: torch.Tensor) -> torch.Tensor:
    """w(λ) (formulas in `scaling.weightings`), computed in float64 and returned like `lam`."""
    lam_t = torch.as_tensor(lam)
    out = weight_np(as_weighting(w), lam_t.detach().cpu().double().numpy())
    return torch.from_numpy(out).to(device=lam_t.device, dtype=lam_t.dtype if lam_t.is_floating_point() else None)


def log_weight(w: Weighting | str, lam: torch.Tensor) -> torch.Tensor:
    """log w(λ) (float64, on the device of `lam`)."""
    lam_t = torch.as_tensor(lam)
    return torch.from_numpy(log_weight_np(as_weighting(w), lam_t.detach().cpu().double().numpy())).to(lam_t.device)


@dataclass(frozen=True)
class Sampler:
    """Draws training λ from a density p over ℝ (`.sample(n, generator)`) and evaluates `.log_prob(λ)`."""

    w: Weighting

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n values of λ (float32, on the generator's device), by inverse CDF or a normal draw."""
        device = generator.device if generator is not None else torch.device("cpu")
        p, name = _params(self.w), self.w.name
        if name in ("edm", "logit_normal"):
            mean, std = (-2 * p["p_mean"], 2 * p["p_std"]) if name == "edm" else (-2 * p["m"], 2 * p["s"])
            return (mean + std * torch.randn(n, generator=generator, device=device, dtype=torch.float64)).float()
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        tiny = 1e-12
        u = u.clamp(tiny, 1 - tiny)
        if name == "laplace":
            c = u - 0.5  # inverse CDF of Laplace(μ, b)
            lam = p["mu"] - p["b"] * torch.sign(c) * torch.log1p(-2 * c.abs())
        elif name == "uniform":
            lam = p["lo"] + (p["hi"] - p["lo"]) * u
        elif name == "cosine":
            lam = -2 * torch.log(torch.tan(math.pi * u / 2))  # t ~ U(0,1), ᾱ = cos²(πt/2)
        else:  # pragma: no cover - guarded by sampler()
            raise SpecError(f"{name!r} cannot be sampled; valid samplers: {', '.join(SAMPLERS)}")
        return lam.float()

    def log_prob(self, lam: torch.Tensor) -> torch.Tensor:
        """log p(λ), float64 on the device of `lam`."""
        lam_t = torch.as_tensor(lam)
        out = sampler_log_density(self.w, lam_t.detach().cpu().double().numpy())
        return torch.from_numpy(out).to(lam_t.device)


def sampler(w: Weighting | str) -> Sampler:
    """The training λ sampler named by `w` (one of `scaling.spec.SAMPLERS`)."""
    w = as_weighting(w)
    if w.name not in SAMPLERS:
        raise SpecError(f"{w.name!r} cannot be sampled; valid samplers: {', '.join(SAMPLERS)}", "diffusion.sampler")
    _params(w)
    sampler_log_density(w, np.zeros(1))  # validates the parameters now rather than mid-training
    return Sampler(w)


def importance_ratio(spec: DiffusionSpec, lam: torch.Tensor) -> torch.Tensor | None:
    """r(λ) = w(λ)/p(λ) for the spec's sampler p and target w (already of unit mass); None when r ≡ 1."""
    target_w = spec.weighting or spec.sampler
    if target_w.name in ("laplace", "uniform", "cosine") and target_w == spec.sampler:
        return None
    log_r = log_weight(target_w, lam) - sampler(spec.sampler).log_prob(lam)
    return torch.exp(log_r)


def sample_noise(
    x: torch.Tensor, generator: torch.Generator | None, spec: DiffusionSpec, *, rank: int = 0, world_size: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ (B,), ε like x) for this rank's slice of a global batch of B·world_size samples.

    The global draw is the same for any world size, so data-parallel ranks together use exactly the noise
    a single process would use for the whole global batch. Generated on the generator's device, moved to x's.
    """
    if not 0 <= rank < world_size:
        raise SpecError(f"rank {rank} is not in [0, {world_size})")
    b = x.shape[0]
    lam = sampler(spec.sampler).sample(b * world_size, generator)
    device = generator.device if generator is not None else torch.device("cpu")
    eps = torch.randn((b * world_size, *x.shape[1:]), generator=generator, device=device, dtype=torch.float32)
    sl = slice(rank * b, (rank + 1) * b)
    return lam[sl].to(x.device), eps[sl].to(device=x.device, dtype=x.dtype)


def per_sample_loss(model, x, y, lam, eps, prediction: str) -> torch.Tensor:
    """mean‖ε̂ − ε‖² per sample (B,), float32, for given λ and ε."""
    z = add_noise(x, eps, lam)
    pred = model(z, lam, y)
    eps_hat = to_eps(pred.float(), z.float(), lam, prediction)
    return (eps_hat - eps.float()).pow(2).flatten(1).mean(1)


def training_loss(
    model,
    x: torch.Tensor,
    y: torch.Tensor | None,
    generator: torch.Generator | None,
    spec: DiffusionSpec,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Scalar training loss of one (local) batch: mean_i r(λ_i)·mean‖ε̂_i − ε_i‖², λ_i from the sampler.

    `model(z, λ, y)` returns ε̂ or v̂ per `spec.prediction`. With `rank`/`world_size` the noise is this rank's
    slice of the global batch's noise (see `sample_noise`); averaging the ranks' losses (as DDP does with the
    gradients) gives the single-process loss of the global batch.
    """
    lam, eps = sample_noise(x, generator, spec, rank=rank, world_size=world_size)
    return weighted_losses(model, x, y, lam, eps, spec).mean()


def weighted_losses(model, x: torch.Tensor, y: torch.Tensor | None, lam: torch.Tensor, eps: torch.Tensor,
                    spec: DiffusionSpec) -> torch.Tensor:
    """r(λ_i)·mean‖ε̂_i − ε_i‖² per sample (B,) for given λ and ε: the terms whose mean is `training_loss`.

    For gradient accumulation: draw λ and ε of the whole (local) batch with `sample_noise`, then sum this over
    micro-batches divided by the batch size."""
    losses = per_sample_loss(model, x, y, lam, eps, spec.prediction)
    ratio = importance_ratio(spec, lam)
    return losses if ratio is None else losses * ratio.to(losses)
