"""EMNIST in its official form: four gzip IDX files and a mapping file per split.

Source: Cohen et al., "EMNIST: an extension of MNIST to handwritten letters" (2017), and the NIST archive
https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip. The raw images are stored transposed; `load_emnist`
returns them upright and `write_emnist` stores them transposed again, so the two are exact inverses.
"""

from __future__ import annotations

import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crypson.data.idx import read_idx, write_idx
from crypson.files import atomic_write_bytes

EMNIST_ARCHIVE_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
IMAGE_SIDE = 28

# Lowercase letters EMNIST keeps as their own class in the balanced and bymerge splits; the other 15
# lowercase letters (c i j k l m o p s u v w x y z) are merged into their uppercase class.
_UNMERGED_LOWERCASE = "abdefghnqrt"

SPLIT_CLASSES: dict[str, tuple[str, ...]] = {
    "balanced": tuple(string.digits + string.ascii_uppercase + _UNMERGED_LOWERCASE),
    "bymerge": tuple(string.digits + string.ascii_uppercase + _UNMERGED_LOWERCASE),
    "byclass": tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase),
    # The letters files label A/a..Z/z as 1..26; Crypson uses 0..25 and names each class by its uppercase.
    "letters": tuple(string.ascii_uppercase),
    "digits": tuple(string.digits),
    "mnist": tuple(string.digits),
}
# Splits whose files count labels from 1 rather than 0.
_LABEL_OFFSET = {"letters": 1}


@dataclass(frozen=True)
class EmnistData:
    """One EMNIST split in memory, images upright.

    Attributes:
        train_images: (N, 28, 28) uint8, white glyph on black.
        train_labels: (N,) int64 class indices into `classes`.
        test_images: (M, 28, 28) uint8.
        test_labels: (M,) int64.
        classes: the character of each class, in label order.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


def _check_split(split: str) -> None:
    if split not in SPLIT_CLASSES:
        raise ValueError(f"unknown EMNIST split {split!r}; allowed: {', '.join(SPLIT_CLASSES)}")


def file_names(split: str) -> dict[str, str]:
    """The official file names of one split, as unpacked from NIST's gzip.zip.

    Args:
        split: one of SPLIT_CLASSES.

    Returns:
        Names keyed train_images, train_labels, test_images, test_labels, mapping.
    """
    _check_split(split)
    prefix = f"emnist-{split}"
    return {
        "train_images": f"{prefix}-train-images-idx3-ubyte.gz",
        "train_labels": f"{prefix}-train-labels-idx1-ubyte.gz",
        "test_images": f"{prefix}-test-images-idx3-ubyte.gz",
        "test_labels": f"{prefix}-test-labels-idx1-ubyte.gz",
        "mapping": f"{prefix}-mapping.txt",
    }


def read_mapping(path: Path, split: str) -> tuple[str, ...]:
    """Parse a mapping file: lines `label ascii_code`, or `label upper_code lower_code` for letters.

    Args:
        path: the mapping file.
        split: the split it belongs to (decides the column count and the label offset).

    Returns:
        The class characters in label order, labels counted from 0.
    """
    _check_split(split)
    columns = 3 if split == "letters" else 2
    offset = _LABEL_OFFSET.get(split, 0)
    chars: dict[int, str] = {}
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns or not all(field.isdigit() for field in fields):
            raise ValueError(f"{path}:{line_no}: expected {columns} integer columns for split {split!r}, got {line!r}")
        chars[int(fields[0]) - offset] = chr(int(fields[1]))
    if sorted(chars) != list(range(len(chars))):
        raise ValueError(f"{path}: labels must run {offset}..{len(chars) - 1 + offset}, got {sorted(chars)}")
    return tuple(chars[label] for label in range(len(chars)))


def _mapping_text(split: str) -> str:
    """The official mapping file contents for `split`."""
    offset = _LABEL_OFFSET.get(split, 0)
    lines = []
    for label, char in enumerate(SPLIT_CLASSES[split]):
        codes = f"{ord(char)} {ord(char.lower())}" if split == "letters" else f"{ord(char)}"
        lines.append(f"{label + offset} {codes}\n")
    return "".join(lines)


def _read_part(directory: Path, split: str, names: dict[str, str], part: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one of train/test: upright images and 0-based labels, validated."""
    images_path, labels_path = directory / names[f"{part}_images"], directory / names[f"{part}_labels"]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"{images_path}: expected (N, 28, 28) uint8 images, got {images.shape} {images.dtype}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected (N,) uint8 labels, got {labels.shape} {labels.dtype}")
    if len(images) != len(labels):
        raise ValueError(
            f"{split} {part}: {len(images)} images in {images_path} but {len(labels)} labels in {labels_path}"
        )
    offset, num_classes = _LABEL_OFFSET.get(split, 0), len(SPLIT_CLASSES[split])
    if len(labels) and (labels.min() < offset or labels.max() >= num_classes + offset):
        raise ValueError(
            f"{labels_path}: labels must lie in {offset}..{num_classes - 1 + offset} for split {split!r}, "
            f"found {labels.min()}..{labels.max()}"
        )
    # The files store each glyph transposed (column-major); transposing back makes it upright.
    upright = np.ascontiguousarray(images.transpose(0, 2, 1))
    return upright, labels.astype(np.int64) - offset


def load_emnist(directory: Path, split: str) -> EmnistData:
    """Load one split from the official files (gzip IDX + mapping) in `directory`.

    Args:
        directory: folder holding the files named by `file_names(split)`.
        split: one of SPLIT_CLASSES.

    Returns:
        The split with upright images and 0-based labels.

    Raises:
        ValueError: unknown split, malformed files, labels out of range, or a mapping that disagrees with
            the official classes.
        FileNotFoundError: a file is missing.
    """
    _check_split(split)
    directory = Path(directory)
    names = file_names(split)
    for name in names.values():
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"EMNIST file missing: {directory / name}. Get the official archive gzip.zip from NIST "
                f"({EMNIST_ARCHIVE_URL}), unpack it and put its emnist-{split}-* files into {directory}, "
                f"or call download_emnist()"
            )
    classes = read_mapping(directory / names["mapping"], split)
    if classes != SPLIT_CLASSES[split]:
        raise ValueError(
            f"{directory / names['mapping']}: classes {''.join(classes)!r} differ from the official "
            f"{split!r} classes {''.join(SPLIT_CLASSES[split])!r}"
        )
    train_images, train_labels = _read_part(directory, split, names, "train")
    test_images, test_labels = _read_part(directory, split, names, "test")
    return EmnistData(train_images, train_labels, test_images, test_labels, classes)


def _check_data(split: str, data: EmnistData) -> None:
    """Reject data that could not be read back by load_emnist."""
    if data.classes != SPLIT_CLASSES[split]:
        raise ValueError(f"classes {''.join(data.classes)!r} differ from the official {split!r} classes")
    num_classes = len(SPLIT_CLASSES[split])
    for part in ("train", "test"):
        images, labels = getattr(data, f"{part}_images"), getattr(data, f"{part}_labels")
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(f"{part}_images: expected (N, 28, 28) uint8, got {images.shape} {images.dtype}")
        if labels.shape != (len(images),):
            raise ValueError(f"{part}_labels: expected shape ({len(images)},), got {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{part}_labels: must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")


def write_emnist(directory: Path, split: str, data: EmnistData) -> None:
    """Write `data` as the official files of `split`: the exact inverse of `load_emnist`.

    Args:
        directory: destination folder (created if missing).
        split: one of SPLIT_CLASSES.
        data: upright images and 0-based labels; `data.classes` must equal SPLIT_CLASSES[split].
    """
    _check_split(split)
    _check_data(split, data)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names, offset = file_names(split), _LABEL_OFFSET.get(split, 0)
    for part in ("train", "test"):
        images, labels = getattr(data, f"{part}_images"), getattr(data, f"{part}_labels")
        # Stored transposed and with the split's label offset, exactly as NIST ships them.
        write_idx(directory / names[f"{part}_images"], images.transpose(0, 2, 1))
        write_idx(directory / names[f"{part}_labels"], (labels + offset).astype(np.uint8))
    atomic_write_bytes(directory / names["mapping"], _mapping_text(split).encode("ascii"))


def download_emnist(directory: Path, split: str) -> None:
    """Download EMNIST with torchvision and write `split` into `directory` in the official format.

    Needs the network (the NIST archive is about 560 MB). torchvision's tensors keep the raw transposed
    orientation and the raw labels (1..26 for letters), so both are converted to EmnistData's convention
    and `write_emnist` converts them back: the written files equal NIST's.

    Args:
        directory: destination folder (created if missing); the download is staged in a temp folder inside it.
        split: one of SPLIT_CLASSES.
    """
    from torchvision.datasets import EMNIST  # torchvision is heavy; only this function needs it

    _check_split(split)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    offset = _LABEL_OFFSET.get(split, 0)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".emnist-download-") as root:
        parts = {train: EMNIST(root, split=split, train=train, download=True) for train in (True, False)}
        data = EmnistData(
            train_images=parts[True].data.numpy().transpose(0, 2, 1),
            train_labels=parts[True].targets.numpy().astype(np.int64) - offset,
            test_images=parts[False].data.numpy().transpose(0, 2, 1),
            test_labels=parts[False].targets.numpy().astype(np.int64) - offset,
            classes=SPLIT_CLASSES[split],
        )
        write_emnist(directory, split, data)
