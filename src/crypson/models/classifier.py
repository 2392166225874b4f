"""Latent classifier: a frozen copy of the trained VAE decoder followed by a small MLP.

The report's receiver decodes the unmasked latent to an image and classifies that image; the
decoder is frozen so the classifier cannot drift the latent space the cipher relies on.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from crypson.models.vae import Decoder


class LatentClassifier(nn.Module):
    """latent (B, d) -> class logits (B, K) through the frozen decoder's 32x32 image.

    Args:
        decoder: the trained VAE decoder; a frozen copy is kept (the original is untouched).
        num_classes: number of classes K.
        hidden: width of the hidden layer (the reference: 512).
        dropout: dropout after the hidden layer (the reference: 0.2).
    """

    def __init__(self, decoder: Decoder, num_classes: int, hidden: int = 512, dropout: float = 0.2) -> None:
        super().__init__()
        self.decoder = copy.deepcopy(decoder)
        self.decoder.requires_grad_(False)
        self.decoder.eval()
        self.head = nn.Sequential(
            nn.Flatten(),  # (B, 1024)
            nn.Linear(32 * 32, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),  # (B, K)
        )

    def train(self, mode: bool = True) -> "LatentClassifier":
        # Keep the frozen decoder's BatchNorm in eval mode: the reference left it training,
        # which moved its running statistics and changed the decoder under the classifier.
        super().train(mode)
        self.decoder.eval()
        return self

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(latent))
