"""The offline glyph generator: determinism, balance, format and the manifest."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from crypson.data.emnist import SPLIT_CLASSES, file_names, load_emnist
from crypson.data.glyphs import (
    MANIFEST_NAME,
    GlyphStyle,
    default_font_paths,
    generate_glyphs,
    render_glyph,
    resolve_fonts,
)

FONTS = ["DejaVuSans.ttf", "DejaVuSerif-Bold.ttf"]


def generate(directory: Path, seed: int = 0, split: str = "digits", train: int = 3, test: int = 2) -> dict:
    return generate_glyphs(directory, split, train, test, seed, resolve_fonts(FONTS), GlyphStyle())


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    generate(tmp_path / "a", seed=5)
    generate(tmp_path / "b", seed=5)
    generate(tmp_path / "c", seed=6)
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    images = file_names("digits")["train_images"]
    assert (tmp_path / "a" / images).read_bytes() != (tmp_path / "c" / images).read_bytes()


def test_load_emnist_reads_balanced_counts_and_valid_images(tmp_path: Path) -> None:
    manifest = generate(tmp_path, split="balanced", train=2, test=1)
    data = load_emnist(tmp_path, "balanced")
    assert np.bincount(data.train_labels, minlength=47).tolist() == [2] * 47
    assert np.bincount(data.test_labels, minlength=47).tolist() == [1] * 47
    assert data.train_images.shape == (94, 28, 28) and data.train_images.dtype == np.uint8
    assert manifest["train_count"] == 94 and manifest["test_count"] == 47
    # Shuffled, not in class order.
    assert data.train_labels.tolist() != sorted(data.train_labels.tolist())


def test_images_look_like_emnist_white_glyph_centred_on_black(tmp_path: Path) -> None:
    generate(tmp_path, split="digits", train=10, test=2)
    images = load_emnist(tmp_path, "digits").train_images.astype(np.float64)
    assert images.max() == 255
    border = np.concatenate([images[:, :2].ravel(), images[:, -2:].ravel()])
    assert border.mean() < 15  # dark background, only noise near the edges
    ink = images * (images > 100)
    rows, cols = np.indices((28, 28))
    com_row = (ink * rows).sum(axis=(1, 2)) / ink.sum(axis=(1, 2))
    com_col = (ink * cols).sum(axis=(1, 2)) / ink.sum(axis=(1, 2))
    assert np.all(np.abs(com_row - 13.5) < 4) and np.all(np.abs(com_col - 13.5) < 4)


def test_train_and_test_share_no_identical_image(tmp_path: Path) -> None:
    generate(tmp_path, split="digits", train=8, test=8)
    data = load_emnist(tmp_path, "digits")
    train = {image.tobytes() for image in data.train_images}
    assert not any(image.tobytes() in train for image in data.test_images)


def test_manifest_records_split_seed_style_and_font_hashes(tmp_path: Path) -> None:
    returned = generate(tmp_path, seed=3)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest == returned
    assert manifest["split"] == "digits" and manifest["seed"] == 3
    assert manifest["style"]["scale_range"] == [0.75, 1.05]
    expected = [
        {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()} for path in resolve_fonts(FONTS)
    ]
    assert manifest["fonts"] == expected


def test_render_glyph_is_deterministic_per_rng() -> None:
    font = resolve_fonts(FONTS)[0]
    first = render_glyph("R", font, np.random.default_rng(1), GlyphStyle())
    again = render_glyph("R", font, np.random.default_rng(1), GlyphStyle())
    other = render_glyph("R", font, np.random.default_rng(2), GlyphStyle())
    assert first.shape == (28, 28) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_undistorted_glyph_is_upright() -> None:
    style = GlyphStyle(0.0, 0.0, (1.0, 1.0), 0.0, 0, 0.0, 0.0)
    glyph = render_glyph("L", resolve_fonts(["DejaVuSans.ttf"])[0], np.random.default_rng(0), style)
    rows, cols = np.nonzero(glyph > 128)
    left, bottom = cols.min(), rows.max()
    assert glyph[rows.min() : bottom, left].min() > 128  # vertical bar at the left
    assert glyph[bottom, left : cols.max()].min() > 128  # foot at the bottom
    assert glyph[rows.min(), cols.max()] < 128  # nothing at the top right


def test_default_fonts_skip_faces_without_the_class_characters() -> None:
    names = [path.name for path in default_font_paths()]
    assert "DejaVuSans.ttf" in names and "DejaVuSansDisplay.ttf" not in names
    assert names == sorted(names)
    assert resolve_fonts([]) == default_font_paths()


def test_resolve_fonts_missing_name_lists_available(tmp_path: Path) -> None:
    assert resolve_fonts([str(resolve_fonts(FONTS)[0])]) == resolve_fonts(FONTS)[:1]
    with pytest.raises(FileNotFoundError, match=r"'NoSuch.ttf'.*available:.*DejaVuSans.ttf"):
        resolve_fonts(["NoSuch.ttf"])


def test_font_without_needed_glyphs_is_rejected(tmp_path: Path) -> None:
    display = resolve_fonts(["DejaVuSansDisplay.ttf"])
    with pytest.raises(ValueError, match="DejaVuSansDisplay.ttf cannot render"):
        generate_glyphs(tmp_path, "digits", 1, 1, 0, display, GlyphStyle())


BAD_STYLES = [("max_rotation_deg", -1.0), ("noise_std", 0.9), ("scale_range", (1.0, 0.5)), ("stroke_width_max", 1.5)]


@pytest.mark.parametrize("field, value", BAD_STYLES)
def test_style_rejects_out_of_range_values(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        GlyphStyle(**{field: value})


def test_letters_split_uses_all_26_classes(tmp_path: Path) -> None:
    generate(tmp_path, split="letters", train=1, test=1)
    data = load_emnist(tmp_path, "letters")
    assert sorted(data.train_labels.tolist()) == list(range(26))
    assert data.classes == SPLIT_CLASSES["letters"]
