"""Classifier training task: cross-entropy on latents of real images, decoder frozen."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crypson.inference import chunked
from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE
from crypson.train.vae import to_unit_range

# fit_class_offsets: the soft maximum's temperature over per-class losses, and its optimiser's schedule.
OFFSET_TEMPERATURE = 0.2
OFFSET_STEPS = 400
OFFSET_LR = 0.05


def fit_class_offsets(logits: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      temperature: float = OFFSET_TEMPERATURE, steps: int = OFFSET_STEPS,
                      lr: float = OFFSET_LR) -> torch.Tensor:
    """Per-class offsets b (K,) added to fixed logits, fitted so that the worst class's loss is small.

    The sender draws k images of a character and fails only when all k are misread, so the cipher's
    misread chance is set by the worst class's single-image error, not by the mean. Group DRO (Sagawa et
    al. 2020, "Distributionally Robust Neural Networks", with the classes as the groups) minimises the
    largest per-group loss; here only the logits' per-class offsets are fitted (post-hoc logit
    adjustment, Menon et al. 2021), which moves each decision boundary between a class and its
    neighbours without retraining: minimise  t * logsumexp_c(CE_c(logits + b) / t), CE_c the mean
    cross-entropy of class c's rows, a smooth maximum over classes (t -> 0: the maximum). Convex in b.

    Args:
        logits: (N, K) the trained classifier's logits on held-out rows (fresh cGAN images' latents: what
            the cipher classifies), every class present.
        labels: (N,) their classes.
    Returns:
        b, (K,), mean zero (a common shift changes no decision).
    """
    counts = torch.bincount(labels, minlength=num_classes)
    if int(counts.min()) == 0:
        missing = [c for c in range(num_classes) if counts[c] == 0]
        raise ValueError(f"fit_class_offsets needs rows of every class; none for class indices {missing}")
    logits, offsets = logits.detach().float(), torch.zeros(num_classes, requires_grad=True)
    optimiser = torch.optim.Adam([offsets], lr=lr)
    for _ in range(steps):
        losses = F.cross_entropy(logits + offsets, labels, reduction="none")
        per_class = torch.zeros(num_classes).index_add(0, labels, losses) / counts
        objective = temperature * torch.logsumexp(per_class / temperature, 0)
        optimiser.zero_grad()
        objective.backward()
        optimiser.step()
    return (offsets - offsets.mean()).detach()


def encode_images(vae: VAE, images_u8: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mu, logvar) of every image, computed once: the encoder is frozen here."""
    vae.eval()
    device = next(vae.parameters()).device

    def encode(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = vae.encoder(to_unit_range(batch.to(device)))
        return mu.float(), logvar.float()

    return chunked(encode, images_u8, batch_size)


class ClassifierTask:
    """Batches are (mu, logvar, class_index) of training images, real and cGAN-generated.

    Training samples z ~ q(z|x) rather than the mean: the same posterior the VAE was trained
    with, a free augmentation that makes the classifier tolerant of small latent errors.
    The receiver classifies the mean. Validation reports each named set (real images, cGAN
    images) separately; the best epoch has the highest mean accuracy over them.
    """

    monitor = "val_accuracy"
    mode = "max"

    def __init__(
        self, classifier: LatentClassifier, lr: float, betas: tuple[float, float],
        validation: dict[str, tuple[torch.Tensor, torch.Tensor]], batch_size: int,
    ) -> None:
        self.classifier = classifier
        self.train_classifier: nn.Module = classifier  # what train_step calls: bare or DDP-wrapped
        self.optimizer = torch.optim.Adam(classifier.head.parameters(), lr=lr, betas=betas)
        self.validation, self.batch_size = validation, batch_size
        self.autocast: Callable[[], AbstractContextManager[Any]] = nullcontext

    def modules(self) -> dict[str, nn.Module]:
        return {"classifier": self.classifier}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"classifier": self.optimizer}

    def wrap_modules(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self.train_classifier = wrap(self.classifier)

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        mu, logvar, class_index = batch
        latent = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        with self.autocast():
            logits = self.train_classifier(latent)
        loss = F.cross_entropy(logits.float(), class_index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        accuracy = (logits.detach().argmax(1) == class_index).float().mean()
        return {"loss": loss, "accuracy": accuracy}

    def _score(self, latents: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        device = next(self.classifier.parameters()).device
        totals = torch.zeros(2, device=device)
        for start in range(0, len(latents), self.batch_size):
            latent = latents[start : start + self.batch_size].to(device)
            target = labels[start : start + self.batch_size].to(device)
            with self.autocast():
                logits = self.classifier(latent).float()
            totals += torch.stack([F.cross_entropy(logits, target, reduction="sum"),
                                   (logits.argmax(1) == target).sum().float()])
        loss, accuracy = (totals / len(latents)).tolist()
        return loss, accuracy

    def validate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name, (latents, labels) in self.validation.items():
            metrics[f"val_loss_{name}"], metrics[f"val_accuracy_{name}"] = self._score(latents, labels)
        names = list(self.validation)
        metrics["val_loss"] = sum(metrics[f"val_loss_{n}"] for n in names) / len(names)
        metrics["val_accuracy"] = sum(metrics[f"val_accuracy_{n}"] for n in names) / len(names)
        return metrics
