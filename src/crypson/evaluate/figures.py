"""The report's figures as PNG bytes (written atomically by the stages, logged to MLflow)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and in containers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def tile(images: torch.Tensor, columns: int, padding: int = 2, pad_value: float = 0.5) -> torch.Tensor:
    """(N, C, H, W) images -> one (3, H', W') grid, `columns` images a row (fewer when N is smaller),
    `padding` pixels of `pad_value` around each; grey images become RGB. torchvision's make_grid layout,
    without importing torchvision (seconds of start-up in every stage process)."""
    count, channels, height, width = images.shape
    if channels == 1:
        images = images.expand(-1, 3, -1, -1)
    across = min(columns, count)
    down = -(-count // across)
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_full((3, down * cell_h + padding, across * cell_w + padding), pad_value)
    for index in range(count):
        row, column = divmod(index, across)
        top, left = row * cell_h + padding, column * cell_w + padding
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def grid_pixels(images: torch.Tensor, columns: int) -> np.ndarray:
    """(N, 1, H, W) images in [0, 1] -> one tiled (H', W', 3) uint8 grid, `columns` images a row."""
    grid = tile(images.clamp(0, 1), columns)  # (3, H', W')
    return grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def image_grid_png(images: torch.Tensor, columns: int) -> bytes:
    """(N, 1, H, W) images in [0, 1] -> one PNG grid, `columns` images a row, grey padding."""
    buffer = io.BytesIO()
    Image.fromarray(grid_pixels(images, columns)).save(buffer, format="png")
    return buffer.getvalue()


def class_grid_figure(images: torch.Tensor, per_class: int, classes: tuple[str, ...] | list[str], title: str = ""):
    """A matplotlib figure of (K * per_class, 1, H, W) images in [0, 1], one row a class, the class
    character printed at the start of its row."""
    padding = 2
    grid = tile(images.clamp(0, 1), per_class, padding)  # (3, H', W')
    row_height = images.shape[-2] + padding
    figure, axes = plt.subplots(figsize=(1.0 + 0.32 * per_class, 0.3 * len(classes) + 0.6))
    axes.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    axes.set_yticks([padding + row_height * (row + 0.5) for row in range(len(classes))], list(classes), fontsize=8)
    axes.set_xticks([])
    axes.tick_params(length=0)
    if title:
        axes.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure


def class_grid_png(images: torch.Tensor, per_class: int, classes: tuple[str, ...] | list[str],
                   title: str = "") -> bytes:
    """class_grid_figure as PNG bytes."""
    return figure_png(class_grid_figure(images, per_class, classes, title))


def figure_png(figure) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def png_image(figure) -> np.ndarray:
    """A matplotlib figure as the (H, W, 4) uint8 pixels of its PNG (for mlflow.log_image); the figure is closed."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(figure_png(figure))).convert("RGBA"))


def project_latents(latents: np.ndarray, method: str, seed: int, max_points: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """2-d projection of (N, d) latents by PCA or t-SNE (van der Maaten & Hinton 2008).

    Args:
        method: "pca" or "tsne".
        max_points: t-SNE is O(N log N) but slow on a CPU: a seeded subsample of this many rows.
    Returns:
        ((M, 2) coordinates, (M,) indices of the rows used).
    """
    rows = np.arange(len(latents))
    if max_points is not None and len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), max_points, replace=False))
    # scikit-learn loads here, not with this module: only the evaluate stage draws projections.
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(latents[rows]), rows
    if method == "tsne":
        perplexity = min(30.0, (len(rows) - 1) / 3)  # sklearn needs perplexity < n_samples
        # 500 iterations (sklearn's default is 1000): the layout of a few thousand 8-d points settles
        # well before, and the stage's time budget is small
        projection = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=500, random_state=seed)
        return projection.fit_transform(latents[rows]), rows
    raise ValueError(f"unknown projection {method!r}; choose pca or tsne")


def embedding_png(points: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], title: str) -> bytes:
    """Scatter of 2-d points coloured by class, each class's character drawn at its median point."""
    figure, axes = plt.subplots(figsize=(7, 7))
    colours = plt.get_cmap("gist_ncar")(np.linspace(0, 0.95, len(classes)))
    axes.scatter(points[:, 0], points[:, 1], c=colours[labels], s=4, alpha=0.6, linewidths=0)
    for index, char in enumerate(classes):
        members = points[labels == index]
        if len(members):
            x, y = np.median(members, axis=0)
            axes.text(x, y, char, fontsize=9, weight="bold", ha="center", va="center",
                      bbox={"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.7, "lw": 0})
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    return figure_png(figure)


def noise_curve_png(levels: list[float], accuracy: dict[str, list[float]], chance: float) -> bytes:
    """Receiver accuracy against channel-noise standard deviation, one line per scheme."""
    figure, axes = plt.subplots(figsize=(6, 4))
    for scheme, values in accuracy.items():
        axes.plot(levels, values, marker="o", label=scheme)
    axes.axhline(chance, color="grey", linestyle="--", label="chance")
    axes.set_xlabel("channel noise std (latent units)")
    axes.set_ylabel("receiver accuracy")
    axes.set_ylim(0, 1)
    axes.legend()
    figure.tight_layout()
    return figure_png(figure)
