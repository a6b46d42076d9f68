"""ImageScale: target sizes, centre crops, every filter, and the host's pixel limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodes.images.resample import rescale
from nodes.images.resize import target_size
from tests.diffusion_fixtures import diffusion_registry

METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")


def halves(height: int = 4, width: int = 8) -> torch.Tensor:
    """A (1, H, W, 3) picture: left half red, right half blue."""
    image = torch.zeros(1, height, width, 3)
    image[:, :, : width // 2, 0] = 1.0
    image[:, :, width // 2 :, 2] = 1.0
    return image


@pytest.mark.parametrize(
    "size,want,expected",
    [
        ((640, 480), (64, 64), (64, 64)),
        ((640, 480), (0, 48), (64, 48)),
        ((640, 480), (320, 0), (320, 240)),
        ((640, 480), (0, 0), (640, 480)),
        ((1, 1000), (0, 16384), (16, 16384)),
        ((1000, 1), (16384, 0), (16384, 16)),
        ((1, 100000), (16384, 0), (16384, 16384)),  # the derived side stays within bounds
    ],
)
def test_target_size(size, want, expected) -> None:
    assert target_size(*size, *want) == expected


def test_centre_crop_keeps_the_middle() -> None:
    square = rescale(halves(4, 8), 4, 4, "nearest-exact", "center")
    assert square.shape == (1, 4, 4, 3)
    assert torch.equal(square[0, :, :2, 0], torch.ones(4, 2))  # red on the left
    assert torch.equal(square[0, :, 2:, 2], torch.ones(4, 2))  # blue on the right
    tall = rescale(halves(8, 4), 4, 8, "nearest-exact", "center")
    assert torch.equal(tall, halves(8, 4))  # already that size and aspect ratio: unchanged


@pytest.mark.parametrize("method", METHODS)
def test_every_filter_resizes_within_range(method: str) -> None:
    image = torch.rand(2, 12, 20, 3)
    for size in ((7, 5), (40, 24)):
        out = rescale(image, *size, method, "disabled")
        assert out.shape == (2, size[1], size[0], 3) and out.dtype == image.dtype
        if method != "bicubic":  # bicubic may overshoot: ComfyUI does not clamp it
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        # a flat picture stays flat (up to 8-bit rounding for lanczos)
        flat = rescale(torch.full((1, 12, 20, 3), 0.4), *size, method, "disabled")
        assert torch.allclose(flat, torch.full_like(flat, 0.4), atol=1 / 255)


def test_nearest_doubles_pixels_and_area_averages_them() -> None:
    image = torch.arange(4.0).reshape(1, 2, 2, 1).expand(1, 2, 2, 3) / 4
    doubled = rescale(image, 4, 4, "nearest-exact", "disabled")
    assert torch.equal(doubled[0, :2, :2], image[0, :1, :1].expand(2, 2, 3))
    assert torch.equal(doubled[0, 2:, 2:], image[0, 1:, 1:].expand(2, 2, 3))
    area = rescale(image, 1, 1, "area", "disabled")
    assert torch.allclose(area, image.mean(dim=(1, 2), keepdim=True))


@pytest.fixture
def settings(tmp_path: Path) -> RunSettings:
    picture = np.zeros((30, 60, 3), dtype=np.uint8)
    picture[:, :30, 0] = 255
    picture[:, 30:, 2] = 255
    Image.fromarray(picture).save(tmp_path / "wide.png")
    return RunSettings(output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp", base_dir=tmp_path)


def scale(**inputs) -> dict:
    return {
        "load": {"class_type": "LoadImage", "inputs": {"image": "wide.png"}},
        "scale": {"class_type": "ImageScale", "inputs": {"image": ["load", 0], **inputs}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["scale", 0]}},
    }


def test_the_node_scales_a_loaded_picture(settings: RunSettings) -> None:
    executor = Executor(diffusion_registry())
    wf = scale(upscale_method="area", width=0, height=15, crop="disabled")
    result = executor.run(wf, settings)
    assert result.ok, result.error
    assert tuple(result.outputs["scale"][0].shape) == (1, 15, 30, 3)
    wf = scale(upscale_method="bilinear", width=16, height=16, crop="center")
    result = executor.run(wf, settings)
    assert result.ok, result.error
    out = result.outputs["scale"][0]
    assert tuple(out.shape) == (1, 16, 16, 3)
    assert float(out[0, 8, 2, 0]) > 0.99 and float(out[0, 8, 13, 2]) > 0.99  # red | blue


def test_the_host_pixel_limit_fails_the_node_clearly(settings: RunSettings) -> None:
    limited = RunSettings(**{**settings.__dict__, "options": {"max_image_pixels": 100 * 100}})
    result = Executor(diffusion_registry()).run(scale(width=200, height=0), limited)
    assert result.status == "failed" and result.error.node_id == "scale"
    assert "200 x 100 is 20000 pixels; the limit is 10000" in result.error.message


def test_the_catalogue_matches_comfyui() -> None:
    info = diffusion_registry().catalogue()["ImageScale"]
    required = info["input"]["required"]
    assert list(required) == ["image", "upscale_method", "width", "height", "crop"]
    assert required["upscale_method"][0] == list(METHODS)
    assert required["crop"][0] == ["disabled", "center"]
    assert info["output"] == ["IMAGE"]
