"""Image-quality metrics that need a judge independent of the cipher's own networks.

The receiver's classifier was trained on cGAN images too, so its accuracy on cGAN images says
little about whether the images look like their class. An independent reference CNN, trained on
the REAL training split only, gives the cGAN's class consistency (its accuracy on generated
images) and a feature space for a Frechet distance (Heusel et al. 2017, "GANs trained by a two
time-scale update rule converge to a local Nash equilibrium": FID with Inception features; here
the features of a small CNN that knows these characters, as Inception on 32x32 glyphs would not).
"""

from __future__ import annotations

import torch
from torch import nn

from crypson.inference import chunked


class ReferenceCNN(nn.Module):
    """A small image classifier, (B, 1, 32, 32) in [0, 1] -> (B, K) logits, with a feature layer.

    Three conv + BatchNorm (Ioffe & Szegedy 2015) + ReLU + max-pool blocks, then a linear feature
    layer: the MNIST-style CNN of pytorch/examples, narrowed to train in well under a minute on a CPU.
    """

    def __init__(self, num_classes: int, width: int = 16, num_features: int = 128) -> None:
        super().__init__()
        self.num_features = num_features

        def block(in_channels: int, out_channels: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(out_channels), nn.ReLU(), nn.MaxPool2d(2))

        self.trunk = nn.Sequential(
            block(1, width),  # (B, w, 16, 16)
            block(width, 2 * width),  # (B, 2w, 8, 8)
            block(2 * width, 4 * width),  # (B, 4w, 4, 4)
            nn.Flatten(),  # (B, 64w)
            nn.Linear(16 * 4 * width, num_features),
            nn.ReLU(),  # (B, F): the feature space of the Frechet distance
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(num_features, num_classes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by its own random whole-pixel offset in [-max_shift, max_shift]^2, zero-filled
    (the translation augmentation of Simard et al. 2003, cheap enough to run every batch)."""
    if max_shift == 0:
        return images
    padded = nn.functional.pad(images, (max_shift,) * 4)
    side = images.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(side))[:, None, :, None]  # (B, 1, H, 1)
    cols = (offsets[:, 1, None] + torch.arange(side))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(len(images))[:, None, None, None]
    return padded[batch, 0, rows, cols]  # (B, 1, H, W)


class _FeatureView(nn.Module):
    """The reference CNN's feature layer as a module, the way torchmetrics' FID takes a custom extractor."""

    def __init__(self, model: ReferenceCNN) -> None:
        super().__init__()
        self.model = model
        self.num_features = model.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images)


def train_reference_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int,
                               seed: int, batch_size: int = 256, lr: float = 5e-3,
                               max_shift: int = 2) -> ReferenceCNN:
    """Train a ReferenceCNN with Adam on cross-entropy under a one-cycle schedule (Smith & Topin 2019)
    and random shifts; its own seeded RNG, the caller's is untouched.

    Args:
        images: (N, 1, 32, 32) float in [0, 1], the real training split.
        labels: (N,) int64 class indices.
        num_classes: K.
        epochs: passes over the data, >= 1.
        seed: seeds the initialisation, the shuffles and the shifts.
        max_shift: random translation in pixels applied to each training batch (0: none).
    Returns:
        The trained model in eval mode, on the CPU.
    """
    if epochs < 1 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need epochs >= 1 and as many labels as images, got epochs={epochs}, "
                         f"{len(images)} images, {len(labels)} labels")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReferenceCNN(num_classes)
        generator = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        steps = epochs * -(-len(images) // batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(images), batch_size):
                batch = order[start : start + batch_size]
                inputs = random_shift(images[batch], max_shift, generator)
                loss = nn.functional.cross_entropy(model(inputs), labels[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
    return model.eval()


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """(N, 1, 32, 32) -> (N,) int64 predicted classes."""
    return chunked(lambda batch: model(batch).argmax(1), images, batch_size)


@torch.no_grad()
def frechet_distance(model: ReferenceCNN, real: torch.Tensor, generated: torch.Tensor,
                     batch_size: int = 1024) -> float:
    """Frechet distance between Gaussians fitted to the reference CNN's features of two image sets.

    d^2 = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) (Dowson & Landau 1982), computed by
    torchmetrics' FrechetInceptionDistance with the CNN as its custom feature extractor.

    Args:
        real, generated: (N, 1, 32, 32) images in [0, 1], at least 2 each.
    """
    return frechet_distance_of_features(_FeatureView(model), real, generated, batch_size)


@torch.no_grad()
def frechet_distance_of_features(extractor: nn.Module, real: torch.Tensor, generated: torch.Tensor,
                                 batch_size: int = 1024) -> float:
    """The Frechet distance in the space of any extractor with a `num_features` attribute."""
    if len(real) < 2 or len(generated) < 2:
        raise ValueError(f"need at least 2 samples in each set, got {len(real)} and {len(generated)}")
    # torchmetrics loads here, not with this module: importing it (torchvision, dynamo) costs seconds in
    # every stage process that imports this module and never computes a distance (promote, attack).
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=extractor, normalize=True)
    for images, is_real in ((real, True), (generated, False)):
        for start in range(0, len(images), batch_size):
            metric.update(images[start : start + batch_size], real=is_real)
    return float(metric.compute())


def character_error_rate(decoded: list[str], references: list[str]) -> float:
    """Total Levenshtein edits / total reference characters over a corpus (torchmetrics' CER)."""
    if len(decoded) != len(references) or not references:
        raise ValueError(f"need as many decoded texts as references (> 0), got {len(decoded)} and {len(references)}")
    from torchmetrics.functional.text import char_error_rate

    return float(char_error_rate(decoded, references))
