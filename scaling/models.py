"""A DiT-style diffusion transformer (Peebles & Xie 2023) conditioned on the log-SNR λ.

Patchify -> N blocks of (adaLN-Zero modulated self-attention + MLP) -> linear un-patchify.
Positions are fixed 2-D sin-cos buffers (not parameters), so `sum(p.numel())` is exactly the count
`scaling.sizes.param_count` computes. The conditioning is the embedding of λ (plus a class embedding
when the family is class-conditional).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scaling.spec import ModelSpec, SizeSpec


def sincos_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalars x (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    args = x.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(width: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding -> (grid*grid, width)."""
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = width // 2
    return torch.cat([sincos_embedding(yy.flatten(), quarter), sincos_embedding(xx.flatten(), width - quarter)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class LambdaEmbedder(nn.Module):
    """λ -> sinusoidal features -> MLP -> (B, D). λ is scaled so that [-20, 20] spans the frequencies."""

    def __init__(self, width: int, frequency_dim: int):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        return self.mlp(sincos_embedding(lam * 25.0, self.frequency_dim))  # (B, D)


class Block(nn.Module):
    """Transformer block with adaLN-Zero: the modulation starts at zero so each block starts as identity."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # each (B, D)
        h = modulate(self.norm1(x), shift1, scale1)
        q, k, v = self.qkv(h).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D/H)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        x = x + gate1[:, None] * self.proj(a)
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x  # (B, T, D)


class DiT(nn.Module):
    """Denoiser f(z, λ[, y]) -> prediction with the shape of z (ε or v, per the sweep)."""

    def __init__(self, size: SizeSpec, model: ModelSpec, image_size: int, channels: int):
        super().__init__()
        self.size, self.channels, self.patch = size, channels, size.patch
        self.grid = image_size // size.patch
        self.out_channels = channels * (2 if model.learn_sigma else 1)
        D, p = size.width, size.patch
        self.x_embed = nn.Conv2d(channels, D, kernel_size=p, stride=p)
        self.register_buffer("pos", sincos_2d(D, self.grid)[None], persistent=False)  # (1, T, D)
        self.lam_embed = LambdaEmbedder(D, model.frequency_dim)
        self.num_classes = model.num_classes
        self.y_embed = nn.Embedding(model.num_classes + 1, D) if model.num_classes else None  # +1: null class
        self.blocks = nn.ModuleList(Block(D, size.heads, model.mlp_ratio) for _ in range(size.depth))
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.out = nn.Linear(D, p * p * self.out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embed.bias)
        for lin in (self.lam_embed.mlp[0], self.lam_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero
            nn.init.zeros_(block.ada[1].weight)
            nn.init.zeros_(block.ada[1].bias)
        for lin in (self.ada_out[1], self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, z: torch.Tensor, lam: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = z.shape
        x = self.x_embed(z).flatten(2).transpose(1, 2) + self.pos  # (B, T, D)
        c = self.lam_embed(lam)  # (B, D)
        if self.y_embed is not None:
            y = torch.full((B,), self.num_classes, device=z.device, dtype=torch.long) if y is None else y
            c = c + self.y_embed(y)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        x = self.out(modulate(self.norm_out(x), shift, scale))  # (B, T, p*p*C_out)
        p, g = self.patch, self.grid
        x = x.view(B, g, g, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4).reshape(B, self.out_channels, H, W)
        return x[:, :C]  # the learned variance (learn_sigma) is not used by the ε/v losses


def build_model(size: SizeSpec, model: ModelSpec, image_size: int, channels: int) -> DiT:
    """The model of one size of the family."""
    if model.family != "dit":
        raise ValueError(f"unknown model family {model.family!r}")
    return DiT(size, model, image_size, channels)
