"""Quality metrics: receiver-path predictions, accuracy and confusion matrix, PSNR and SSIM."""

from __future__ import annotations

import torch

from crypson.inference import chunked
from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE


def psnr_per_image(reconstruction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each image: 10 log10(data_range^2 / MSE), (B, C, H, W) -> (B,)."""
    mse = (reconstruction.float() - target.float()).pow(2).mean(dim=tuple(range(1, target.ndim)))
    return 10 * torch.log10(data_range**2 / mse)


def ssim(reconstruction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004, 11x11 Gaussian window) over a batch of (B, 1, H, W) images."""
    # torchmetrics loads here, not with this module: the training stages import this module and
    # torchmetrics costs seconds of start-up.
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(reconstruction, target, data_range=data_range))


def confusion_matrix(predicted: torch.Tensor, actual: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts, rows = actual class, columns = predicted class."""
    for name, values in (("predicted", predicted), ("actual", actual)):
        if len(values) and not 0 <= int(values.min()) <= int(values.max()) < num_classes:
            raise ValueError(f"{name} classes must lie in 0..{num_classes - 1}, got {int(values.min())}.."
                             f"{int(values.max())}")
    flat = actual.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy_from_confusion(confusion: torch.Tensor) -> tuple[float, list[float]]:
    """Overall accuracy and per-class recall (NaN for a class with no rows)."""
    confusion = confusion.double()
    per_class = (confusion.diagonal() / confusion.sum(1)).tolist()
    return float(confusion.diagonal().sum() / confusion.sum()), per_class


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

    def receive(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = vae.encode_mean(batch.to(device))
        return classifier(latent).argmax(1).cpu(), vae.decoder(latent).float().cpu()

    return chunked(receive, images, batch_size)

