"""Where tensors are computed and how reproducibly: the device choice and the seeds, for every stage,
the cipher and the benches (none of which needs the training loop for them)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA device is available; use 'auto' or 'cpu'")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; allowed: auto, cpu, cuda")
    return torch.device(name)


def derived_seed(seed: int, purpose: str | int) -> int:
    """An independent 32-bit seed for one purpose (an epoch, evaluation, ...) from the run's seed.

    Nearby integer seeds are not independent in practice (torch.randn with one seed repeats its
    leading rows at any size), so every consumer of randomness gets its own hashed seed.
    """
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little")


def seed_everything(seed: int, epoch: int = 0, rank: int = 0) -> None:
    """Seed Python, NumPy and torch from (seed, epoch), so epoch e is reproducible on its own.

    Under DDP each rank gets its own stream (noise, dropout masks): equal streams would give
    every shard the same noise. Rank 0's stream is the single-process one.
    """
    derived = derived_seed(seed, epoch if rank == 0 else f"{epoch}/rank{rank}")
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)
