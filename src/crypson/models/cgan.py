"""Conditional GAN that draws a 32x32 handwritten character ("inverse OCR").

Generator after the Crypson report (ECE 519, 2024) and its reference code: a label embedding
combined with the noise, upsampled by transposed convs (DCGAN, Radford et al. 2016). Two
discriminators:
- "mlp" (the report): an MLP over the flattened image concatenated with a label embedding
  (Mirza & Osindero 2014);
- "conv" (the default): strided convs with spectral normalisation (Miyato et al. 2018), a projection
  term for the class (Miyato & Koyama 2018) and an auxiliary classifier head (AC-GAN, Odena et al.
  2017) whose features and class proxies are normalised to the unit sphere (ReACGAN, Kang et al. 2021),
  which keeps AC-GAN's classifier from collapsing early when there are many classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

CONDITIONINGS = ("multiply", "concat")
DISCRIMINATORS = ("mlp", "conv")


def truncated_normal(count: int, dim: int, truncation: float | None, generator: torch.Generator | None,
                     device: torch.device) -> torch.Tensor:
    """(count, dim) draws of N(0, 1), or of N(0, 1) truncated to [-t, t] (the BigGAN truncation trick,
    Brock et al. 2019) by inverting the CDF of a uniform draw: one pass, the same work for any outcome.

    Args:
        truncation: the bound t > 0, or None for the untruncated normal.
    """
    if truncation is None:
        return torch.randn(count, dim, generator=generator, device=device)
    if not truncation > 0:
        raise ValueError(f"truncation must be > 0 or None, got {truncation!r}")
    low = 0.5 * (1 + math.erf(-truncation / math.sqrt(2)))  # Phi(-t)
    uniform = torch.rand(count, dim, generator=generator, device=device, dtype=torch.float64)
    draws = torch.special.ndtri(low + uniform * (1 - 2 * low))  # Phi^-1 of U(Phi(-t), Phi(t))
    return draws.clamp_(-truncation, truncation).float()


class Generator(nn.Module):
    """G(noise, class_index) -> image in [-1, 1], shape (B, 1, 32, 32).

    Two ways to condition on the class:
    - "multiply" (the report): label embedding (z) times the noise. With zero-mean noise the
      class then shows only in the *scale* of each input component, which a generator learns
      to use slowly (the report trains 200 epochs);
    - "concat" (Mirza & Osindero 2014, the original cGAN): noise and a label embedding side by
      side, so the class is plainly in the input.

    Args:
        num_classes: number of character classes K.
        noise_dim: length z of the noise vector (the reference uses 64).
        width: channel multiplier; channels are 8w, 4w, 2w (the reference: w=64 -> 512, 256, 128).
        conditioning: "multiply" or "concat".
        label_dim: embedding length for "concat" ("multiply" uses z).
        truncation: sample_noise draws from N(0, 1) truncated to [-t, t]; None: untruncated.
    """

    def __init__(self, num_classes: int, noise_dim: int = 64, width: int = 64, conditioning: str = "multiply",
                 label_dim: int = 16, truncation: float | None = None) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; allowed: {', '.join(CONDITIONINGS)}")
        if truncation is not None and not truncation > 0:
            raise ValueError(f"truncation must be > 0 or None, got {truncation!r}")
        self.num_classes = num_classes
        self.noise_dim = noise_dim
        self.conditioning = conditioning
        self.truncation = truncation
        embed_dim = noise_dim if conditioning == "multiply" else label_dim
        self.label_embedding = nn.Embedding(num_classes, embed_dim)
        input_dim = noise_dim if conditioning == "multiply" else noise_dim + label_dim
        self.net = nn.Sequential(
            self._up(input_dim, 8 * width, stride=1, padding=0),  # (B, 8w, 4, 4)
            self._up(8 * width, 4 * width),  # (B, 4w, 8, 8)
            self._up(4 * width, 2 * width),  # (B, 2w, 16, 16)
            nn.ConvTranspose2d(2 * width, 1, 4, 2, 1, bias=False),  # (B, 1, 32, 32)
            nn.Tanh(),
        )

    @staticmethod
    def _up(in_channels: int, out_channels: int, stride: int = 2, padding: int = 1) -> nn.Sequential:
        # No conv bias: BatchNorm's shift makes it redundant (DCGAN).
        return nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, 4, stride, padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, noise: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
        label = self.label_embedding(class_index)
        if self.conditioning == "multiply":
            conditioned = label * noise  # (B, z)
        else:
            conditioned = torch.cat([noise, label], dim=1)  # (B, z + e)
        return self.net(conditioned[:, :, None, None])  # (B, in, 1, 1) -> (B, 1, 32, 32)

    @staticmethod
    def to_unit_range(images: torch.Tensor) -> torch.Tensor:
        """Tanh output in [-1, 1] -> [0, 1], the range the VAE reads."""
        return images.add(1).div(2).clamp(0, 1)

    def sample_noise(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fresh noise on the generator's device, truncated to [-truncation, truncation] when set."""
        device = self.label_embedding.weight.device
        return truncated_normal(count, self.noise_dim, self.truncation, generator, device)


class Discriminator(nn.Module):
    """The report's D(image, class_index) -> real/fake logit, shape (B,).

    The report's discriminator ends in a sigmoid trained with BCE; we return the logit and
    train with BCEWithLogits, the same loss computed stably (and allowed under autocast).
    It has no class head (`classify` returns None).

    Args:
        num_classes: number of classes K.
        image_size: side of the square input image.
        embed_dim: label embedding length (the reference: 1024).
        hidden: widths of the hidden linear layers (the reference: 2048, 2048, 1024, 512).
    """

    has_class_head = False

    def __init__(
        self,
        num_classes: int,
        image_size: int = 32,
        embed_dim: int = 1024,
        hidden: tuple[int, ...] = (2048, 2048, 1024, 512),
    ) -> None:
        super().__init__()
        self.label_embedding = nn.Embedding(num_classes, embed_dim)
        layers: list[nn.Module] = []
        width = image_size * image_size + embed_dim
        for out_width in hidden:
            layers += [nn.Linear(width, out_width), nn.LeakyReLU(0.2, inplace=True)]
            width = out_width
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
        features = torch.cat([image.flatten(1), self.label_embedding(class_index)], dim=1)  # (B, 1024 + e)
        return self.net(features).squeeze(1)  # (B,)


class ConvDiscriminator(nn.Module):
    """D(image, class_index) -> (real/fake logit (B,), class logits (B, K)).

    A spectrally normalised strided-conv trunk (Miyato et al. 2018) pooled to features h; the
    adversarial logit is psi(h) + <embed(y), h> (the projection discriminator, Miyato & Koyama
    2018); the class head scores the cosine between a projection of h and one learned proxy per
    class, over a temperature (the normalised auxiliary classifier of ReACGAN, Kang et al. 2021,
    without its data-to-data terms): unit-norm features keep AC-GAN's cross-entropy from
    pushing feature norms up, the cause of its early collapse with many classes.

    Args:
        num_classes: K.
        width: channels w, 2w, 4w, 8w of the four convs.
        temperature: of the class head's cosine logits (ReACGAN uses 0.5 on CIFAR-10 to 1.0).
    """

    has_class_head = True

    def __init__(self, num_classes: int, width: int = 32, temperature: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = temperature
        features = 8 * width
        self.trunk = nn.Sequential(
            spectral_norm(nn.Conv2d(1, width, 3, 1, 1)), nn.LeakyReLU(0.1),  # (B, w, 32, 32)
            spectral_norm(nn.Conv2d(width, 2 * width, 4, 2, 1)), nn.LeakyReLU(0.1),  # (B, 2w, 16, 16)
            spectral_norm(nn.Conv2d(2 * width, 4 * width, 4, 2, 1)), nn.LeakyReLU(0.1),  # (B, 4w, 8, 8)
            spectral_norm(nn.Conv2d(4 * width, features, 4, 2, 1)), nn.LeakyReLU(0.1),  # (B, 8w, 4, 4)
        )
        self.adversarial = spectral_norm(nn.Linear(features, 1))
        self.projection = spectral_norm(nn.Embedding(num_classes, features))
        self.class_features = spectral_norm(nn.Linear(features, features))
        self.class_proxies = nn.Embedding(num_classes, features)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        return self.trunk(image).sum(dim=(2, 3))  # global sum pooling, (B, 8w)

    def class_cosines(self, features: torch.Tensor) -> torch.Tensor:
        """Cosines (B, K) between the normalised class features and the normalised class proxies."""
        embedded = F.normalize(self.class_features(features), dim=1)  # (B, F)
        proxies = F.normalize(self.class_proxies.weight, dim=1)  # (K, F)
        return embedded @ proxies.T

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine logits (B, K): class_cosines over the temperature."""
        return self.class_cosines(features) / self.temperature

    def forward(self, image: torch.Tensor, class_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(image)
        projection = (self.projection(class_index) * features).sum(1)  # <embed(y), h>, (B,)
        logit = self.adversarial(features).squeeze(1) + projection
        return logit, self.classify_features(features)

    @torch.no_grad()
    def classify(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) of images in [-1, 1]: the class head alone."""
        return self.classify_features(self.features(image))
