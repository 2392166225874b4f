"""Raw EMNIST-format files -> padded train/val/test arrays and a per-image metadata table."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from crypson.files import atomic_directory

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # (N, 32, 32) uint8, upright, white glyph on black
    labels: np.ndarray  # (N,) int64 class indices


@dataclass(frozen=True)
class PreparedData:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    manifest: dict

    def split(self, name: str) -> ImageSet:
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)


def pad_to(images: np.ndarray, size: int = 32) -> np.ndarray:
    """Zero-pad (N, 28, 28) images evenly to (N, size, size), as the report does for 32x32 models."""
    height, width = images.shape[1:]
    if height > size or width > size:
        raise ValueError(f"images of {height}x{width} do not fit in {size}x{size}")
    top, left = (size - height) // 2, (size - width) // 2
    return np.pad(images, ((0, 0), (top, size - height - top), (left, size - width - left)))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) with `val_fraction` of every class in val (at least one row each)."""
    rng = np.random.default_rng(seed)
    train_rows, val_rows = [], []
    for class_index in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == class_index))
        cut = max(1, int(round(len(rows) * val_fraction)))
        val_rows.append(rows[:cut])
        train_rows.append(rows[cut:])
    return np.sort(np.concatenate(train_rows)), np.sort(np.concatenate(val_rows))


def metadata_table(splits: dict[str, ImageSet], classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per image: split, label, char, shape, pixel stats in [0, 1], NaN count, content hash."""
    frames = []
    for name, image_set in splits.items():
        pixels = image_set.images.reshape(len(image_set.images), -1).astype(np.float32) / 255.0
        frames.append(pd.DataFrame({
            "split": name,
            "index": np.arange(len(pixels)),
            "label": image_set.labels.astype(np.int64),
            "char": [classes[i] if 0 <= i < len(classes) else "?" for i in image_set.labels],
            "height": image_set.images.shape[1],
            "width": image_set.images.shape[2],
            "mean": pixels.mean(1), "std": pixels.std(1), "min": pixels.min(1), "max": pixels.max(1),
            "nan_count": np.isnan(pixels).sum(1),
            "sha256": [hashlib.sha256(image.tobytes()).hexdigest() for image in image_set.images],
        }))
    return pd.concat(frames, ignore_index=True)


def write_prepared(directory: Path, data: PreparedData) -> pd.DataFrame:
    """Write the three splits (npz), classes, manifest and metadata table atomically as one folder."""
    splits = {name: data.split(name) for name in SPLIT_NAMES}
    metadata = metadata_table(splits, data.classes)
    with atomic_directory(directory) as staging:
        for name, image_set in splits.items():
            np.savez(staging / f"{name}.npz", images=image_set.images, labels=image_set.labels)
        (staging / "classes.json").write_text(json.dumps(list(data.classes)) + "\n")
        (staging / "manifest.json").write_text(json.dumps(data.manifest, indent=2, sort_keys=True) + "\n")
        metadata.to_parquet(staging / "metadata.parquet", index=False)
    return metadata


def load_manifest(directory: Path) -> dict:
    """The prepared data's manifest (source, split, data version, counts) without loading the images."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no prepared data in {directory}: run the prepare stage first (dvc repro prepare)")
    return json.loads(path.read_text())


def load_prepared(directory: Path) -> PreparedData:
    """Read what `write_prepared` wrote."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    sets = {}
    for name in SPLIT_NAMES:
        with np.load(directory / f"{name}.npz") as arrays:
            sets[name] = ImageSet(arrays["images"], arrays["labels"].astype(np.int64))
    classes = tuple(json.loads((directory / "classes.json").read_text()))
    return PreparedData(**sets, classes=classes, manifest=manifest)


def hash_files(paths: list[Path]) -> str:
    """sha256 over file names and contents, in sorted order: the raw data's identity."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
