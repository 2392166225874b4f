"""VAE training task: the weighted negative ELBO on real (or glyph) images."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio

from crypson.models.vae import VAE, vae_loss


def to_unit_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [0, 1], the decoder's sigmoid range."""
    return images_u8.unsqueeze(1).float().div_(255.0)


class VaeTask:
    """Trains on the training split; the best epoch has the lowest validation loss."""

    monitor = "val_loss"
    mode = "min"

    def __init__(
        self, vae: VAE, lr: float, betas: tuple[float, float], recon_weight: float, kl_weight: float,
        val_images_u8: torch.Tensor, batch_size: int,
    ) -> None:
        self.vae = vae
        self.train_vae: nn.Module = vae  # what train_step calls: the VAE or its DDP wrapper
        self.optimizer = torch.optim.Adam(vae.parameters(), lr=lr, betas=betas)
        self.recon_weight, self.kl_weight = recon_weight, kl_weight
        self.val_images_u8, self.batch_size = val_images_u8, batch_size
        self.autocast: Callable[[], AbstractContextManager[Any]] = nullcontext

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": self.optimizer}

    def wrap_modules(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self.train_vae = wrap(self.vae)

    def _loss(self, images: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, ...]:
        with self.autocast():
            reconstruction, mu, logvar = model(images)
        return (*vae_loss(reconstruction, images, mu.float(), logvar.float(),
                          self.recon_weight, self.kl_weight), reconstruction)

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        images = to_unit_range(batch[0])
        loss, recon, kl, _ = self._loss(images, self.train_vae)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss, "loss_reconstruction": recon, "loss_kl": kl}

    def validate(self) -> dict[str, float]:
        device = next(self.vae.parameters()).device
        totals = torch.zeros(2, device=device)
        count = 0
        for start in range(0, len(self.val_images_u8), self.batch_size):
            images = to_unit_range(self.val_images_u8[start : start + self.batch_size].to(device))
            loss, _, _, reconstruction = self._loss(images, self.vae)
            psnr = peak_signal_noise_ratio(reconstruction.float(), images, data_range=1.0, reduction="none",
                                           dim=(1, 2, 3))
            totals += torch.stack([loss * len(images), psnr.sum()])
            count += len(images)
        val_loss, val_psnr = (totals / count).tolist()
        return {"val_loss": val_loss, "val_psnr_db": val_psnr}


@torch.no_grad()
def reconstruction_grid(vae: VAE, images_u8: torch.Tensor) -> torch.Tensor:
    """Originals on even rows, their reconstructions (from the mean) on odd rows: (2N, 1, 32, 32)."""
    vae.eval()
    device = next(vae.parameters()).device
    images = to_unit_range(images_u8.to(device))
    reconstruction = vae.decoder(vae.encode_mean(images)).float()
    return torch.stack([images, reconstruction], dim=1).flatten(0, 1).cpu()
