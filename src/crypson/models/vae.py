"""Variational autoencoder that maps a 32x32 character image to a small latent (8-d in the report).

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. Sizes after the Crypson
reference code: four stride-2 convs 32 -> 2 px, linear heads for mu and log-variance, and a
mirrored transposed-conv decoder ending in a sigmoid.

Two departures, each a parameter (the report's VAE is `decoder_output="report"`, `num_classes=0`):
- the decoder's output stage: the reference squeezes the last upsampling through one BatchNorm +
  ReLU channel before a 1->1 conv, so every image passes a single rectified, batch-normalised map;
  "direct" lets the last transposed conv write the image's logits straight into the sigmoid, as the
  DCGAN generator's output layer does (Radford et al. 2016), at the same cost;
- an optional class head on the latent mean (a linear softmax classifier trained jointly, as in the
  semi-supervised M2 model's classifier term, Kingma et al. 2014), so that the 8-d latent keeps the
  class instead of spending its capacity on style alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _deconv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
    """image (B, 1, 32, 32) in [0, 1] -> (mu, logvar), each (B, latent_dim)."""

    def __init__(self, latent_dim: int = 8, channels: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        widths = (1, *channels)
        self.features = nn.Sequential(*(_conv_block(a, b) for a, b in zip(widths, widths[1:])))
        side = 32 // 2 ** len(channels)  # 4 stride-2 convs: 32 -> 2
        flat = channels[-1] * side * side  # the reference: 256 * 2 * 2 = 1024
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(image).flatten(1)  # (B, 256 * 2 * 2)
        return self.mu(features), self.logvar(features)


DECODER_OUTPUTS = ("report", "direct")


class Decoder(nn.Module):
    """latent (B, latent_dim) -> image (B, 1, 32, 32) in [0, 1].

    Args:
        decoder_output: "report" (last upsampling to 1 BatchNorm + ReLU channel, then a 1->1 conv) or
            "direct" (last upsampling straight to the image's logits, no BatchNorm or ReLU on them).
    """

    def __init__(self, latent_dim: int = 8, channels: tuple[int, ...] = (32, 64, 128, 256),
                 decoder_output: str = "report") -> None:
        super().__init__()
        if decoder_output not in DECODER_OUTPUTS:
            raise ValueError(f"unknown decoder_output {decoder_output!r}; allowed: {', '.join(DECODER_OUTPUTS)}")
        self.top_channels = channels[-1]
        self.side = 32 // 2 ** len(channels)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, self.top_channels * self.side * self.side), nn.ReLU(inplace=True)
        )
        widths = (*reversed(channels), 1)  # 256 -> 128 -> 64 -> 32 -> 1, as in the reference
        blocks = [_deconv_block(a, b) for a, b in zip(widths, widths[1:])]
        if decoder_output == "report":
            self.upsample = nn.Sequential(*blocks)
            self.out = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Sigmoid())
        else:  # the last block's transposed conv alone: (B, 1, 32, 32) logits
            self.upsample = nn.Sequential(*blocks[:-1], blocks[-1][0])
            self.out = nn.Sigmoid()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        grid = self.project(latent).view(-1, self.top_channels, self.side, self.side)  # (B, 256, 2, 2)
        return self.out(self.upsample(grid))  # (B, 1, 32, 32)


class VAE(nn.Module):
    """Encoder + decoder with the reparameterisation trick.

    forward(image) returns (reconstruction, mu, logvar); `encode_mean` is the deterministic
    encoding the cipher uses (the sender sends the posterior mean). With `num_classes` > 0,
    `class_head` maps the latent mean to class logits (B, K); it is a training aid only: the
    cipher's receiver is the separate LatentClassifier.
    """

    def __init__(self, latent_dim: int = 8, channels: tuple[int, ...] = (32, 64, 128, 256),
                 decoder_output: str = "report", num_classes: int = 0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.channels = tuple(channels)
        self.decoder_output = decoder_output
        self.encoder = Encoder(latent_dim, channels)
        self.decoder = Decoder(latent_dim, channels, decoder_output)
        self.class_head = nn.Linear(latent_dim, num_classes) if num_classes > 0 else None

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(image)
        latent = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(latent), mu, logvar

    def encode_mean(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)[0]


def vae_loss(
    reconstruction: torch.Tensor,
    image: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    recon_weight: float = 1.0,
    kl_weight: float = 0.7,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted negative ELBO, averaged over the batch.

    Reconstruction: binary cross-entropy summed over pixels (Bernoulli decoder). KL of the
    diagonal Gaussian posterior from N(0, I) in closed form, Kingma & Welling 2014, Appendix B:
    -0.5 * sum(1 + logvar - mu^2 - exp(logvar)). The report weights the KL term by 0.7.

    Returns:
        (total, reconstruction term, KL term), each a scalar per image.
    """
    batch = image.shape[0]
    # BCE is unsafe in reduced precision: compute it in float32.
    recon = F.binary_cross_entropy(reconstruction.float(), image.float(), reduction="sum") / batch
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch
    return recon_weight * recon + kl_weight * kl, recon, kl
