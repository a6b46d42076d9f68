"""Procedural captioned shapes data and the analytic checker that grades pictures of it.

Every picture is one filled shape (circle, square or triangle) of one colour on a plain
background of another colour, captioned exactly like "a red circle on a blue background".
Pictures are drawn seeded and deterministically: sample ``i`` of seed ``s`` is always the
same picture, and the samples cycle through all 3 * 8 * 7 = 168 (shape, colour, background)
combinations so any 168 consecutive samples are perfectly balanced.

The checker (:func:`check_image`) reads a picture back without any model: background
colour from the border pixels, foreground colour by hue (lightness for white and black),
shape by fill ratio (area / bounding box: circle ~0.785, square ~1, triangle ~0.5) and the
foreground centroid.  Benchmarks import it to grade generated pictures.
"""

from __future__ import annotations

import colorsys
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")

#: The nominal RGB of each colour; drawn pictures jitter each channel a little around it.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "purple": (145, 50, 195),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}

CHROMATIC: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
#: Hue (degrees) of each chromatic colour, from the palette.
HUES: dict[str, float] = {
    name: colorsys.rgb_to_hsv(*(c / 255.0 for c in PALETTE[name]))[0] * 360.0
    for name in CHROMATIC
}

#: Fill ratio (area / bounding-box area) of each ideal shape.
FILL_RATIOS: dict[str, float] = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5}

NUM_COMBINATIONS = len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1)  # 168

_CAPTION_RE = re.compile(r"^\s*an? (\w+) (\w+) on an? (\w+) background\s*$")


@dataclass(frozen=True)
class Sample:
    """One drawn picture with its caption and ground truth."""

    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    shape: str
    colour: str
    background: str
    centre: tuple[float, float]  # (x, y) of the shape's centroid, as fractions of width / height
    size: float  # side of the shape's bounding box, as a fraction of the width


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check_image` reads from a picture; ``None`` where it could not tell."""

    shape: str | None
    colour: str | None
    background: str | None
    centroid: tuple[float, float] | None  # (x, y) as fractions of width / height
    fill_ratio: float | None
    area: float  # foreground area as a fraction of the picture

    def matches(self, shape: str, colour: str, background: str) -> bool:
        """True when shape, foreground colour and background colour are all right."""
        return (self.shape, self.colour, self.background) == (shape, colour, background)


# --------------------------------------------------------------------------- captions


def make_caption(shape: str, colour: str, background: str) -> str:
    """The caption of a picture, e.g. ``"a red circle on a blue background"`` (always "a")."""
    return f"a {colour} {shape} on a {background} background"


def parse_caption(caption: str) -> tuple[str, str, str]:
    """Read ``(shape, colour, background)`` back from a caption; raises ValueError if it is not one.

    Accepts "a"/"an" in either place, so "an orange square on a blue background" parses too.
    """
    match = _CAPTION_RE.match(caption.lower())
    if not match:
        raise ValueError(f"not a shapes caption: {caption!r}")
    colour, shape, background = match.groups()
    if shape not in SHAPES or colour not in COLOURS or background not in COLOURS:
        raise ValueError(f"unknown word in caption: {caption!r}")
    return shape, colour, background


def combination(index: int) -> tuple[str, str, str]:
    """The ``index``-th of the 168 (shape, colour, background) combinations, cycling."""
    index %= NUM_COMBINATIONS
    shape_i, rest = divmod(index, len(COLOURS) * (len(COLOURS) - 1))
    colour_i, bg_j = divmod(rest, len(COLOURS) - 1)
    bg_i = bg_j if bg_j < colour_i else bg_j + 1
    return SHAPES[shape_i], COLOURS[colour_i], COLOURS[bg_i]


def all_combinations() -> list[tuple[str, str, str]]:
    """All 168 (shape, colour, background) combinations, in a fixed order."""
    return [combination(i) for i in range(NUM_COMBINATIONS)]


def all_captions() -> list[str]:
    """The 168 distinct captions, in the order of :func:`all_combinations`."""
    return [make_caption(*c) for c in all_combinations()]


def caption_words() -> list[str]:
    """Every word that can occur in a caption."""
    words = ["a", "an", "on", "background", *SHAPES, *COLOURS]
    return list(dict.fromkeys(words))


# --------------------------------------------------------------------------- drawing


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    if amount <= 0:
        return tuple(rgb)
    noise = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + noise, 0, 255))


def draw_shape(
    shape: str,
    colour: str,
    background: str,
    resolution: int = 64,
    centre: tuple[float, float] = (0.5, 0.5),
    size: float = 0.5,
    rng: np.random.Generator | None = None,
    colour_jitter: int = 10,
    supersample: int = 4,
) -> np.ndarray:
    """Draw one anti-aliased shape; ``centre`` is the bounding-box centre, ``size`` its side.

    Both are fractions of ``resolution``.  A triangle is upright and isosceles, as wide as
    it is tall.  Returns an (H, W, 3) uint8 array.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}")
    rng = rng if rng is not None else np.random.default_rng(0)
    fg = _jitter(PALETTE[colour], rng, colour_jitter)
    bg = _jitter(PALETTE[background], rng, colour_jitter)
    big = resolution * supersample
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    cx, cy = centre[0] * big, centre[1] * big
    half = size * big / 2
    x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fg)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fg)
    else:
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fg)
    if supersample > 1:
        img = img.resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def sample_geometry(
    rng: np.random.Generator, min_size: float = 0.3, max_size: float = 0.6, margin: float = 0.06
) -> tuple[tuple[float, float], float]:
    """A random bounding-box (centre, size) that keeps the shape ``margin`` away from the border."""
    size = float(rng.uniform(min_size, max_size))
    lo, hi = margin + size / 2, 1.0 - margin - size / 2
    centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
    return centre, size


def _shape_centroid(shape: str, centre: tuple[float, float], size: float) -> tuple[float, float]:
    if shape == "triangle":  # centroid of an upright triangle sits 2/3 of the way down
        return centre[0], centre[1] + size / 6
    return centre


def generate_sample(
    index: int, seed: int = 0, resolution: int = 64, colour: str | None = None
) -> Sample:
    """Sample ``index`` of the dataset with ``seed``: combination ``index % 168``, seeded layout.

    With ``colour``, its recoloured twin: the same picture with another foreground colour.
    """
    shape, own_colour, background = combination(index)
    colour = colour or own_colour
    rng = np.random.default_rng([seed, index])
    centre, size = sample_geometry(rng)
    image = draw_shape(shape, colour, background, resolution, centre, size, rng)
    return Sample(
        image=image,
        caption=make_caption(shape, colour, background),
        shape=shape,
        colour=colour,
        background=background,
        centre=_shape_centroid(shape, centre, size),
        size=size,
    )


def generate_batch(
    start: int, count: int, seed: int = 0, resolution: int = 64
) -> tuple[np.ndarray, list[str]]:
    """Samples ``start .. start+count-1``: images as (N, H, W, 3) uint8 and their captions."""
    samples = [generate_sample(i, seed, resolution) for i in range(start, start + count)]
    return np.stack([s.image for s in samples]), [s.caption for s in samples]


def save_sample_picture(
    path: str | Path,
    shape: str,
    colour: str,
    background: str,
    resolution: int = 64,
    centre: tuple[float, float] = (0.5, 0.5),
    size: float = 0.5,
) -> Path:
    """Write a clean (unjittered) picture of a shape to ``path`` as PNG."""
    image = draw_shape(shape, colour, background, resolution, centre, size, colour_jitter=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


# --------------------------------------------------------------------------- checking


def classify_colour(rgb: tuple[float, float, float] | np.ndarray) -> str:
    """Name an RGB colour (0..255): white / black by lightness when unsaturated, else by hue."""
    r, g, b = (float(v) / 255.0 for v in rgb)
    h, lightness, s = colorsys.rgb_to_hls(r, g, b)
    chroma = max(r, g, b) - min(r, g, b)
    if chroma < 0.25:
        return "white" if lightness >= 0.5 else "black"
    hue = h * 360.0

    def hue_distance(name: str) -> float:
        d = abs(hue - HUES[name]) % 360.0
        return min(d, 360.0 - d)

    return min(CHROMATIC, key=hue_distance)


def _as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:  # floats in 0..1
        arr = np.clip(np.asarray(arr, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) picture, got shape {arr.shape}")
    return arr[..., :3]


def border_pixels(image: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of the outer ``width``-pixel ring, as an (N, 3) array."""
    top, bottom = image[:width].reshape(-1, 3), image[-width:].reshape(-1, 3)
    left, right = image[width:-width, :width].reshape(-1, 3), image[width:-width, -width:]
    return np.concatenate([top, bottom, left, right.reshape(-1, 3)])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best_label, best_size, label = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        label += 1
        labels[y0, x0] = label
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if size > best_size:
            best_label, best_size = label, size
    return labels == best_label if best_size else np.zeros_like(mask, dtype=bool)


def classify_fill_ratio(fill_ratio: float) -> str:
    """Shape from area / bounding-box area: triangle ~0.5, circle ~0.785, square ~1."""
    if fill_ratio >= 0.89:
        return "square"
    if fill_ratio >= 0.64:
        return "circle"
    return "triangle"


def check_image(image: np.ndarray | Image.Image, min_area: float = 0.01) -> CheckResult:
    """Read shape, foreground colour, background colour and centroid back from a picture.

    ``image`` is an (H, W, 3) uint8 array, a float array in 0..1, or a PIL image.  The
    background colour is the median of the border; the foreground is the largest connected
    region of pixels nearer the foreground colour than the background colour.
    """
    img = _as_rgb_array(image).astype(np.float32)
    h, w = img.shape[:2]
    bg_rgb = np.median(border_pixels(img), axis=0)
    background = classify_colour(bg_rgb)
    dist_bg = np.linalg.norm(img - bg_rgb, axis=2)
    rough = dist_bg > 60.0
    if rough.sum() < min_area * h * w:
        return CheckResult(None, None, background, None, None, float(rough.mean()))
    rough = largest_component(rough)
    # The colour of the shape's core (pixels far from the background, away from soft edges).
    core = rough & (dist_bg >= np.percentile(dist_bg[rough], 50))
    fg_rgb = np.median(img[core], axis=0)
    colour = classify_colour(fg_rgb)
    dist_fg = np.linalg.norm(img - fg_rgb, axis=2)
    mask = largest_component(dist_fg < dist_bg)
    area = float(mask.sum())
    if area < min_area * h * w:
        return CheckResult(None, colour, background, None, None, area / (h * w))
    ys, xs = np.nonzero(mask)
    box = float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    fill_ratio = area / box
    centroid = ((float(xs.mean()) + 0.5) / w, (float(ys.mean()) + 0.5) / h)
    return CheckResult(
        shape=classify_fill_ratio(fill_ratio),
        colour=colour,
        background=background,
        centroid=centroid,
        fill_ratio=fill_ratio,
        area=area / (h * w),
    )


def check_caption(image: np.ndarray | Image.Image, caption: str) -> dict[str, bool]:
    """Grade a picture against its caption: ``{"shape": ..., "colour": ..., "background": ...}``."""
    shape, colour, background = parse_caption(caption)
    result = check_image(image)
    return {
        "shape": result.shape == shape,
        "colour": result.colour == colour,
        "background": result.background == background,
    }


#: The pictures shipped under workflows/images (img2img inputs for workflows and benchmarks):
#: file stem -> (shape, colour, background, centre, size).
TEST_PICTURES: dict[str, tuple[str, str, str, tuple[float, float], float]] = {
    "red_circle_on_blue": ("circle", "red", "blue", (0.5, 0.5), 0.5),
    "yellow_square_on_purple": ("square", "yellow", "purple", (0.42, 0.55), 0.45),
    "white_triangle_on_green": ("triangle", "white", "green", (0.55, 0.45), 0.55),
    "orange_circle_on_black": ("circle", "orange", "black", (0.4, 0.4), 0.4),
}


def write_test_pictures(folder: str | Path, resolution: int = 64) -> list[Path]:
    """Write the :data:`TEST_PICTURES` as PNG files into ``folder``."""
    return [
        save_sample_picture(Path(folder) / f"{stem}.png", shape, colour, background, resolution,
                            centre, size)
        for stem, (shape, colour, background, centre, size) in TEST_PICTURES.items()
    ]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Draw the shapes data or check pictures of it.")
    ap.add_argument("--write-test-pictures", metavar="FOLDER", help="e.g. workflows/images")
    ap.add_argument("--resolution", type=int, default=128, help="the shipped model's size")
    ap.add_argument("--check", nargs="*", default=[], metavar="PNG", help="grade pictures")
    args = ap.parse_args(argv)
    if args.write_test_pictures:
        for path in write_test_pictures(args.write_test_pictures, args.resolution):
            print(path)
    for path in args.check:
        print(path, check_image(Image.open(path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
