"""The evaluate stage's image-quality part: an independent judge of the cGAN, and the VAE's figures.

Called by `evaluation.evaluate` (not a stage of its own): the cGAN's class consistency and
Frechet distance in an independent CNN's feature space, a sample grid per class, the VAE's
reconstructions and its latent space (PCA and t-SNE) coloured by class. Figures go to
reports/figures/ (DVC plots), the numbers into metrics/evaluate.json.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import torch

from crypson.config import Config
from crypson.data.prepare import PreparedData
from crypson.evaluate import figures, quality
from crypson.evaluate.attacks import wilson_interval
from crypson.evaluate.metrics import generate_images
from crypson.io import atomic_write_bytes
from crypson.train.loop import derived_seed
from crypson.train.vae import reconstruction_grid, to_unit_range

FIGURES = ("samples_per_class.png", "reconstructions.png", "latent_pca.png", "latent_tsne.png")


def figures_dir(root: Path) -> Path:
    """Where the report's PNG figures live (DVC plots, linked from reports/security_quality.md)."""
    return root / "reports" / "figures"


@torch.no_grad()
def _latents(vae, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(vae.parameters()).device
    return torch.cat([vae.encode_mean(images[s : s + batch_size].to(device)).float().cpu()
                      for s in range(0, len(images), batch_size)])


def cgan_quality(config: Config, data: PreparedData, generated: torch.Tensor, generated_labels: torch.Tensor
                 ) -> dict[str, float]:
    """Class consistency and Frechet distance of cGAN images, judged by a CNN trained on real images only.

    Args:
        generated, generated_labels: (N, 1, 32, 32) fresh cGAN images in [0, 1] (CPU) and their classes.
    Returns:
        reference_accuracy_real: the judge's accuracy on the real test split (its ceiling);
        class_consistency (+ 95% Wilson interval): its accuracy on the cGAN images;
        frechet_distance: real test images vs cGAN images in the judge's 64-d feature space;
        frechet_distance_real_vs_real: real validation vs real test images, the floor at these sample sizes.
    """
    train = to_unit_range(torch.from_numpy(data.train.images))
    test = to_unit_range(torch.from_numpy(data.test.images))
    val = to_unit_range(torch.from_numpy(data.val.images))
    judge = quality.train_reference_classifier(train, torch.from_numpy(data.train.labels), len(data.classes),
                                               config.evaluate.reference_epochs, derived_seed(config.seed, "judge"))
    test_labels = torch.from_numpy(data.test.labels)
    hits = int((quality.predict(judge, generated) == generated_labels).sum())
    low, high = wilson_interval(hits, len(generated_labels))
    return {
        "reference_accuracy_real": float((quality.predict(judge, test) == test_labels).float().mean()),
        "class_consistency": hits / len(generated_labels),
        "class_consistency_ci_low": low,
        "class_consistency_ci_high": high,
        "frechet_distance": quality.frechet_distance(judge, test, generated),
        "frechet_distance_real_vs_real": quality.frechet_distance(judge, test, val),
    }


def write_figures(config: Config, data: PreparedData, generator, vae, root: Path) -> list[Path]:
    """Sample grid per class (one row a class), VAE reconstructions, latent PCA and t-SNE by class."""
    out = figures_dir(root)
    settings = config.evaluate
    samples, _ = generate_images(generator, settings.grid_per_class, derived_seed(config.seed, "grid"))
    atomic_write_bytes(out / FIGURES[0], figures.image_grid_png(samples, settings.grid_per_class))
    originals = torch.from_numpy(data.test.images[:: max(1, len(data.test.images) // 32)][:32])
    atomic_write_bytes(out / FIGURES[1], figures.image_grid_png(reconstruction_grid(vae, originals), 16))
    latents = _latents(vae, to_unit_range(torch.from_numpy(data.test.images)), settings.batch_size).numpy()
    for name, method, limit in ((FIGURES[2], "pca", None), (FIGURES[3], "tsne", settings.tsne_points)):
        points, rows = figures.project_latents(latents, method, config.seed, limit)
        title = f"VAE latent means of the real test split, {method.upper()} ({len(rows)} points)"
        atomic_write_bytes(out / name, figures.embedding_png(points, data.test.labels[rows], data.classes, title))
    return [out / name for name in FIGURES]


def log_figures(paths: list[Path]) -> None:
    """Each figure into the active MLflow run under figures/."""
    for path in paths:
        mlflow.log_artifact(str(path), "figures")
