"""VAE training task: the weighted negative ELBO on real (or glyph) images, plus, with
`class_weight` > 0, the cross-entropy of the VAE's class head on the latent mean."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crypson.evaluate.metrics import psnr_per_image
from crypson.models.vae import VAE, vae_loss


def to_unit_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [0, 1], the decoder's sigmoid range."""
    return images_u8.unsqueeze(1).float().div_(255.0)


class VaeTask:
    """Trains on the training split; the best epoch has the lowest validation loss.

    Batches are (images_u8, class_index). The loss is recon_weight * BCE + kl_weight * KL
    (+ class_weight * cross-entropy of vae.class_head(mu) when the VAE has a class head).
    """

    monitor = "val_loss"
    mode = "min"

    def __init__(
        self, vae: VAE, lr: float, betas: tuple[float, float], recon_weight: float, kl_weight: float,
        val_images_u8: torch.Tensor, batch_size: int, class_weight: float = 0.0,
        val_labels: torch.Tensor | None = None,
    ) -> None:
        if class_weight > 0 and vae.class_head is None:
            raise ValueError(f"class_weight={class_weight} needs a VAE built with num_classes > 0")
        if class_weight > 0 and val_labels is None:
            raise ValueError("class_weight > 0 needs the validation labels")
        self.vae = vae
        self.train_vae: nn.Module = vae  # what train_step calls: the VAE or its DDP wrapper
        self.optimizer = torch.optim.Adam(vae.parameters(), lr=lr, betas=betas)
        self.recon_weight, self.kl_weight, self.class_weight = recon_weight, kl_weight, class_weight
        self.val_images_u8, self.val_labels, self.batch_size = val_images_u8, val_labels, batch_size
        self.autocast: Callable[[], AbstractContextManager[Any]] = nullcontext

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": self.optimizer}

    def wrap_modules(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self.train_vae = wrap(self.vae)

    def _loss(self, images: torch.Tensor, class_index: torch.Tensor | None,
              model: nn.Module) -> tuple[torch.Tensor, ...]:
        """(total, reconstruction, KL, class cross-entropy, class hits, reconstruction images)."""
        with self.autocast():
            reconstruction, mu, logvar = model(images)
        total, recon, kl = vae_loss(reconstruction, images, mu.float(), logvar.float(),
                                    self.recon_weight, self.kl_weight)
        cross_entropy = hits = torch.zeros((), device=images.device)
        if self.class_weight > 0:
            logits = self.vae.class_head(mu.float())  # (B, K): the head is small, never wrapped
            cross_entropy = F.cross_entropy(logits, class_index)
            hits = (logits.argmax(1) == class_index).float().sum()
            total = total + self.class_weight * cross_entropy
        return total, recon, kl, cross_entropy, hits, reconstruction

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        images_u8, class_index = batch
        loss, recon, kl, cross_entropy, hits, _ = self._loss(to_unit_range(images_u8), class_index, self.train_vae)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        metrics = {"loss": loss, "loss_reconstruction": recon, "loss_kl": kl}
        if self.class_weight > 0:
            metrics |= {"loss_class": cross_entropy, "class_accuracy": hits / len(images_u8)}
        return metrics

    def validate(self) -> dict[str, float]:
        device = next(self.vae.parameters()).device
        totals = torch.zeros(3, device=device)
        count = 0
        for start in range(0, len(self.val_images_u8), self.batch_size):
            images = to_unit_range(self.val_images_u8[start : start + self.batch_size].to(device))
            labels = self.val_labels[start : start + self.batch_size].to(device) if self.class_weight > 0 else None
            loss, _, _, _, hits, reconstruction = self._loss(images, labels, self.vae)
            psnr = psnr_per_image(reconstruction.float(), images, data_range=1.0)
            totals += torch.stack([loss * len(images), psnr.sum(), hits])
            count += len(images)
        val_loss, val_psnr, val_accuracy = (totals / count).tolist()
        metrics = {"val_loss": val_loss, "val_psnr_db": val_psnr}
        return metrics | ({"val_class_accuracy": val_accuracy} if self.class_weight > 0 else {})


@torch.no_grad()
def reconstruction_grid(vae: VAE, images_u8: torch.Tensor) -> torch.Tensor:
    """Originals on even rows, their reconstructions (from the mean) on odd rows: (2N, 1, 32, 32)."""
    vae.eval()
    device = next(vae.parameters()).device
    images = to_unit_range(images_u8.to(device))
    reconstruction = vae.decoder(vae.encode_mean(images)).float()
    return torch.stack([images, reconstruction], dim=1).flatten(0, 1).cpu()
