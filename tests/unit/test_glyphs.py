"""The offline glyph generator: determinism, balance, format and the manifest."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import distance_transform_edt

from crypson.config import GlyphsConfig
from crypson.data import glyphs
from crypson.data.emnist import SPLIT_CLASSES, file_names, load_emnist
from crypson.data.glyphs import (
    HANDWRITING_FONTS,
    MANIFEST_NAME,
    GlyphStyle,
    default_font_paths,
    elastic_distort,
    generate_glyphs,
    missing_chars,
    render_glyph,
    resolve_fonts,
)

FONTS = ["DejaVuSans.ttf", "DejaVuSerif-Bold.ttf"]
REPO = Path(__file__).resolve().parents[2]
ALL_CHARS = "".join(SPLIT_CLASSES["byclass"])  # 0-9, A-Z, a-z
HANDWRITING = GlyphStyle(name="handwriting", elastic_alpha=34.0)


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


def ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the nonzero pixels, inclusive."""
    rows, cols = np.nonzero(image)
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_default_images_follow_emnist_bbox_centred_with_a_2px_border(tmp_path: Path) -> None:
    generate_glyphs(tmp_path, "balanced", 2, 1, 0, resolve_fonts([]), GlyphStyle())
    images = load_emnist(tmp_path, "balanced").train_images
    # Cohen et al. 2017: intensities scaled to [0, 255] per image.
    assert images.reshape(len(images), -1).max(axis=1).tolist() == [255] * len(images)
    for image in images:
        top, bottom, left, right = ink_box(image)
        # The bounding box, centred in the 28x28 frame (to half a pixel: 28 - an odd side cannot split evenly) ...
        assert abs((top + bottom) / 2 - 13.5) <= 0.5 and abs((left + right) / 2 - 13.5) <= 0.5
        # ... keeps the 2 px border; its longer side fills 24 px x scale (0.8-1.0), give or take a faint edge row.
        assert min(top, left) >= 2 and max(bottom, right) <= 25
        assert 24 * 0.8 - 2 <= max(bottom - top, right - left) + 1 <= 24


def test_full_scale_glyph_fills_the_frame_to_exactly_the_border() -> None:
    style = GlyphStyle(scale_range=(1.0, 1.0), blur_sigma_max=0.0)
    font = resolve_fonts(FONTS)[0]
    for index, char in enumerate("0Aa1gW"):
        top, bottom, left, right = ink_box(render_glyph(char, font, np.random.default_rng(index), style))
        assert max(bottom - top, right - left) + 1 == 24
        assert min(top, left, 27 - bottom, 27 - right) == 2


def test_default_background_is_exactly_zero_and_noise_is_opt_in() -> None:
    fonts = resolve_fonts([])
    noisy = GlyphStyle(noise_std=0.04)
    for index, char in enumerate(ALL_CHARS):
        rng = [3, index]
        image = render_glyph(char, fonts[index % len(fonts)], np.random.default_rng(rng), GlyphStyle())
        # Every nonzero pixel is part of a stroke or its soft edge: within 4 px of a pixel at half intensity.
        distance_to_ink = distance_transform_edt(image < 128)
        assert distance_to_ink[image > 0].max() <= 4, char
        far = distance_to_ink > 4
        assert far.sum() > 100  # most of the frame is background ...
        noised = render_glyph(char, fonts[index % len(fonts)], np.random.default_rng(rng), noisy)
        assert (noised[far] > 0).mean() > 0.2  # ... which additive noise, when asked for, would cover


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
    assert manifest["style"]["scale_range"] == [0.8, 1.0]
    assert manifest["style"]["name"] == "print" and manifest["style"]["centring"] == "bbox"
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


BAD_STYLES = [
    ("max_rotation_deg", -1.0), ("noise_std", 0.9), ("scale_range", (1.0, 0.5)), ("stroke_width_max", 1.5),
    ("scale_range", (0.8, 1.05)),  # bbox centring: past 1.0 the glyph would cross EMNIST's 2 px border
    ("centring", "middle"), ("name", "cursive"), ("elastic_alpha", -1.0), ("elastic_sigma", 0.0),
]


@pytest.mark.parametrize("field, value", BAD_STYLES)
def test_style_rejects_out_of_range_values(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        GlyphStyle(**{field: value})


def test_letters_split_uses_all_26_classes(tmp_path: Path) -> None:
    generate(tmp_path, split="letters", train=1, test=1)
    data = load_emnist(tmp_path, "letters")
    assert sorted(data.train_labels.tolist()) == list(range(26))
    assert data.classes == SPLIT_CLASSES["letters"]


def test_mass_centring_keeps_the_mnist_rendering() -> None:
    style = GlyphStyle(centring="mass", scale_range=(1.0, 1.0), blur_sigma_max=0.0)
    image = render_glyph("8", resolve_fonts(FONTS)[0], np.random.default_rng(0), style).astype(np.float64)
    rows, cols = np.indices(image.shape)
    centre = np.array([(rows * image).sum(), (cols * image).sum()]) / image.sum()
    np.testing.assert_allclose(centre, [13.5, 13.5], atol=0.6)
    top, bottom, left, right = ink_box(image)
    assert max(bottom - top, right - left) + 1 == 20  # MNIST's 20 px box


def test_elastic_distortion_with_alpha_zero_is_the_identity() -> None:
    image = np.pad(render_glyph("A", resolve_fonts(FONTS)[0], np.random.default_rng(0), GlyphStyle()), 6)
    image = image.astype(np.float32)
    for scale in (1.0, 2.5):
        np.testing.assert_array_equal(elastic_distort(image, np.random.default_rng(1), 0.0, 4.0, scale), image)


def test_elastic_distortion_moves_ink_but_keeps_its_mass_and_seed() -> None:
    glyph = render_glyph("B", resolve_fonts(FONTS)[0], np.random.default_rng(0), GlyphStyle(blur_sigma_max=0.0))
    image = np.kron(np.pad(glyph, 8), np.ones((2, 2))).astype(np.float32)  # (88, 88): render px at scale 2
    first = elastic_distort(image, np.random.default_rng(5), 34.0, 4.0, 2.0)
    again = elastic_distort(image, np.random.default_rng(5), 34.0, 4.0, 2.0)
    other = elastic_distort(image, np.random.default_rng(6), 34.0, 4.0, 2.0)
    np.testing.assert_array_equal(first, again)
    assert first.shape == image.shape and not np.array_equal(first, other)
    assert np.abs(first - image).mean() > 0.05 * image.mean()  # the strokes moved
    assert abs(first.sum() / image.sum() - 1) < 0.1  # a smooth field, nearly area-preserving


def test_handwriting_fonts_are_installed_and_cover_every_class_in_both_cases() -> None:
    # No skip: `make test` installs them (infra/local/apt-packages.txt); otherwise this names the packages.
    fonts = resolve_fonts([], "handwriting")
    assert len(fonts) == sum(len(names) for names in HANDWRITING_FONTS.values()) == 12
    for font in fonts:
        assert missing_chars(font, set(ALL_CHARS)) == "", font


def glyph_shape(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray:
    """The glyph's ink scaled to 16x16, zero-mean and unit-norm: its shape regardless of size."""
    canvas = Image.new("L", (120, 120), 0)
    ImageDraw.Draw(canvas).text((60, 60), char, fill=255, font=font, anchor="mm")
    shape = np.asarray(canvas.crop(canvas.getbbox()).resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float64)
    shape -= shape.mean()
    return shape / np.linalg.norm(shape)


def test_handwriting_lowercase_classes_are_not_drawn_as_capitals() -> None:
    # EMNIST balanced keeps a, b, d, e, f, g, h, n, q, r, t apart from their capitals; a font whose lowercase
    # are small capitals (fonts-bwht, fonts-humor-sans: mean correlation 0.67-0.86) would mislabel them.
    lowercase = [char for char in SPLIT_CLASSES["balanced"] if char.islower()]
    for path in resolve_fonts([], "handwriting"):
        font = ImageFont.truetype(str(path), 48)
        similarity = np.mean([(glyph_shape(font, char) * glyph_shape(font, char.upper())).sum() for char in lowercase])
        assert similarity < 0.5, f"{path.name}: lowercase look like capitals ({similarity:.2f})"


def test_handwriting_style_renders_all_47_classes_deterministically(tmp_path: Path) -> None:
    fonts = resolve_fonts([], "handwriting")
    manifest = generate_glyphs(tmp_path / "a", "balanced", 1, 1, 4, fonts, HANDWRITING)
    generate_glyphs(tmp_path / "b", "balanced", 1, 1, 4, fonts, HANDWRITING)
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    data = load_emnist(tmp_path / "a", "balanced")
    assert sorted(data.train_labels.tolist()) == list(range(47))
    assert manifest["style"]["name"] == "handwriting" and manifest["style"]["elastic_alpha"] == 34.0
    assert [font["name"] for font in manifest["fonts"]] == [path.name for path in fonts]
    for image in data.train_images:
        top, bottom, left, right = ink_box(image)
        assert min(top, left) >= 2 and max(bottom, right) <= 25 and image.max() == 255


def test_missing_handwriting_font_names_its_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(glyphs, "_DEBIAN_FONTS", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"fonts-breip, fonts-comic-neue.*make system-deps"):
        resolve_fonts([], "handwriting")
    with pytest.raises(ValueError, match="unknown glyph style 'cursive'; allowed: print, handwriting"):
        resolve_fonts([], "cursive")


def test_params_yaml_config_and_glyph_style_share_their_defaults() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())["data"]["glyphs"]
    config = GlyphsConfig().model_dump(mode="json")
    shared = {key: value for key, value in params.items() if key not in ("train_per_class", "test_per_class")}
    assert shared == {key: config[key] for key in shared}
    style = GlyphStyle()
    for key in ("max_rotation_deg", "max_shear", "max_translate_px", "stroke_width_max", "blur_sigma_max",
                "noise_std", "centring", "elastic_sigma"):
        assert getattr(style, key) == config[key], key
    assert list(style.scale_range) == config["scale_range"] and style.name == config["style"]


def test_make_system_deps_installs_every_handwriting_font_package() -> None:
    listed = (REPO / "infra" / "local" / "apt-packages.txt").read_text().split("\n")
    assert set(HANDWRITING_FONTS) <= {line.strip() for line in listed if not line.startswith("#")}
