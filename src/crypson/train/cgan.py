"""cGAN training task: alternating discriminator and generator steps (Goodfellow et al. 2014)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crypson.models.cgan import Discriminator, Generator


def to_tanh_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [-1, 1], the generator's output range."""
    return images_u8.unsqueeze(1).float().div_(127.5).sub_(1.0)


class CganTask:
    """One step = one discriminator update on real and fake images, then one generator update.

    No validation loss exists that ranks GAN epochs honestly, so the loop keeps the last epoch;
    the evaluation stage measures the generator's class consistency instead.
    """

    monitor = None
    mode = "min"

    def __init__(
        self, generator: Generator, discriminator: Discriminator, lr: float, betas: tuple[float, float]
    ) -> None:
        self.generator, self.discriminator = generator, discriminator
        # What train_step calls: the bare modules, or their DDP wrappers (see wrap_modules).
        self.train_generator: nn.Module = generator
        self.train_discriminator: nn.Module = discriminator
        self.optimizer_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
        self.optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
        self.autocast: Callable[[], AbstractContextManager[Any]] = nullcontext

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.optimizer_g, "discriminator": self.optimizer_d}

    def wrap_modules(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self.train_generator, self.train_discriminator = wrap(self.generator), wrap(self.discriminator)

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        images_u8, class_index = batch
        real = to_tanh_range(images_u8)  # (B, 1, 32, 32)
        noise = self.generator.sample_noise(len(real))
        with self.autocast():
            fake = self.train_generator(noise, class_index)
            real_logit = self.train_discriminator(real, class_index)
            fake_logit = self.train_discriminator(fake.detach(), class_index)
        loss_d = F.binary_cross_entropy_with_logits(real_logit.float(), torch.ones_like(real_logit, dtype=torch.float32)) \
            + F.binary_cross_entropy_with_logits(fake_logit.float(), torch.zeros_like(fake_logit, dtype=torch.float32))
        self.optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizer_d.step()

        # The bare discriminator: only G's gradients are wanted here, so under DDP only G's are
        # all-reduced (D's local gradients from this pass are cleared before D's next step).
        with self.autocast():
            fooled_logit = self.discriminator(fake, class_index)
        # Non-saturating generator loss: maximise log D(G(z)) (Goodfellow et al. 2014, section 3).
        loss_g = F.binary_cross_entropy_with_logits(fooled_logit.float(), torch.ones_like(fooled_logit, dtype=torch.float32))
        self.optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.optimizer_g.step()
        return {
            "loss_discriminator": loss_d,
            "loss_generator": loss_g,
            "d_real": torch.sigmoid(real_logit.detach().float()).mean(),
            "d_fake": torch.sigmoid(fake_logit.detach().float()).mean(),
        }

    def validate(self) -> dict[str, float]:
        return {}


@torch.no_grad()
def sample_grid(generator: Generator, per_class: int, seed: int) -> torch.Tensor:
    """Fixed-noise samples, `per_class` of each class: (K * per_class, 1, 32, 32) in [0, 1]."""
    was_training = generator.training
    generator.eval()
    device = generator.label_embedding.weight.device
    class_index = torch.arange(generator.num_classes, device=device).repeat_interleave(per_class)
    noise = generator.sample_noise(len(class_index), torch.Generator(device=device).manual_seed(seed))
    images = generator.to_unit_range(generator(noise, class_index))
    generator.train(was_training)
    return images.float().cpu()
