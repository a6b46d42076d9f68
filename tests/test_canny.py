"""Canny: the edge maps of ComfyUI 0.8.0's own node (tools/comfy_reference/make_canny_reference.py)
on seeded pictures, pixel for pixel, through the node's inputs as ComfyUI declares them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodes.images.canny import canny_edges
from tests.diffusion_fixtures import diffusion_registry

DATA = Path(__file__).parent / "data" / "comfy_reference" / "canny.safetensors"


def reference() -> tuple[dict[str, torch.Tensor], list[tuple[float, float]]]:
    with safe_open(str(DATA), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        thresholds = [tuple(t) for t in json.loads(f.metadata()["thresholds"])]
    return tensors, thresholds


REF, THRESHOLDS = reference()


@pytest.mark.parametrize("case", range(len(THRESHOLDS)))
def test_edges_equal_comfyuis(case: int) -> None:
    low, high = THRESHOLDS[case]
    images = REF["images"].float() / 255.0
    ours = canny_edges(images, low, high)
    assert ours.shape == images.shape and ours.dtype == torch.float32
    assert torch.equal(ours[..., 0], ours[..., 2])  # white on black: three equal channels
    expected = REF[f"edges.{case}"].float()
    assert int((ours[..., 0] != expected).sum()) == 0, (low, high)
    assert expected.sum() > 100  # the pictures have edges at every threshold pair


def test_the_node_declares_comfyuis_inputs_and_runs(tmp_path: Path) -> None:
    entry = diffusion_registry().catalogue()["Canny"]
    assert entry["input_order"]["required"] == ["image", "low_threshold", "high_threshold"]
    for name in ("low_threshold", "high_threshold"):
        options = entry["input"]["required"][name][1]
        assert (options["min"], options["max"], options["step"]) == (0.01, 0.99, 0.01)
    assert entry["input"]["required"]["low_threshold"][1]["default"] == 0.4
    assert entry["input"]["required"]["high_threshold"][1]["default"] == 0.8
    assert entry["output"] == ["IMAGE"] and entry["category"] == "image/preprocessors"

    from PIL import Image

    Image.fromarray(REF["images"][2].numpy()).save(tmp_path / "picture.png")
    wf = {
        "load": {"class_type": "LoadImage", "inputs": {"image": "picture.png"}},
        "edges": {"class_type": "Canny", "inputs": {"image": ["load", 0]}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["edges", 0]}},
    }
    settings = RunSettings(input_dir=tmp_path, output_dir=tmp_path / "o", temp_dir=tmp_path / "t",
                           options={"device": "cpu"})  # fmt: skip
    result = Executor(diffusion_registry()).run(wf, settings)
    assert result.ok, result.error
    edges = result.outputs["edges"][0]  # the defaults, 0.4 and 0.8: the reference's first pair
    assert THRESHOLDS[0] == (0.4, 0.8)
    assert torch.equal(edges[0, ..., 0], REF["edges.0"][2].float())


def test_low_above_high_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"low_threshold \(0.9\) is above high_threshold"):
        canny_edges(torch.rand(1, 16, 16, 3), 0.9, 0.5)
