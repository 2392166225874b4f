"""Conditional GAN that draws a 32x32 handwritten character ("inverse OCR").

Architecture after the Crypson report (ECE 519, 2024) and its reference code: the generator
multiplies a label embedding element-wise with the noise and upsamples with transposed convs
(DCGAN, Radford et al. 2016); the discriminator is an MLP over the flattened image
concatenated with a label embedding (Mirza & Osindero 2014).
"""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    """G(noise, class_index) -> image in [-1, 1], shape (B, 1, 32, 32).

    Args:
        num_classes: number of character classes K.
        noise_dim: length z of the noise vector (the reference uses 64).
        width: channel multiplier; channels are 8w, 4w, 2w (the reference: w=64 -> 512, 256, 128).
    """

    def __init__(self, num_classes: int, noise_dim: int = 64, width: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.noise_dim = noise_dim
        self.label_embedding = nn.Embedding(num_classes, noise_dim)
        self.net = nn.Sequential(
            self._up(noise_dim, 8 * width, stride=1, padding=0),  # (B, 8w, 4, 4)
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
        conditioned = self.label_embedding(class_index) * noise  # (B, z)
        return self.net(conditioned[:, :, None, None])  # (B, z, 1, 1) -> (B, 1, 32, 32)

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
