"""The size registry: exact parameter counts and training FLOPs of each size, without building a model.

Parameter count (DiT family; D = width, r = mlp_ratio, p = patch, C = channels, C' = output channels,
F = frequency_dim, K = classes, depth blocks):

    x_embed   C·p²·D + D                 λ embed   F·D + D + D² + D          class embed (K+1)·D if K > 0
    block     qkv 3D²+3D, proj D²+D, mlp r·D²+r·D + r·D²+D, adaLN 6D²+6D   = (10+2r)·D² + (11+r)·D
    final     adaLN 2D²+2D, linear D·p²·C' + p²·C'

It equals `sum(p.numel() for p in build_model(...).parameters())` (tested for every shipped size).

Training FLOPs per sample = 3 × forward (backward ≈ 2 × forward), forward = 2 × multiply-accumulates of the
matrix products, with T = (image_size / p)² tokens:

    forward MACs = T·C·p²·D + F·D + D² + depth·(T·(4 + 2r)·D² + 2·T²·D + 6·D²) + 2·D² + T·D·p²·C'

(the 2·T²·D term is attention: Q·Kᵀ and A·V). Element-wise operations (norms, activations, softmax)
are left out; they are a few percent at these sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from scaling.spec import DataSpec, ModelSpec, SizeSpec


@dataclass(frozen=True)
class SizeInfo:
    """What the planner needs to know about one size."""

    name: str
    params: int
    "Exact trainable parameters."
    tokens: int
    "Tokens (patches) per image."
    flops_per_sample: float
    "Training FLOPs (forward + backward) per image."


def tokens_per_sample(size: SizeSpec, data: DataSpec) -> int:
    return (data.image_size // size.patch) ** 2


def param_count(size: SizeSpec, model: ModelSpec, data: DataSpec) -> int:
    """Exact number of trainable parameters of `size` (see the module docstring for the formula)."""
    D, r, p, C = size.width, model.mlp_ratio, size.patch, data.channels
    C_out = C * (2 if model.learn_sigma else 1)
    F = model.frequency_dim
    x_embed = C * p * p * D + D
    lam_embed = F * D + D + D * D + D
    y_embed = (model.num_classes + 1) * D if model.num_classes else 0
    block = (10 + 2 * r) * D * D + (11 + r) * D
    final = 2 * D * D + 2 * D + D * p * p * C_out + p * p * C_out
    return x_embed + lam_embed + y_embed + size.depth * block + final


def flops_per_sample(size: SizeSpec, model: ModelSpec, data: DataSpec) -> float:
    """Training FLOPs (forward + backward) for one image (see the module docstring for the formula)."""
    D, r, p, C = size.width, model.mlp_ratio, size.patch, data.channels
    C_out = C * (2 if model.learn_sigma else 1)
    T = tokens_per_sample(size, data)
    macs = (
        T * C * p * p * D
        + model.frequency_dim * D + D * D
        + size.depth * (T * (4 + 2 * r) * D * D + 2 * T * T * D + 6 * D * D)
        + 2 * D * D
        + T * D * p * p * C_out
    )
    return 3.0 * 2.0 * macs


def size_info(name: str, model: ModelSpec, data: DataSpec) -> SizeInfo:
    size = model.sizes[name]
    return SizeInfo(name, param_count(size, model, data), tokens_per_sample(size, data),
                    flops_per_sample(size, model, data))
