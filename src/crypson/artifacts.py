"""Trained model files: weights plus the hyper-parameters needed to rebuild the module.

Stage outputs (DVC-tracked) hold these; MLflow holds the logged models. A file records its
kind so loading the wrong file gives a clear error instead of a shape mismatch.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crypson.io import atomic_write_bytes
from crypson.models.cgan import Discriminator, Generator
from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE, Decoder

FORMAT = 1


def build(kind: str, hparams: dict[str, Any]) -> nn.Module:
    """A fresh module of `kind` from its hyper-parameters."""
    if kind == "generator":
        return Generator(hparams["num_classes"], hparams["noise_dim"], hparams["width"],
                         hparams.get("conditioning", "multiply"), hparams.get("label_dim", 16))
    if kind == "discriminator":
        return Discriminator(hparams["num_classes"], 32, hparams["embed_dim"], tuple(hparams["hidden"]))
    if kind == "vae":
        return VAE(hparams["latent_dim"], tuple(hparams["channels"]))
    if kind == "classifier":
        decoder = Decoder(hparams["latent_dim"], tuple(hparams["channels"]))
        return LatentClassifier(decoder, hparams["num_classes"], hparams["hidden"], hparams["dropout"])
    raise ValueError(f"unknown model kind {kind!r}; allowed: generator, discriminator, vae, classifier")


def save_model(path: Path, kind: str, hparams: dict[str, Any], state_dict: dict[str, torch.Tensor],
               classes: tuple[str, ...]) -> None:
    """Write weights + hyper-parameters + class characters atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "kind": kind, "hparams": hparams, "classes": list(classes),
                "state_dict": state_dict}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_model(path: Path, kind: str, device: torch.device | str = "cpu") -> tuple[nn.Module, tuple[str, ...]]:
    """Rebuild a saved module in eval mode; returns (module, class characters)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} model at {path}: run its training stage first (dvc repro)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT or payload.get("kind") != kind:
        raise ValueError(f"{path} holds a {payload.get('kind')!r} model (format {payload.get('format')}), "
                         f"expected {kind!r} (format {FORMAT})")
    module = build(kind, payload["hparams"])
    module.load_state_dict(payload["state_dict"])
    return module.to(device).eval(), tuple(payload["classes"])
