"""An offline stand-in for EMNIST: font glyphs with random distortion, written in the EMNIST file format.

The pipeline can then run without a download. Each image is rendered large with PIL, distorted (rotation,
shear, scale, stroke width), fitted into a ~20x20 box and centred by mass in 28x28 as NIST did for MNIST
(LeCun et al. 1998), then blurred and noised. Which fonts were used is part of the data's identity and goes
into the manifest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib
import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from crypson.data.emnist import IMAGE_SIDE, SPLIT_CLASSES, EmnistData, write_emnist
from crypson.io import atomic_write_bytes

MANIFEST_NAME = "glyphs-manifest.json"
_FONT_SIZE = 48  # render size in px; glyphs are later shrunk to a ~20 px box
_CANVAS = 2 * _FONT_SIZE  # room for strokes, rotation and shear around the centred glyph
_BOX = 20  # MNIST/EMNIST fit each glyph into a 20x20 box inside 28x28
_ALL_CHARS = frozenset(char for classes in SPLIT_CLASSES.values() for char in classes)
# Lowercase letters EMNIST merges into their uppercase class (Cohen et al. 2017, balanced/bymerge).
_MERGED = frozenset("cijklmopsuvwxyz")


def _font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def missing_chars(font_path: Path, chars: frozenset[str] | set[str]) -> str:
    """The characters of `chars` that the font's cmap lacks, sorted (empty when it covers them all)."""
    with TTFont(font_path, lazy=True) as font:
        cmap = font.getBestCmap() or {}
    return "".join(sorted(char for char in chars if ord(char) not in cmap))


def default_font_paths() -> list[Path]:
    """The DejaVu faces matplotlib ships that cover every EMNIST class character, sorted by path."""
    candidates = sorted(_font_dir().glob("DejaVu*.ttf"))
    # DejaVuSansDisplay / DejaVuSerifDisplay carry only a handful of glyphs.
    return [path for path in candidates if not missing_chars(path, _ALL_CHARS)]


def resolve_fonts(names: list[str]) -> list[Path]:
    """Turn font names into paths.

    Args:
        names: file names inside matplotlib's ttf folder or absolute paths; empty means the defaults.

    Returns:
        One existing path per name, in the given order.
    """
    if not names:
        return default_font_paths()
    paths = []
    for name in names:
        path = Path(name) if Path(name).is_absolute() else _font_dir() / name
        if not path.is_file():
            available = ", ".join(sorted(p.name for p in _font_dir().glob("*.ttf")))
            raise FileNotFoundError(f"font {name!r} not found (looked at {path}); available: {available}")
        paths.append(path)
    return paths


@dataclass(frozen=True)
class GlyphStyle:
    """Random distortion applied to each glyph; every value is an upper bound or a range to draw from.

    Attributes:
        max_rotation_deg: rotation drawn from +-this, degrees.
        max_shear: horizontal shear factor drawn from +-this.
        scale_range: (low, high) factor on the 20 px box the glyph is fitted into.
        max_translate_px: shift of the centre of mass drawn from +-this, px in 28x28.
        stroke_width_max: PIL stroke width drawn from 0..this, px at render scale (48 px font).
        blur_sigma_max: Gaussian blur sigma drawn from 0..this, px in 28x28.
        noise_std: std of additive Gaussian noise, in [0, 1] intensity units.
    """

    max_rotation_deg: float = 12.0
    max_shear: float = 0.25
    scale_range: tuple[float, float] = (0.75, 1.05)
    max_translate_px: float = 2.0
    stroke_width_max: int = 2
    blur_sigma_max: float = 1.0
    noise_std: float = 0.04

    def __post_init__(self) -> None:
        checks = {
            "max_rotation_deg": (self.max_rotation_deg, 0.0, 45.0),
            "max_shear": (self.max_shear, 0.0, 1.0),
            "max_translate_px": (self.max_translate_px, 0.0, 4.0),
            "stroke_width_max": (self.stroke_width_max, 0, 6),
            "blur_sigma_max": (self.blur_sigma_max, 0.0, 3.0),
            "noise_std": (self.noise_std, 0.0, 0.5),
        }
        for name, (value, low, high) in checks.items():
            if not low <= value <= high:
                raise ValueError(f"GlyphStyle.{name}={value} must lie in [{low}, {high}]")
        if int(self.stroke_width_max) != self.stroke_width_max:
            raise ValueError(f"GlyphStyle.stroke_width_max={self.stroke_width_max} must be an integer")
        low, high = self.scale_range
        if not 0.3 <= low <= high <= 1.3:
            raise ValueError(f"GlyphStyle.scale_range={self.scale_range} must satisfy 0.3 <= low <= high <= 1.3")


@functools.lru_cache(maxsize=64)
def _font(font_path: Path) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path), _FONT_SIZE)


def _distort(glyph: Image.Image, rng: np.random.Generator, style: GlyphStyle) -> Image.Image:
    """Rotate and shear the large glyph about the canvas centre."""
    angle = math.radians(rng.uniform(-style.max_rotation_deg, style.max_rotation_deg))
    shear = rng.uniform(-style.max_shear, style.max_shear)
    cos, sin = math.cos(angle), math.sin(angle)
    # Forward map M = R @ S; PIL's transform wants the inverse map output -> input.
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    centre = np.array([_CANVAS / 2, _CANVAS / 2])
    shift = centre - inverse @ centre
    coeffs = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    return glyph.transform(glyph.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def render_glyph(char: str, font_path: Path, rng: np.random.Generator, style: GlyphStyle) -> np.ndarray:
    """Render one distorted character the way EMNIST shows it: white on black, upright, centred by mass.

    Args:
        char: a single character the font covers.
        font_path: a TrueType font file.
        rng: source of all randomness for this image.
        style: distortion bounds.

    Returns:
        (28, 28) uint8 image.
    """
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    stroke = int(rng.integers(0, style.stroke_width_max + 1))
    centre = (_CANVAS / 2, _CANVAS / 2)
    draw = ImageDraw.Draw(canvas)
    draw.text(centre, char, fill=255, font=_font(font_path), anchor="mm", stroke_width=stroke, stroke_fill=255)
    glyph = _distort(canvas, rng, style)
    glyph = glyph.crop(glyph.getbbox() or (0, 0, _CANVAS, _CANVAS))
    # Fit the longest side to a randomly scaled 20 px box, keeping the aspect ratio.
    side = _BOX * rng.uniform(*style.scale_range)
    ratio = side / max(glyph.size)
    size = (max(1, round(glyph.width * ratio)), max(1, round(glyph.height * ratio)))
    small = np.asarray(glyph.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    # Place the centre of mass at the image centre, plus a random shift.
    rows, cols = np.indices(small.shape)
    mass = max(float(small.sum()), 1e-6)
    com = np.array([(rows * small).sum(), (cols * small).sum()]) / mass
    shift = rng.uniform(-style.max_translate_px, style.max_translate_px, size=2)
    top, left = np.round(IMAGE_SIDE / 2 - 0.5 - com + shift).astype(int)
    image = Image.new("L", (IMAGE_SIDE, IMAGE_SIDE), 0)
    image.paste(Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)), (int(left), int(top)))
    sigma = rng.uniform(0.0, style.blur_sigma_max)
    if sigma > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(radius=sigma))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels += rng.normal(0.0, style.noise_std, size=pixels.shape).astype(np.float32)
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def _variants(split: str, class_char: str) -> str:
    """The characters drawn for a class: both cases where EMNIST merges them, else the class char."""
    if split == "letters" or (split in ("balanced", "bymerge") and class_char.lower() in _MERGED):
        return class_char.upper() + class_char.lower()
    return class_char


def _render_part(
    split: str, per_class: int, seed: int, stream: int, fonts: list[Path], style: GlyphStyle
) -> tuple[np.ndarray, np.ndarray]:
    """Render `per_class` images of every class from the random stream [seed, stream], shuffled."""
    classes = SPLIT_CLASSES[split]
    labels = np.random.default_rng([seed, stream]).permutation(np.repeat(np.arange(len(classes)), per_class))
    images = np.empty((len(labels), IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    seen = np.zeros(len(classes), dtype=np.int64)
    for index, label in enumerate(labels):
        # Cycle each class through the fonts; the stream shifts the cycle so that train and test never
        # pair the same (class, occurrence) with the same font.
        font = fonts[(seen[label] + label + stream) % len(fonts)]
        seen[label] += 1
        rng = np.random.default_rng([seed, stream, index])
        char = rng.choice(list(_variants(split, classes[label])))
        images[index] = render_glyph(str(char), font, rng, style)
    return images, labels.astype(np.int64)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def generate_glyphs(
    directory: Path,
    split: str,
    train_per_class: int,
    test_per_class: int,
    seed: int,
    fonts: list[Path],
    style: GlyphStyle,
) -> dict:
    """Render a class-balanced EMNIST-like split and write it in the official EMNIST format.

    Same arguments give byte-identical files. Train and test come from disjoint random streams.

    Args:
        directory: destination folder; gets the files of `file_names(split)` plus glyphs-manifest.json.
        split: one of SPLIT_CLASSES.
        train_per_class: training images per class.
        test_per_class: test images per class.
        seed: root of all randomness.
        fonts: TrueType files (see resolve_fonts); each must cover the split's characters.
        style: distortion bounds.

    Returns:
        The manifest written to glyphs-manifest.json.
    """
    if split not in SPLIT_CLASSES:
        raise ValueError(f"unknown EMNIST split {split!r}; allowed: {', '.join(SPLIT_CLASSES)}")
    for name, count in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if count < 1:
            raise ValueError(f"{name}={count} must be at least 1")
    if not fonts:
        raise ValueError("fonts is empty; pass resolve_fonts([]) for the default DejaVu faces")
    needed = {char for class_char in SPLIT_CLASSES[split] for char in _variants(split, class_char)}
    for font in fonts:
        if missing := missing_chars(font, needed):
            raise ValueError(f"font {font} cannot render {missing!r} needed by split {split!r}")
    train_images, train_labels = _render_part(split, train_per_class, seed, 0, fonts, style)
    test_images, test_labels = _render_part(split, test_per_class, seed, 1, fonts, style)
    data = EmnistData(train_images, train_labels, test_images, test_labels, SPLIT_CLASSES[split])
    write_emnist(directory, split, data)
    manifest = {
        "source": "glyphs",
        "split": split,
        "classes": "".join(SPLIT_CLASSES[split]),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "train_count": len(train_labels),
        "test_count": len(test_labels),
        "seed": seed,
        "style": {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(style).items()},
        "fonts": [{"name": Path(font).name, "sha256": _sha256(font)} for font in fonts],
    }
    atomic_write_bytes(Path(directory) / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest
