"""The plumbing the stages share: CSV outputs and what they log to MLflow (paths: crypson.layout)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and in containers

import mlflow  # noqa: E402
import torch  # noqa: E402

from crypson.evaluate.figures import grid_pixels  # noqa: E402
from crypson.files import atomic_write_bytes  # noqa: E402


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of equal keys -> CSV, atomically (DVC plots read these)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def log_image_grid(images: torch.Tensor, artifact_file: str, columns: int) -> None:
    """(N, 1, H, W) in [0, 1] -> one PNG grid in the active MLflow run."""
    mlflow.log_image(grid_pixels(images, columns), artifact_file)


def log_loss_curves(history: list[dict[str, float]], keys: list[str], artifact_file: str) -> None:
    """A matplotlib figure of the named per-epoch series, logged to the active run."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    epochs = range(1, len(history) + 1)
    for key in keys:
        axes.plot(epochs, [row[key] for row in history], label=key)
    axes.set_xlabel("epoch")
    axes.legend()
    figure.tight_layout()
    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)
