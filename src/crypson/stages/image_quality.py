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

from crypson.compute import derived_seed
from crypson.config import Config
from crypson.data.prepare import PreparedData
from crypson.evaluate import figures, quality
from crypson.evaluate.attacks import wilson_interval
from crypson.inference import chunked, sample_per_class
from crypson.files import atomic_write_bytes
from crypson.progress import Progress
from crypson.train.vae import reconstruction_grid, to_unit_range

FIGURES = ("samples_per_class.png", "reconstructions.png", "latent_pca.png", "latent_tsne.png")
CONSISTENCY_FIGURE = "class_consistency.png"


def figures_dir(root: Path) -> Path:
    """Where the report's PNG figures live (DVC plots, linked from reports/security_quality.md)."""
    return root / "reports" / "figures"


def _latents(vae, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(vae.parameters()).device
    return chunked(lambda batch: vae.encode_mean(batch.to(device)).float().cpu(), images, batch_size)


def truncation_key(level: float | None) -> str:
    """The metric name of class consistency at one truncation level of the cGAN's noise."""
    return "class_consistency_untruncated" if level is None else f"class_consistency_truncation_{level:g}"


def cgan_quality(config: Config, data: PreparedData, generator, generated: torch.Tensor,
                 generated_labels: torch.Tensor) -> tuple[dict[str, float], list[float]]:
    """Class consistency and Frechet distance of cGAN images, judged by a CNN trained on real images only.

    The judge only measures: it is trained here, on the real training split, and nothing else ever
    trains on its verdicts.

    Args:
        generator: the cGAN, sampled again at each of `evaluate.truncation_levels`.
        generated, generated_labels: (N, 1, 32, 32) fresh cGAN images in [0, 1] (CPU) at the generator's
            own truncation (what the cipher draws) and their classes.
    Returns:
        (metrics, per-class consistency). Metrics: reference_accuracy_real, the judge's accuracy on the
        real test split (its ceiling: every figure it produces is read beside it); class_consistency (+ 95%
        Wilson interval) and worst_class_consistency; class consistency at every truncation level;
        frechet_distance (real test vs cGAN images, in the judge's feature space) and
        frechet_distance_real_vs_real (real validation vs real test: the floor at these sample sizes).
    """
    train = to_unit_range(torch.from_numpy(data.train.images))
    test = to_unit_range(torch.from_numpy(data.test.images))
    val = to_unit_range(torch.from_numpy(data.val.images))
    progress = Progress("image quality", 3 + len(config.evaluate.truncation_levels))
    with progress.step(f"the judge: {config.evaluate.reference_epochs} epochs on {len(train)} real images"):
        judge = quality.train_reference_classifier(train, torch.from_numpy(data.train.labels), len(data.classes),
                                                   config.evaluate.reference_epochs, derived_seed(config.seed, "judge"))
    test_labels = torch.from_numpy(data.test.labels)
    correct = quality.predict(judge, generated) == generated_labels
    hits = int(correct.sum())
    low, high = wilson_interval(hits, len(generated_labels))
    per_class = [float(correct[generated_labels == c].float().mean()) for c in range(len(data.classes))]
    results = {
        "reference_accuracy_real": float((quality.predict(judge, test) == test_labels).float().mean()),
        "class_consistency": hits / len(generated_labels),
        "class_consistency_ci_low": low,
        "class_consistency_ci_high": high,
        "worst_class_consistency": min(per_class),
    }
    with progress.step("Frechet distances: cGAN vs real, real vs real"):
        results["frechet_distance"] = quality.frechet_distance(judge, test, generated)
        results["frechet_distance_real_vs_real"] = quality.frechet_distance(judge, test, val)
    own = generator.truncation
    try:
        for level in config.evaluate.truncation_levels:
            with progress.step(f"class consistency at truncation {level}"):
                generator.truncation = level
                images, labels = sample_per_class(generator, config.evaluate.generated_per_class,
                                                  derived_seed(config.seed, f"truncation-{level}"))
                results[truncation_key(level)] = float((quality.predict(judge, images) == labels).float().mean())
    finally:
        generator.truncation = own
    return results, per_class


def class_consistency_figure(per_class: list[float], classes: tuple[str, ...], judge_accuracy: float):
    """A bar a class: the share of its cGAN images the judge puts in it."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(6.0, 0.2 * len(classes)), 3.2))
    axes.bar(range(len(classes)), per_class, color="tab:blue")
    axes.set_xticks(range(len(classes)), classes, fontsize=7)
    axes.set_ylim(0, 1)
    axes.set_ylabel("class consistency")
    axes.set_title(f"cGAN class consistency per class (judge's accuracy on real test images: {judge_accuracy:.3f})",
                   fontsize=9)
    figure.tight_layout()
    return figure


def write_figures(config: Config, data: PreparedData, generator, vae, root: Path) -> list[Path]:
    """Sample grid per class (one row a class), VAE reconstructions, latent PCA and t-SNE by class."""
    out = figures_dir(root)
    settings = config.evaluate
    samples, _ = sample_per_class(generator, settings.grid_per_class, derived_seed(config.seed, "grid"))
    title = f"cGAN samples, one row a class (truncation {generator.truncation})"
    atomic_write_bytes(out / FIGURES[0], figures.class_grid_png(samples, settings.grid_per_class, data.classes, title))
    originals = torch.from_numpy(data.test.images[:: max(1, len(data.test.images) // 32)][:32])
    atomic_write_bytes(out / FIGURES[1], figures.image_grid_png(reconstruction_grid(vae, originals), 16))
    latents = _latents(vae, to_unit_range(torch.from_numpy(data.test.images)), settings.batch_size).numpy()
    progress = Progress("latent figures", 2)
    for name, method, limit in ((FIGURES[2], "pca", None), (FIGURES[3], "tsne", settings.tsne_points)):
        with progress.step(f"{method.upper()} of {min(len(latents), limit or len(latents))} latents"):
            points, rows = figures.project_latents(latents, method, config.seed, limit)
        title = f"VAE latent means of the real test split, {method.upper()} ({len(rows)} points)"
        atomic_write_bytes(out / name, figures.embedding_png(points, data.test.labels[rows], data.classes, title))
    return [out / name for name in FIGURES]


def log_figures(paths: list[Path]) -> None:
    """Each figure into the active MLflow run under figures/."""
    for path in paths:
        mlflow.log_artifact(str(path), "figures")
