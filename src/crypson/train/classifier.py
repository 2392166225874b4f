"""Classifier training task: cross-entropy on latents of real images, decoder frozen."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE
from crypson.train.vae import to_unit_range


@torch.no_grad()
def encode_images(vae: VAE, images_u8: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mu, logvar) of every image, computed once: the encoder is frozen here."""
    vae.eval()
    device = next(vae.parameters()).device
    mus, logvars = [], []
    for start in range(0, len(images_u8), batch_size):
        mu, logvar = vae.encoder(to_unit_range(images_u8[start : start + batch_size].to(device)))
        mus.append(mu.float())
        logvars.append(logvar.float())
    return torch.cat(mus), torch.cat(logvars)


class ClassifierTask:
    """Batches are (mu, logvar, class_index) of training images.

    Training samples z ~ q(z|x) rather than the mean: the same posterior the VAE was trained
    with, a free augmentation that makes the classifier tolerant of small latent errors.
    The receiver classifies the mean. The best epoch has the highest validation accuracy.
    """

    monitor = "val_accuracy"
    mode = "max"

    def __init__(
        self, classifier: LatentClassifier, lr: float, betas: tuple[float, float],
        val_latents: torch.Tensor, val_labels: torch.Tensor, batch_size: int,
    ) -> None:
        self.classifier = classifier
        self.optimizer = torch.optim.Adam(classifier.head.parameters(), lr=lr, betas=betas)
        self.val_latents, self.val_labels, self.batch_size = val_latents, val_labels, batch_size
        self.autocast: Callable[[], AbstractContextManager[Any]] = nullcontext

    def modules(self) -> dict[str, nn.Module]:
        return {"classifier": self.classifier}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"classifier": self.optimizer}

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        mu, logvar, class_index = batch
        latent = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        with self.autocast():
            logits = self.classifier(latent)
        loss = F.cross_entropy(logits.float(), class_index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        accuracy = (logits.detach().argmax(1) == class_index).float().mean()
        return {"loss": loss, "accuracy": accuracy}

    def validate(self) -> dict[str, float]:
        device = next(self.classifier.parameters()).device
        totals = torch.zeros(2, device=device)
        for start in range(0, len(self.val_latents), self.batch_size):
            latent = self.val_latents[start : start + self.batch_size].to(device)
            labels = self.val_labels[start : start + self.batch_size].to(device)
            with self.autocast():
                logits = self.classifier(latent).float()
            totals += torch.stack([F.cross_entropy(logits, labels, reduction="sum"),
                                   (logits.argmax(1) == labels).sum().float()])
        val_loss, val_accuracy = (totals / len(self.val_latents)).tolist()
        return {"val_loss": val_loss, "val_accuracy": val_accuracy}
