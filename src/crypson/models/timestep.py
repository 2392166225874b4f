"""Timestep embeddings of a character's position: the report's mask E(t).

Two forms, as in latent diffusion models: a learned lookup table (discrete) and the
Transformer sinusoidal encoding (Vaswani et al. 2017, section 3.5) followed by a small MLP
(Ho et al. 2020). Public weights make E(t) public: used alone it is a baseline, not a secret.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_encoding(timestep: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal encoding of integer or real timesteps.

    Args:
        timestep: (B,) positions.
        dim: even encoding length.
        max_period: the longest wavelength (10,000 in Vaswani et al.).
    Returns:
        (B, dim): [sin(t * w_k), cos(t * w_k)] with w_k = max_period^(-k / (dim / 2)).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even dim, got {dim}")
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=timestep.device) / half)
    angles = timestep.float()[:, None] * frequencies[None, :]  # (B, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (B, dim)


class DiscreteTimestepEmbedding(nn.Module):
    """t in [0, num_positions) -> (B, dim) learned vector."""

    def __init__(self, num_positions: int, dim: int = 8) -> None:
        super().__init__()
        self.table = nn.Embedding(num_positions, dim)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.table(timestep)


class SinusoidalTimestepEmbedding(nn.Module):
    """t -> sinusoidal(dim) -> Linear(dim, hidden) + SiLU -> Linear(hidden, hidden) + SiLU -> Linear(hidden, dim).

    The reference sizes: dim 8 (the latent size), hidden 16.
    """

    def __init__(self, dim: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim)
        )

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_encoding(timestep, self.dim))  # (B, dim)
