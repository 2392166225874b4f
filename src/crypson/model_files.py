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

from crypson.files import atomic_write_bytes
from crypson.layout import NETWORK_KINDS, Layout
from crypson.models.cgan import ConvDiscriminator, Discriminator, Generator
from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE, Decoder

FORMAT = 1


def hparams_from_config(kind: str, config: Any, num_classes: int) -> dict[str, Any]:
    """The hyper-parameters of a model `kind` as the pipeline's config (crypson.config.Config) sets them:
    the one place where params.yaml turns into constructor arguments (stages and benches alike)."""
    c, v = config.cgan, config.vae
    if kind == "generator":
        return {"num_classes": num_classes, "noise_dim": c.noise_dim, "width": c.generator_width,
                "conditioning": c.conditioning, "label_dim": c.label_dim, "truncation": c.truncation}
    if kind == "discriminator" and c.discriminator == "conv":
        return {"num_classes": num_classes, "architecture": "conv", "width": c.discriminator_width,
                "temperature": c.class_temperature}
    if kind == "discriminator":
        return {"num_classes": num_classes, "architecture": "mlp", "embed_dim": c.discriminator_embed_dim,
                "hidden": list(c.discriminator_hidden)}
    if kind == "vae":
        return {"latent_dim": v.latent_dim, "channels": list(v.channels), "decoder_output": v.decoder_output,
                "num_classes": num_classes if v.class_weight > 0 else 0}
    if kind == "classifier":
        return {"latent_dim": v.latent_dim, "channels": list(v.channels), "decoder_output": v.decoder_output,
                "num_classes": num_classes, "hidden": config.classifier.hidden, "dropout": config.classifier.dropout}
    raise ValueError(f"unknown model kind {kind!r}; allowed: generator, discriminator, vae, classifier")


def build(kind: str, hparams: dict[str, Any]) -> nn.Module:
    """A fresh module of `kind` from its hyper-parameters."""
    if kind == "generator":
        return Generator(hparams["num_classes"], hparams["noise_dim"], hparams["width"],
                         hparams.get("conditioning", "multiply"), hparams.get("label_dim", 16),
                         hparams.get("truncation"))
    if kind == "discriminator":
        if hparams.get("architecture", "mlp") == "conv":
            return ConvDiscriminator(hparams["num_classes"], hparams["width"], hparams["temperature"])
        return Discriminator(hparams["num_classes"], 32, hparams["embed_dim"], tuple(hparams["hidden"]))
    if kind == "vae":
        return VAE(hparams["latent_dim"], tuple(hparams["channels"]), hparams.get("decoder_output", "report"),
                   hparams.get("num_classes", 0))
    if kind == "classifier":
        decoder = Decoder(hparams["latent_dim"], tuple(hparams["channels"]), hparams.get("decoder_output", "report"))
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


def refuse_pickle_loads() -> None:
    """From here on, every `torch.load` in this process is weights-only, whatever its caller asks.

    For processes that hold the key (the cipher CLI, the served cipher): a pickled object found in
    a model store cannot run code there, even through a library that would unpickle it.
    """
    import os

    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"


def load_network(layout: Layout, kind: str, device: torch.device | str = "cpu") -> tuple[nn.Module, tuple[str, ...]]:
    """One trained model (kind: cgan, vae, classifier) from a pipeline's outputs, with its classes."""
    return load_model(layout.model_file(kind), NETWORK_KINDS[kind], device)
