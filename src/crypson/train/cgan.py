"""cGAN training task: alternating discriminator and generator steps (Goodfellow et al. 2014).

Losses, by `cgan.loss`:
- "bce": the report's, D maximises log D(x) + log(1 - D(G(z))), G the non-saturating log D(G(z))
  (Goodfellow et al. 2014, section 3);
- "hinge": D minimises relu(1 - D(x)) + relu(1 + D(G(z))), G minimises -D(G(z)) (Lim & Ye 2017, the
  loss of SN-GAN and BigGAN).
With a discriminator that has a class head, D also minimises its cross-entropy on real images and G
its cross-entropy on generated ones, weighted by `aux_weight` (AC-GAN, Odena et al. 2017).
The generator that is saved and sampled is an exponential moving average of G's weights (Yazici et
al. 2019), its BatchNorm statistics recomputed for the averaged weights at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from crypson.models.cgan import Generator

LOSSES = ("bce", "hinge")


def to_tanh_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [-1, 1], the generator's output range."""
    return images_u8.unsqueeze(1).float().div_(127.5).sub_(1.0)


def discriminate(discriminator: nn.Module, image: torch.Tensor,
                 class_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(real/fake logit (B,), class logits (B, K) or None) from either discriminator."""
    output = discriminator(image, class_index)
    return output if isinstance(output, tuple) else (output, None)


def discriminator_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor, loss: str) -> torch.Tensor:
    """D's adversarial loss on a batch of real and a batch of generated images."""
    real_logit, fake_logit = real_logit.float(), fake_logit.float()
    if loss == "hinge":
        return F.relu(1 - real_logit).mean() + F.relu(1 + fake_logit).mean()
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) \
            + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
    raise ValueError(f"unknown cGAN loss {loss!r}; allowed: {', '.join(LOSSES)}")


def generator_loss(fake_logit: torch.Tensor, loss: str) -> torch.Tensor:
    """G's adversarial loss on D's logits for its images."""
    fake_logit = fake_logit.float()
    if loss == "hinge":
        return -fake_logit.mean()
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
    raise ValueError(f"unknown cGAN loss {loss!r}; allowed: {', '.join(LOSSES)}")


def class_head_loss(class_logits: torch.Tensor, class_index: torch.Tensor, temperature: float | None,
                    margin: float | None) -> torch.Tensor:
    """Cross-entropy of the class head; with `margin`, on cosines clipped at the margins (ReACGAN's D2D-CE
    margins, Kang et al. 2021, on the class proxies only).

    Plain cross-entropy on bounded cosine logits never reaches zero, so it keeps pulling every generated
    image towards its class proxy: the images of a class collapse onto one prototype. With a margin m,
    the true class's cosine counts only below m (min(cos_y - m, 0)) and the others' only above 1 - m
    (max(cos_j - (1 - m), 0)): an image already classified with that confidence adds no gradient.

    Args:
        class_logits: (B, K) cosines over `temperature` (ConvDiscriminator.classify_features).
        temperature: the head's temperature (to recover the cosines); needed with a margin.
        margin: m in (0, 1), or None for the plain cross-entropy.
    """
    if margin is None:
        return F.cross_entropy(class_logits.float(), class_index)
    cosines = class_logits.float() * temperature
    true = F.one_hot(class_index, cosines.shape[1]).bool()
    clipped = torch.where(true, (cosines - margin).clamp(max=0), (cosines - (1 - margin)).clamp(min=0))
    return F.cross_entropy(clipped / temperature, class_index)


def paired_classes(class_index: torch.Tensor) -> torch.Tensor:
    """The batch's first half of classes twice: fake i and fake i + ceil(B/2) share a class (for B >= 2)."""
    half = (len(class_index) + 1) // 2
    return class_index[:half].repeat(2)[: len(class_index)]


def mode_seeking_loss(fake: torch.Tensor, noise: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's mode-seeking term (Mao et al. 2019, "Mode Seeking GANs for Diverse Image Synthesis").

    For pairs of images of the same class from two noise draws, the ratio
    mean|G(z1, c) - G(z2, c)| / mean|z1 - z2| is large when different noise gives different images; the
    generator minimises its inverse, which counters the collapse of each class onto a few modes that a
    class-head loss (AC-GAN) encourages. Pairs are (i, i + ceil(B/2)), as `paired_classes` builds them.

    Args:
        fake: (B, ...) generated images, B >= 2; noise: (B, noise_dim) the noise that drew them.
    """
    if len(fake) < 2:
        raise ValueError(f"the mode-seeking term needs a batch of at least 2 images, got {len(fake)}")
    half = (len(fake) + 1) // 2
    pairs = len(fake) - half
    image_gap = (fake[:pairs] - fake[half:]).abs().mean()
    noise_gap = (noise[:pairs] - noise[half:]).abs().mean()
    return 1.0 / (image_gap / noise_gap + eps)


def ema_of(generator: Generator, decay: float) -> AveragedModel:
    """An exponential moving average of the generator's parameters: avg <- decay * avg + (1 - decay) * live.

    Buffers (BatchNorm statistics) are not averaged: recompute_batchnorm fits them to the averaged
    weights once training ends."""
    if not 0 <= decay < 1:
        raise ValueError(f"EMA decay must lie in [0, 1), got {decay!r}")
    return AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def averaged_state(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Generator state dict from an AveragedModel's (drops its 'module.' prefix and counter)."""
    return {key.removeprefix("module."): value for key, value in ema_state.items() if key != "n_averaged"}


@torch.no_grad()
def recompute_batchnorm(generator: Generator, batches: int, batch_size: int, seed: int) -> None:
    """Refit every BatchNorm's running statistics to this generator's own activations.

    The averaged weights never ran forward during training, so the live generator's statistics do
    not fit them; a cumulative average over `batches` seeded batches of noise and uniformly drawn
    classes does (as torch.optim.swa_utils.update_bn does for SWA, Izmailov et al. 2018).
    """
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = generator.training
    device = generator.label_embedding.weight.device
    source = torch.Generator(device=device).manual_seed(seed)
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average
    generator.train()
    for _ in range(batches):
        # Training noise is untruncated: the statistics are those of the distribution G learned on.
        noise = torch.randn(batch_size, generator.noise_dim, generator=source, device=device)
        labels = torch.randint(0, generator.num_classes, (batch_size,), generator=source, device=device)
        generator(noise, labels)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    generator.train(was_training)


class CganTask:
    """One step = one discriminator update on real and fake images, then one generator update.

    No validation loss exists that ranks GAN epochs honestly, so the loop keeps the last epoch;
    the evaluation stage measures the generator's class consistency instead.
    """

    monitor = None
    mode = "min"

    def __init__(self, generator: Generator, discriminator: nn.Module, lr: float, betas: tuple[float, float],
                 loss: str = "bce", aux_weight: float = 0.0, ema_decay: float | None = None,
                 class_margin: float | None = None, mode_seeking: float = 0.0) -> None:
        if loss not in LOSSES:
            raise ValueError(f"unknown cGAN loss {loss!r}; allowed: {', '.join(LOSSES)}")
        self.generator, self.discriminator = generator, discriminator
        self.loss, self.aux_weight, self.class_margin = loss, aux_weight, class_margin
        self.mode_seeking = mode_seeking
        self.temperature = getattr(discriminator, "temperature", None)
        self.ema = ema_of(generator, ema_decay) if ema_decay is not None else None
        # What train_step calls: the bare modules, or their DDP wrappers (see wrap_modules).
        self.train_generator: nn.Module = generator
        self.train_discriminator: nn.Module = discriminator
        self.optimizer_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
        self.optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
        self.autocast: Callable[[], AbstractContextManager[Any]] = nullcontext

    def modules(self) -> dict[str, nn.Module]:
        modules = {"generator": self.generator, "discriminator": self.discriminator}
        return modules | ({"generator_ema": self.ema} if self.ema is not None else {})

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.optimizer_g, "discriminator": self.optimizer_d}

    def wrap_modules(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self.train_generator, self.train_discriminator = wrap(self.generator), wrap(self.discriminator)

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        images_u8, class_index = batch
        real = to_tanh_range(images_u8)  # (B, 1, 32, 32)
        # Training draws untruncated noise: truncation trades diversity for fidelity when sampling only.
        noise = torch.randn(len(real), self.generator.noise_dim, device=real.device)
        # With the mode-seeking term, the fake batch is pairs: image i and image i + half share a class.
        fake_classes_index = paired_classes(class_index) if self.mode_seeking > 0 else class_index
        with self.autocast():
            fake = self.train_generator(noise, fake_classes_index)
            real_logit, real_classes = discriminate(self.train_discriminator, real, class_index)
            fake_logit, _ = discriminate(self.train_discriminator, fake.detach(), fake_classes_index)
        loss_d = discriminator_loss(real_logit, fake_logit, self.loss)
        if real_classes is not None and self.aux_weight > 0:
            loss_d = loss_d + self.aux_weight * class_head_loss(real_classes, class_index, self.temperature,
                                                                self.class_margin)
        self.optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizer_d.step()

        # The bare discriminator: only G's gradients are wanted here, so under DDP only G's are
        # all-reduced (D's local gradients from this pass are cleared before D's next step).
        with self.autocast():
            fooled_logit, fake_classes = discriminate(self.discriminator, fake, fake_classes_index)
        loss_g = generator_loss(fooled_logit, self.loss)
        if fake_classes is not None and self.aux_weight > 0:
            loss_g = loss_g + self.aux_weight * class_head_loss(fake_classes, fake_classes_index, self.temperature,
                                                                self.class_margin)
        if self.mode_seeking > 0:
            loss_g = loss_g + self.mode_seeking * mode_seeking_loss(fake.float(), noise)
        self.optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.optimizer_g.step()
        if self.ema is not None:
            self.ema.update_parameters(self.generator)
        metrics = {"loss_discriminator": loss_d.detach(), "loss_generator": loss_g.detach(),
                   "d_real": real_logit.detach().float().mean(), "d_fake": fake_logit.detach().float().mean()}
        if real_classes is not None:
            metrics["d_class_accuracy_real"] = (real_classes.detach().argmax(1) == class_index).float().mean()
            metrics["d_class_accuracy_fake"] = (fake_classes.detach().argmax(1) == fake_classes_index).float().mean()
        return metrics

    def validate(self) -> dict[str, float]:
        return {}

