"""Conditional GAN that draws a 32x32 handwritten character ("inverse OCR").

Architecture after the Crypson report (ECE 519, 2024) and its reference code: the generator
multiplies a label embedding element-wise with the noise and upsamples with transposed convs
(DCGAN, Radford et al. 2016); the discriminator is an MLP over the flattened image
concatenated with a label embedding (Mirza & Osindero 2014).
"""

from __future__ import annotations

import torch
from torch import nn


CONDITIONINGS = ("multiply", "concat")


class Generator(nn.Module):
    """G(noise, class_index) -> image in [-1, 1], shape (B, 1, 32, 32).

    Two ways to condition on the class:
    - "multiply" (the report): label embedding (z) times the noise. With zero-mean noise the
      class then shows only in the *scale* of each input component, which a generator learns
      to use slowly (the report trains 200 epochs);
    - "concat" (Mirza & Osindero 2014, the original cGAN): noise and a label embedding side by
      side, so the class is plainly in the input; it learns class-consistent images in far
      fewer steps, which is why the CPU default uses it.

    Args:
        num_classes: number of character classes K.
        noise_dim: length z of the noise vector (the reference uses 64).
        width: channel multiplier; channels are 8w, 4w, 2w (the reference: w=64 -> 512, 256, 128).
        conditioning: "multiply" or "concat".
        label_dim: embedding length for "concat" ("multiply" uses z).
    """

    def __init__(self, num_classes: int, noise_dim: int = 64, width: int = 64, conditioning: str = "multiply",
                 label_dim: int = 16) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; allowed: {', '.join(CONDITIONINGS)}")
        self.num_classes = num_classes
        self.noise_dim = noise_dim
        self.conditioning = conditioning
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
        """Fresh standard normal noise on the generator's device."""
        device = self.label_embedding.weight.device
        return torch.randn(count, self.noise_dim, generator=generator, device=device)


class Discriminator(nn.Module):
    """D(image, class_index) -> real/fake logit, shape (B,).

    The report's discriminator ends in a sigmoid trained with BCE; we return the logit and
    train with BCEWithLogits, the same loss computed stably (and allowed under autocast).

    Args:
        num_classes: number of classes K.
        image_size: side of the square input image.
        embed_dim: label embedding length (the reference: 1024).
        hidden: widths of the hidden linear layers (the reference: 2048, 2048, 1024, 512).
    """

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
