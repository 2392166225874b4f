"""An offline stand-in for EMNIST: font glyphs with random distortion, written in the EMNIST file format.

The pipeline can then run without a download. Each image is rendered large with PIL and distorted like a
writer would (rotation, shear, scale, stroke width; plus elastic distortion for handwriting fonts, Simard
et al. 2003), then converted the way EMNIST converted NIST's scans (Cohen et al. 2017, sec. II-A and
Fig. 1): Gaussian blur, region of interest = the character's bounding box, fitted with its aspect ratio into
a square frame with a 2-pixel border, bicubic downsampling to 28x28, intensities scaled to [0, 255]. The
background stays exactly 0 (no additive noise, no shift after centring). The older MNIST-like rendering
(20 px box centred by mass, random shift, additive noise; LeCun et al. 1998) is still reachable through
`centring="mass"`, `max_translate_px` and `noise_std`. Which fonts were used is part of the data's
identity and goes into the manifest.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib
import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter, map_coordinates

from crypson.data.emnist import IMAGE_SIDE, SPLIT_CLASSES, EmnistData, write_emnist
from crypson.files import atomic_write_bytes, file_sha256

MANIFEST_NAME = "glyphs-manifest.json"
STYLES = ("print", "handwriting")
CENTRINGS = ("bbox", "mass")
_FONT_SIZE = 48  # render size in px; glyphs are later shrunk to a 20-24 px box
_MARGIN = 2  # EMNIST pads the character's bounding box with a 2 px border in the square frame (Cohen et al.)
_MASS_BOX = 20  # MNIST fits each digit into a 20x20 box inside 28x28 and centres it by mass (LeCun et al.)
# Bicubic ringing and the blur's tails leave specks below 2% of the peak; they are background (EMNIST's
# backgrounds are exactly 0).
_FLOOR = 0.02
_ALL_CHARS = frozenset(char for classes in SPLIT_CLASSES.values() for char in classes)
# Lowercase letters EMNIST merges into their uppercase class (Cohen et al. 2017, balanced/bymerge).
_MERGED = frozenset("cijklmopsuvwxyz")
_DEBIAN_FONTS = Path("/usr/share/fonts")
# The handwriting faces Debian ships whose cmaps cover all 62 characters (0-9, A-Z, a-z) and whose lowercase
# letters are lowercase, by package (infra/local/apt-packages.txt installs them). Left out: fonts-bwht and
# fonts-humor-sans, which draw a-z as small capitals (EMNIST's lowercase classes a, b, d, ... would look like
# A, B, D, ...), and Breip.ttf of fonts-breip, an older build of breipfont.ttf (the same face drawn twice).
HANDWRITING_FONTS = {
    "fonts-breip": ("truetype/breip/breipfont.ttf",),
    "fonts-comic-neue": tuple(f"opentype/comic-neue/ComicNeue-{face}.otf"
                              for face in ("Bold", "BoldItalic", "Italic", "Light", "LightItalic", "Regular")),
    "fonts-dkg-handwriting": tuple(f"truetype/fifthhorseman/dkg{face}.ttf" for face in ("", "BI", "Bd", "It")),
    "fonts-femkeklaver": ("truetype/femkeklaver/femkeklaver.ttf",),
}


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


def style_fonts(style: str) -> list[Path]:
    """The font set of a named style, sorted by path: matplotlib's DejaVu faces or HANDWRITING_FONTS.

    Raises:
        FileNotFoundError: naming the Debian packages to install when a handwriting face is missing.
    """
    if style == "print":
        return default_font_paths()
    if style != "handwriting":
        raise ValueError(f"unknown glyph style {style!r}; allowed: {', '.join(STYLES)}")
    paths = {package: [_DEBIAN_FONTS / name for name in names] for package, names in HANDWRITING_FONTS.items()}
    if missing := sorted(package for package, files in paths.items() if not all(path.is_file() for path in files)):
        raise FileNotFoundError(
            f"style 'handwriting' needs the Debian font packages {', '.join(missing)} (fonts under {_DEBIAN_FONTS} "
            f"missing): run `make system-deps` or `apt-get install {' '.join(missing)}`"
        )
    return sorted(path for files in paths.values() for path in files)


def resolve_fonts(names: list[str], style: str = "print") -> list[Path]:
    """Turn font names into paths.

    Args:
        names: file names inside matplotlib's ttf folder or absolute paths; empty means the style's fonts.
        style: the named style whose font set `names=[]` stands for (see style_fonts).

    Returns:
        One existing path per name, in the given order.
    """
    if not names:
        return style_fonts(style)
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

    Sizes are in px of the 28x28 image unless said otherwise.

    Attributes:
        max_rotation_deg: rotation drawn from +-this, degrees.
        max_shear: horizontal shear factor drawn from +-this.
        scale_range: (low, high) factor on the box the glyph's longer side is fitted to (24 px for bbox
            centring, 20 px for mass centring).
        max_translate_px: shift after centring drawn from +-this (EMNIST: 0).
        stroke_width_max: PIL stroke width drawn from 0..this, px at render scale (48 px font).
        blur_sigma_max: Gaussian blur sigma drawn from 0..this.
        noise_std: std of additive Gaussian noise, in [0, 1] intensity units (EMNIST: 0).
        centring: "bbox" (EMNIST: bounding box centred with a 2 px border) or "mass" (MNIST: centre of mass
            at the image centre).
        elastic_alpha: scale of the elastic displacement field, Simard et al.'s alpha; 0 = none.
        elastic_sigma: Gaussian smoothing of the elastic field, Simard et al.'s sigma.
        name: the named style, one of STYLES (picks the default fonts, see style_fonts); recorded in the manifest.
    """

    max_rotation_deg: float = 12.0
    max_shear: float = 0.25
    scale_range: tuple[float, float] = (0.8, 1.0)
    max_translate_px: float = 0.0
    stroke_width_max: int = 2
    blur_sigma_max: float = 1.0
    noise_std: float = 0.0
    centring: str = "bbox"
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0
    name: str = "print"

    def __post_init__(self) -> None:
        checks = {
            "max_rotation_deg": (self.max_rotation_deg, 0.0, 45.0),
            "max_shear": (self.max_shear, 0.0, 1.0),
            "max_translate_px": (self.max_translate_px, 0.0, 6.0),
            "stroke_width_max": (self.stroke_width_max, 0, 6),
            "blur_sigma_max": (self.blur_sigma_max, 0.0, 3.0),
            "noise_std": (self.noise_std, 0.0, 0.5),
            "elastic_alpha": (self.elastic_alpha, 0.0, 100.0),
            "elastic_sigma": (self.elastic_sigma, 0.5, 10.0),
        }
        for name, (value, low, high) in checks.items():
            if not low <= value <= high:
                raise ValueError(f"GlyphStyle.{name}={value} must lie in [{low}, {high}]")
        if int(self.stroke_width_max) != self.stroke_width_max:
            raise ValueError(f"GlyphStyle.stroke_width_max={self.stroke_width_max} must be an integer")
        for name, value, allowed in (("centring", self.centring, CENTRINGS), ("name", self.name, STYLES)):
            if value not in allowed:
                raise ValueError(f"GlyphStyle.{name}={value!r}; allowed: {', '.join(allowed)}")
        low, high = self.scale_range
        if not 0.3 <= low <= high <= 1.3:
            raise ValueError(f"GlyphStyle.scale_range={self.scale_range} must satisfy 0.3 <= low <= high <= 1.3")
        if self.centring == "bbox" and high > 1.0:
            raise ValueError(f"GlyphStyle.scale_range={self.scale_range}: with centring 'bbox' the high end must "
                             f"be <= 1.0 to keep EMNIST's {_MARGIN} px border")


@functools.lru_cache(maxsize=64)
def _font(font_path: Path) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path), _FONT_SIZE)


def _draw(char: str, font_path: Path, stroke: int, max_shear: float) -> Image.Image:
    """The character white on black, its ink centred on a square canvas that shear and rotation cannot overflow."""
    font = _font(font_path)
    left, top, right, bottom = font.getbbox(char, anchor="ls", stroke_width=stroke)
    # A w x h box, sheared by s then rotated, stays inside the circle of diameter hypot(w, h) * (1 + s).
    side = math.ceil(math.hypot(right - left, bottom - top) * (1 + max_shear)) + 4
    canvas = Image.new("L", (side, side), 0)
    origin = (side / 2 - (left + right) / 2, side / 2 - (top + bottom) / 2)
    draw = ImageDraw.Draw(canvas)
    draw.text(origin, char, fill=255, font=font, anchor="ls", stroke_width=stroke, stroke_fill=255)
    return canvas


def _distort(glyph: Image.Image, rng: np.random.Generator, style: GlyphStyle) -> Image.Image:
    """Rotate and shear the large glyph about the canvas centre."""
    angle = math.radians(rng.uniform(-style.max_rotation_deg, style.max_rotation_deg))
    shear = rng.uniform(-style.max_shear, style.max_shear)
    cos, sin = math.cos(angle), math.sin(angle)
    # Forward map M = R @ S; PIL's transform wants the inverse map output -> input.
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    centre = np.array(glyph.size) / 2
    shift = centre - inverse @ centre
    coeffs = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    return glyph.transform(glyph.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def elastic_distort(
    image: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float, scale: float = 1.0
) -> np.ndarray:
    """Elastic distortion (Simard, Steinkraus & Platt 2003, sec. 2).

    Each displacement component is drawn uniform in [-1, 1] per pixel of a frame `scale` times coarser than
    the image, smoothed by a Gaussian of std `sigma` and multiplied by `alpha` (both in frame px); the image
    is resampled bilinearly at the displaced positions. With `scale` = image px per 28x28 px, alpha and sigma
    mean what they mean on MNIST (Simard et al.: 34 and 4).

    Args:
        image: (H, W) image; ink displaced past its edge is lost, so pad it first.
        rng: source of the displacement field.
        alpha: displacement scale, frame px.
        sigma: std of the smoothing Gaussian, frame px.
        scale: image px per frame px.

    Returns:
        (H, W) float32 image.
    """
    height, width = image.shape
    coarse = (max(1, math.ceil(height / scale)), max(1, math.ceil(width / scale)))
    noise = rng.uniform(-1.0, 1.0, size=(2, *coarse))  # (2, h, w): row and column displacement
    # The separable Gaussian smoothing, evaluated at the image's pixel centres: two matrix products.
    field = _gaussian_weights(height, coarse[0], sigma) @ noise @ _gaussian_weights(width, coarse[1], sigma).T
    coordinates = np.indices((height, width), dtype=np.float64) + field * (alpha * scale)  # (2, H, W), image px
    return map_coordinates(image.astype(np.float32), coordinates, order=1, mode="constant", cval=0.0)


@functools.lru_cache(maxsize=1024)
def _gaussian_weights(size_out: int, size_in: int, sigma: float) -> np.ndarray:
    """(size_out, size_in) unit-area Gaussian of std `sigma` (input px) between output and input pixel centres."""
    centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5  # output pixel centres, input px
    weights = np.exp(-0.5 * ((centres[:, None] - np.arange(size_in)) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    weights.flags.writeable = False  # shared through the cache
    return weights


def _elastic_reach(alpha: float, sigma: float) -> float:
    """How far elastic distortion moves ink, px of its frame: 4 std of the field, never more than alpha."""
    # Uniform [-1, 1] noise has variance 1/3; a unit-sum 2-D Gaussian of std sigma divides it by 4 pi sigma^2.
    std = alpha * math.sqrt(1 / 3) / (2 * math.sqrt(math.pi) * sigma)
    return min(4 * std, alpha)


def _crop(image: np.ndarray, floor: float) -> np.ndarray:
    """The bounding box of the pixels above `floor` (the whole image when there are none)."""
    rows, cols = np.nonzero(image > floor)
    if rows.size == 0:
        return image
    return image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _fit(region: np.ndarray, side: float) -> np.ndarray:
    """EMNIST's downsampling: the longer side to `side` px keeping the aspect ratio, bicubic, peak to 255."""
    ratio = side / max(region.shape)
    size = (max(1, round(region.shape[1] * ratio)), max(1, round(region.shape[0] * ratio)))
    small = Image.fromarray(region.astype(np.float32)).resize(size, Image.Resampling.BICUBIC)
    small = np.clip(np.asarray(small), 0.0, 255.0)
    small *= 255.0 / max(float(small.max()), 1e-6)  # Cohen et al.: intensities scaled to [0, 255]
    small[small < _FLOOR * 255.0] = 0.0
    return _crop(small, 0.0)


def _place(small: np.ndarray, rng: np.random.Generator, style: GlyphStyle) -> np.ndarray:
    """The (28, 28) frame with `small` centred by bounding box (EMNIST) or by mass (MNIST), plus any shift."""
    height, width = small.shape
    if style.centring == "bbox":
        corner = np.array([IMAGE_SIDE - height, IMAGE_SIDE - width]) / 2
    else:
        rows, cols = np.indices(small.shape)
        mass = max(float(small.sum()), 1e-6)
        corner = (IMAGE_SIDE - 1) / 2 - np.array([(rows * small).sum(), (cols * small).sum()]) / mass
    if style.max_translate_px > 0:
        corner = corner + rng.uniform(-style.max_translate_px, style.max_translate_px, size=2)
    top, left = (int(value) for value in np.round(corner))
    image = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    # A shifted character may stick out of the frame; its overhang is cut off.
    rows = slice(max(top, 0), min(top + height, IMAGE_SIDE))
    cols = slice(max(left, 0), min(left + width, IMAGE_SIDE))
    image[rows, cols] = small[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
    return image


def render_glyph(char: str, font_path: Path, rng: np.random.Generator, style: GlyphStyle) -> np.ndarray:
    """Render one distorted character the way EMNIST shows it: white on black, upright, in a 28x28 frame.

    Args:
        char: a single character the font covers.
        font_path: a TrueType or OpenType font file.
        rng: source of all randomness for this image.
        style: distortion bounds.

    Returns:
        (28, 28) uint8 image; with noise_std = 0 every pixel off the character is exactly 0.
    """
    stroke = int(rng.integers(0, style.stroke_width_max + 1))
    glyph = _distort(_draw(char, font_path, stroke, style.max_shear), rng, style)
    glyph = _crop(np.asarray(glyph, dtype=np.float32), 0.0)
    box = IMAGE_SIDE - 2 * _MARGIN if style.centring == "bbox" else _MASS_BOX
    side = box * rng.uniform(*style.scale_range)  # the character's longer side, px in 28x28
    scale = max(glyph.shape) / side  # render px per px in 28x28
    blur = rng.uniform(0.0, style.blur_sigma_max)
    # Room for the blur's tails and the elastic displacement around the ink.
    reach = 3.0 * blur + _elastic_reach(style.elastic_alpha, style.elastic_sigma)
    glyph = np.pad(glyph, math.ceil(scale * reach) + 2)
    if style.elastic_alpha > 0:
        glyph = elastic_distort(glyph, rng, style.elastic_alpha, style.elastic_sigma, scale)
    if blur > 0.05:
        # EMNIST blurs before it cuts out the region of interest, so the region includes the soft edge.
        glyph = gaussian_filter(glyph, blur * scale, truncate=3.0)
    image = _place(_fit(_crop(glyph, _FLOOR * float(glyph.max())), side), rng, style)
    if style.noise_std > 0:
        image += rng.normal(0.0, style.noise_std * 255.0, size=image.shape).astype(np.float32)
    return np.round(np.clip(image, 0.0, 255.0)).astype(np.uint8)


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
        raise ValueError("fonts is empty; pass resolve_fonts([], style.name) for the style's own fonts")
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
        "fonts": [{"name": Path(font).name, "sha256": file_sha256(font)} for font in fonts],
    }
    atomic_write_bytes(Path(directory) / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest
