"""Quality metrics: receiver-path predictions, accuracy and confusion matrix, PSNR and SSIM."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from crypson.models.classifier import LatentClassifier
from crypson.models.cgan import Generator
from crypson.models.vae import VAE


def psnr_per_image(reconstruction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each image: 10 log10(data_range^2 / MSE), (B, C, H, W) -> (B,)."""
    return peak_signal_noise_ratio(reconstruction, target, data_range=data_range, reduction="none",
                                   dim=tuple(range(1, target.ndim)))


def ssim(reconstruction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004, 11x11 Gaussian window) over a batch of (B, 1, H, W) images."""
    return float(structural_similarity_index_measure(reconstruction, target, data_range=data_range))


def confusion_matrix(predicted: torch.Tensor, actual: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts, rows = actual class, columns = predicted class."""
    return multiclass_confusion_matrix(predicted, actual, num_classes=num_classes)


def accuracy_from_confusion(confusion: torch.Tensor) -> tuple[float, list[float]]:
    """Overall accuracy and per-class recall (NaN for a class with no rows)."""
    confusion = confusion.double()
    per_class = (confusion.diagonal() / confusion.sum(1)).tolist()
    return float(confusion.diagonal().sum() / confusion.sum()), per_class


@torch.no_grad()
def receiver_predict(
    vae: VAE, classifier: LatentClassifier, images: torch.Tensor, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """The receiver path: image -> VAE posterior mean -> classifier.

    Args:
        images: (N, 1, 32, 32) in [0, 1].
    Returns:
        (predicted class indices (N,), reconstructions from the mean (N, 1, 32, 32)), on CPU.
    """
    device = next(vae.parameters()).device
    predicted, reconstructions = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        latent = vae.encode_mean(batch)
        predicted.append(classifier(latent).argmax(1).cpu())
        reconstructions.append(vae.decoder(latent).float().cpu())
    return torch.cat(predicted), torch.cat(reconstructions)


@torch.no_grad()
def generate_images(generator: Generator, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` fresh cGAN images of every class: ((N, 1, 32, 32) in [0, 1], labels (N,)), on CPU."""
    device = generator.label_embedding.weight.device
    labels = torch.arange(generator.num_classes, device=device).repeat_interleave(per_class)
    noise = generator.sample_noise(len(labels), torch.Generator(device=device).manual_seed(seed))
    images = generator.to_unit_range(generator(noise, labels))
    return images.float().cpu(), labels.cpu()
