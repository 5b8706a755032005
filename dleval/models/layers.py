"""Pieces both native model families (`llada.py`, `dream.py`) build on: RMSNorm and the weight init.

RoPE stays in each family's file: the two references round it differently (LLaDA rotates in fp32,
Dream casts the tables to the activations' dtype first), and each file matches its own bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the normalisation in fp32 and the result in x's dtype (as both references)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def init_normal(model: nn.Module, seed: int, std: float, n_layers: int, residual: tuple[str, ...], norms: tuple[str, ...]) -> None:
    """Deterministic normal init: norm weights (names ending in `norms`) 1, other vectors 0, matrices
    N(0, std) drawn in parameter order from one seeded generator, the residual projections (names
    ending in `residual`) scaled down by depth, std / sqrt(2 n_layers) (GPT-2 style)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(norms):
            nn.init.ones_(p)
        elif p.dim() == 1:
            nn.init.zeros_(p)
        else:
            scale = std / math.sqrt(2 * n_layers) if name.endswith(residual) else std
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
