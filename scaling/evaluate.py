"""The importance-weighted loss: a fixed λ grid, a fixed held-out set and fixed noise.

    ℓ(λ_k) = mean over held-out images i and elements of (ε̂(z_ik, λ_k) − ε_ik)²,  z_ik = α_k·x_i + σ_k·ε_ik
    L_iw   = Σ_k w(λ_k)·ℓ(λ_k)·Δλ_k / Σ_k w(λ_k)·Δλ_k          (one value per weighting w)

The noise ε_ik of image i at level k is drawn from its own generator, seeded from (noise_seed, i, k): it is
the same for every model, every evaluation and every batch size, so two models are compared on exactly the
same denoising problems (common random numbers) and an evaluation repeated on the same model gives the
same numbers to float rounding. Usable from any training loop: `denoise_fn(z, λ, y)` is any callable that
returns the network output (ε̂ or v̂, per `prediction`) for z (B, C, H, W), λ (B,) and labels y (B,) or None.

In a data-parallel job every rank can share the work: `Evaluator(..., rank=r, world_size=W)` evaluates the
batches b with b % W == r (the same batches, so the same numbers, as one process) and sums the pair losses
over the ranks with one `all_reduce`; every rank gets the whole result. The evaluation then takes 1/W of
the time, and no rank waits for another.

    result = importance_weighted_loss(model, (x, y), lambda_grid(spec.evaluation), spec.evaluation.weightings,
                                      noise_seed=1234, prediction="eps", batch_size=256)
    result.iw["laplace"], result.per_level   # L_iw per weighting label, ℓ per grid level (K,)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from scaling.diffusion import add_noise, to_eps
from scaling.errors import SpecError
from scaling.spec import EvalSpec, Weighting
from scaling.weightings import as_weighting, iw_from_levels

log = logging.getLogger(__name__)

DenoiseFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
CACHE_LIMIT_BYTES = 512 * 2**20
"""The fixed noise of an `Evaluator` (of its rank's batches) is kept in memory when it takes at most this much;
else it is regenerated at every call."""


def lambda_grid(spec: EvalSpec) -> torch.Tensor:
    """λ_min, λ_min + Δλ, ..., up to λ_max inclusive (float64, (K,))."""
    lo, hi, step = spec.lambda_min, spec.lambda_max, spec.lambda_step
    if step <= 0 or hi <= lo:
        raise SpecError(f"need lambda_min < lambda_max and lambda_step > 0, got {lo}, {hi}, {step}", "evaluation")
    k = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return lo + step * torch.arange(k, dtype=torch.float64)


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser over each value in turn)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


def pair_noise(noise_seed: int, image: int, level: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The fixed noise ε of held-out image `image` at grid level `level` (float32, CPU)."""
    g = torch.Generator().manual_seed(_mix(noise_seed, image, level))
    return torch.randn(shape, generator=g)


@dataclass(frozen=True, eq=False)
class EvalResult:
    """One evaluation: L_iw per weighting label, and ℓ per level of the grid (enough to recompute any w)."""

    iw: Mapping[str, float]
    per_level: np.ndarray
    "ℓ(λ_k), (K,) float64."
    grid: np.ndarray
    "λ_k, (K,) float64."

    def metrics(self) -> dict[str, float]:
        """MLflow keys: `eval/iw/<label>` and `eval/level/<k:03d>`."""
        out = {f"eval/iw/{k}": float(v) for k, v in self.iw.items()}
        out.update({f"eval/level/{k:03d}": float(v) for k, v in enumerate(self.per_level)})
        return out


def _module_of(fn) -> torch.nn.Module | None:
    if isinstance(fn, torch.nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


class Evaluator:
    """Evaluates L_iw of any denoiser on fixed data, grid and noise; the noise is generated once and cached.

    `data` is x (N, C, H, W) or (x, y) with y (N,) labels or None; `weightings` are `Weighting`s or names.
    `batch_size` is the number of (image, level) pairs per call of the denoiser; it does not change the result.
    `rank` and `world_size` share the batches among the ranks of a joined process group (`torch.distributed`);
    every rank must then call the evaluator, and each gets the whole result.
    """

    def __init__(
        self,
        data: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None],
        grid: torch.Tensor | np.ndarray | Iterable[float],
        weightings: Iterable[Weighting | str],
        *,
        noise_seed: int,
        prediction: str = "eps",
        batch_size: int = 256,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        x, y = data if isinstance(data, (tuple, list)) else (data, None)
        if x.dim() != 4:
            raise SpecError(f"held-out images must be (N, C, H, W), got shape {tuple(x.shape)}")
        if y is not None and len(y) != len(x):
            raise SpecError(f"{len(y)} labels for {len(x)} held-out images")
        if batch_size <= 0:
            raise SpecError(f"batch_size must be positive, got {batch_size}", "evaluation.batch_size")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not within world size {world_size}")
        self.x = x.detach().float().cpu()
        self.y = None if y is None else torch.as_tensor(y).long().cpu()
        self.grid = np.asarray(torch.as_tensor(grid, dtype=torch.float64).cpu(), dtype=np.float64)
        if self.grid.ndim != 1 or self.grid.size < 2:
            raise SpecError("the λ grid must be 1-D with at least 2 levels")
        self.weightings = [as_weighting(w) for w in weightings]
        labels = [w.label for w in self.weightings]
        if len(set(labels)) != len(labels):
            raise SpecError(f"weightings repeat: {labels}", "evaluation.weightings")
        self.noise_seed = int(noise_seed)
        self.prediction = prediction
        self.batch_size = int(batch_size)
        self.device = None if device is None else torch.device(device)
        self.rank, self.world_size = int(rank), int(world_size)
        self._noise: dict[int, torch.Tensor] = {}  # this rank's batches' noise, by first pair, when it fits
        self._cache = sum(len(b) for b in self.batches()) * self.x[0].numel() * 4 <= CACHE_LIMIT_BYTES

    @property
    def pairs(self) -> int:
        """Denoiser evaluations per call: images × levels (of all ranks together)."""
        return len(self.x) * len(self.grid)

    def batches(self) -> list[range]:
        """This rank's batches of pairs (level-major pair indices): every `world_size`-th, from `rank`."""
        starts = range(self.rank * self.batch_size, self.pairs, self.world_size * self.batch_size)
        return [range(s, min(s + self.batch_size, self.pairs)) for s in starts]

    def noise(self, levels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The fixed noise of the given (level, image) pairs, (P, C, H, W)."""
        shape = tuple(self.x.shape[1:])
        return torch.stack([pair_noise(self.noise_seed, int(i), int(j), shape) for j, i in zip(levels, images)])

    def _batch_noise(self, batch: range, levels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        eps = self._noise.get(batch.start)
        if eps is None:
            eps = self.noise(levels, images)
            if self._cache:
                self._noise[batch.start] = eps
        return eps

    def __call__(self, denoise_fn: DenoiseFn) -> EvalResult:
        module = _module_of(denoise_fn)
        device = self.device
        if device is None and module is not None:
            device = next((p.device for p in module.parameters()), torch.device("cpu"))
        device = device or torch.device("cpu")
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        try:
            with torch.no_grad():
                per_level = self._pair_losses(denoise_fn, device).mean(1)
        finally:
            if module is not None and was_training:
                module.train()
        if self.rank == 0 and not np.all(np.isfinite(per_level)):  # every rank has the same numbers
            log.warning("non-finite per-level losses at λ = %s", self.grid[~np.isfinite(per_level)])
        iw = {w.label: iw_from_levels(per_level, self.grid, w) for w in self.weightings}
        return EvalResult(iw=iw, per_level=per_level, grid=self.grid.copy())

    def pair_losses(self, denoise_fn: DenoiseFn) -> np.ndarray:
        """mean (ε̂ − ε)² of every (level, image) pair, (K, N) float64 (for noise studies; no mode handling)."""
        with torch.no_grad():
            return self._pair_losses(denoise_fn, self.device or torch.device("cpu"))

    def _pair_losses(self, denoise_fn: DenoiseFn, device: torch.device) -> np.ndarray:
        n, k = len(self.x), len(self.grid)
        if self.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"an Evaluator of world size {self.world_size} needs the job's process group: call "
                               "torch.distributed.init_process_group first, or evaluate with world_size=1")
        grid32 = torch.as_tensor(self.grid, dtype=torch.float32)
        out = torch.zeros(k * n, dtype=torch.float64, device=device)
        for batch in self.batches():
            p = torch.arange(batch.start, batch.stop)
            levels, images = p // n, p % n  # level-major order of the (level, image) pairs
            eps = self._batch_noise(batch, levels, images).to(device)
            x = self.x[images].to(device)
            lam = grid32[levels].to(device)
            y = None if self.y is None else self.y[images].to(device)
            z = add_noise(x, eps, lam)
            eps_hat = to_eps(denoise_fn(z, lam, y).float(), z, lam, self.prediction)
            out[batch.start:batch.stop] = (eps_hat - eps).pow(2).flatten(1).mean(1).double()  # (P,)
        if self.world_size > 1:
            dist.all_reduce(out)  # each pair is non-zero on one rank only: the sum is exact
        return out.cpu().view(k, n).numpy()


def importance_weighted_loss(
    denoise_fn: DenoiseFn,
    data: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None],
    grid: torch.Tensor | np.ndarray | Iterable[float],
    weightings: Iterable[Weighting | str],
    *,
    noise_seed: int,
    prediction: str = "eps",
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> EvalResult:
    """L_iw per weighting and ℓ per level of `denoise_fn` on `data` (see the module docstring).

    Runs under `torch.no_grad()`; an `nn.Module` (or a bound method of one) is put in eval mode and its
    train mode restored afterwards. For repeated evaluations keep an `Evaluator`: it caches the noise.
    """
    return Evaluator(data, grid, weightings, noise_seed=noise_seed, prediction=prediction,
                     batch_size=batch_size, device=device)(denoise_fn)
