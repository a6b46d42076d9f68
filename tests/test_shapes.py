"""The procedural shapes data and its analytic checker (tools/shapes.py)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tools import shapes


def test_combinations_cover_all_168_once():
    combos = shapes.all_combinations()
    assert len(combos) == shapes.NUM_COMBINATIONS == 168
    assert len(set(combos)) == 168
    assert all(colour != background for _, colour, background in combos)
    assert {s for s, _, _ in combos} == set(shapes.SHAPES)


def test_consecutive_samples_are_balanced():
    counts = Counter(shapes.generate_sample(i, seed=3).caption for i in range(2 * 168))
    assert len(counts) == 168
    assert set(counts.values()) == {2}
    for key in ("shape", "colour", "background"):
        per = Counter(getattr(shapes.generate_sample(i, seed=3), key) for i in range(168))
        assert len(set(per.values())) == 1, (key, per)


def test_samples_are_seeded_and_deterministic():
    a, b = shapes.generate_sample(41, seed=5), shapes.generate_sample(41, seed=5)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    c = shapes.generate_sample(41, seed=6)
    assert c.caption == a.caption and not np.array_equal(a.image, c.image)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    assert shapes.generate_sample(0, resolution=128).image.shape == (128, 128, 3)


def test_captions_parse_back():
    for shape, colour, background in shapes.all_combinations():
        caption = shapes.make_caption(shape, colour, background)
        assert caption == f"a {colour} {shape} on a {background} background"
        assert shapes.parse_caption(caption) == (shape, colour, background)
    assert shapes.parse_caption("An orange square on a blue background") == (
        "square", "orange", "blue"
    )
    for bad in ("a red circle", "a red hexagon on a blue background", "a pink circle on a x"):
        with pytest.raises(ValueError):
            shapes.parse_caption(bad)


def test_caption_words_cover_every_caption():
    words = set(shapes.caption_words())
    for caption in shapes.all_captions():
        assert set(caption.split()) <= words


@pytest.mark.parametrize("name", shapes.COLOURS)
def test_classify_palette_colours(name):
    assert shapes.classify_colour(shapes.PALETTE[name]) == name


def test_checker_reads_generated_pictures():
    n, hits, worst_centroid = 504, Counter(), 0.0
    for i in range(n):
        sample = shapes.generate_sample(i, seed=11)
        result = shapes.check_image(sample.image)
        hits["shape"] += result.shape == sample.shape
        hits["colour"] += result.colour == sample.colour
        hits["background"] += result.background == sample.background
        worst_centroid = max(worst_centroid, math.dist(result.centroid, sample.centre))
    assert hits["colour"] == hits["background"] == n
    assert hits["shape"] >= 0.99 * n
    assert worst_centroid < 0.03


def test_checker_accepts_pil_and_float_images():
    sample = shapes.generate_sample(7)
    pil = Image.fromarray(sample.image)
    as_float = sample.image.astype(np.float32) / 255.0
    for image in (pil, as_float):
        result = shapes.check_image(image)
        assert result.matches(sample.shape, sample.colour, sample.background)
    assert shapes.check_caption(pil, sample.caption) == {
        "shape": True, "colour": True, "background": True
    }


def test_checker_on_blank_picture():
    blank = np.full((64, 64, 3), shapes.PALETTE["blue"], dtype=np.uint8)
    result = shapes.check_image(blank)
    assert result.background == "blue"
    assert result.shape is None and result.colour is None and result.centroid is None


def test_fill_ratios_classify():
    for shape, ratio in shapes.FILL_RATIOS.items():
        assert shapes.classify_fill_ratio(ratio) == shape


def test_save_sample_picture(tmp_path):
    path = shapes.save_sample_picture(tmp_path / "x.png", "triangle", "yellow", "purple")
    image = Image.open(path)
    assert image.size == (64, 64)
    assert shapes.check_image(image).matches("triangle", "yellow", "purple")


def test_a_recoloured_twin_keeps_the_picture_but_its_colour() -> None:
    sample = shapes.generate_sample(11, seed=3)
    twin = shapes.generate_sample(11, seed=3, colour="white")
    assert sample.colour != "white" and twin.colour == "white"
    assert (twin.shape, twin.background, twin.centre, twin.size) == (
        sample.shape, sample.background, sample.centre, sample.size
    )
    moved = np.any(sample.image != twin.image, axis=-1)
    assert shapes.check_image(twin.image).colour == "white"
    assert moved.any() and not moved[0].any()  # only the shape changed; the border did not
