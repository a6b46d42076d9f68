"""ComfyUI's mask and image nodes against ComfyUI's own numbers (tests/data/comfy_reference/
masks_images.*, made by tools/comfy_reference/make_mask_reference.py from ComfyUI 0.8.0's node
classes on seeded tensors and picture files).

Every case's outputs exactly; where ComfyUI fails, ours refuses with a ValueError naming the
input; each node's public inputs, outputs, category and display name as ComfyUI declares them;
and properties that need no oracle.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodegraph.registry import describe
from nodes.images import blend, composite, ops, outpaint, scale
from nodes.masks import composite as mask_composite
from nodes.masks import convert, feather, grow, load, solid
from tests.diffusion_fixtures import diffusion_registry
from tools.comfy_reference.make_mask_reference import write_picture

DATA = Path(__file__).parent / "data" / "comfy_reference"
MANIFEST = json.loads((DATA / "masks_images.json").read_text())
CASES = {case["name"]: case for case in MANIFEST["cases"]}
NODES = {
    cls.spec.type_name: cls
    for cls in (
        load.LoadImageMask, outpaint.ImagePadForOutpaint, convert.MaskToImage,
        convert.ImageToMask, solid.SolidMask, solid.InvertMask, grow.GrowMask,
        feather.FeatherMask, solid.CropMask, mask_composite.MaskComposite, ops.ImageInvert,
        blend.ImageBlend, ops.ImageCrop, ops.ImageBatch, scale.ImageScaleBy,
        scale.ImageScaleToTotalPixels, composite.ImageCompositeMasked,
    )
}  # fmt: skip


class Ctx:
    """A node context on the CPU (the host options a node reads, no events)."""

    def __init__(self, **options: Any) -> None:
        self.settings = RunSettings(options={"device": "cpu", **options})

    def progress(self, value: int, total: int, preview: Any = None) -> None: ...

    def check_interrupt(self) -> None: ...


@cache
def reference() -> dict[str, torch.Tensor]:
    return load_file(DATA / "masks_images.safetensors")


def run_ours(case: dict[str, Any], folder: Path) -> tuple[torch.Tensor, ...]:
    """Our node of `case` on the case's inputs; its outputs as a tuple."""
    inputs: dict[str, Any] = {}
    for name, value in case["inputs"].items():
        if isinstance(value, dict) and "tensor" in value:
            inputs[name] = reference()[value["tensor"]].clone()
        elif isinstance(value, dict) and "picture" in value:
            inputs[name] = str(write_picture(folder, value["picture"], reference()))
        else:
            inputs[name] = value
    out = NODES[case["node"]](**inputs).invoke(Ctx())
    return tuple(out.model_dump().values()) if hasattr(out, "model_dump") else (out,)


def names(where: str) -> list[str]:
    """Case names: with outputs ("outputs"), an empty output ("empty") or an error ("error")."""
    found = []
    for name, case in CASES.items():
        empty = "outputs" in case and any(reference()[k].numel() == 0 for k in case["outputs"])
        kind = "error" if "error" in case else "empty" if empty else "outputs"
        if kind == where:
            found.append(name)
    return found


def test_every_node_has_cases() -> None:
    assert {case["node"] for case in CASES.values()} == set(NODES)
    assert MANIFEST["comfyui_commit"].startswith("3cd7b32f1b7e")


@pytest.mark.parametrize("name", names("outputs"))
def test_matches_comfyui(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    ours = run_ours(case, tmp_path)
    assert len(ours) == len(case["outputs"])
    for got, key in zip(ours, case["outputs"], strict=True):
        want = reference()[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        assert torch.equal(got, want), f"{key}: off by {(got - want).abs().max():.3g}"


@pytest.mark.parametrize("name", names("error"))
def test_refuses_where_comfyui_fails(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    with pytest.raises(ValueError) as caught:
        run_ours(case, tmp_path)
    message = str(caught.value)
    assert any(message.startswith(n) or f" {n} " in message for n in case["inputs"]), message


@pytest.mark.parametrize("name", names("empty"))
def test_refuses_a_crop_comfyui_leaves_empty(name: str, tmp_path: Path) -> None:
    """ComfyUI's CropMask returns a 0-pixel mask for a start outside the mask (which the next
    node fails on); ours says so at once."""
    with pytest.raises(ValueError, match="^x = 9 is outside the mask"):
        run_ours(CASES[name], tmp_path)


def normalised(entry: list[Any]) -> tuple[Any, dict[str, Any]]:
    """Our catalogue entry of one input as the reference records ComfyUI's."""
    kind, options = entry
    if kind == "STRING" and options.get("image_upload"):
        kind = "IMAGE_FILE"
    return kind, {k: options[k] for k in ("default", "min", "max", "step") if k in options}


@pytest.mark.parametrize("node", sorted(NODES))
def test_public_contract_is_comfyuis(node: str) -> None:
    comfy, ours = MANIFEST["schemas"][node], describe(NODES[node])
    sections = {n: s for s in ("required", "optional") for n in ours["input"].get(s, {})}
    assert [(i["name"], i["section"]) for i in comfy["inputs"]] == list(sections.items())
    for item in comfy["inputs"]:
        kind, options = normalised(ours["input"][item["section"]][item["name"]])
        assert kind == item["type"], item["name"]
        if isinstance(kind, list):  # a ComfyUI combo defaults to its first choice
            assert options.pop("default") == item.get("default", kind[0])
        assert options == {k: v for k, v in item.items() if k not in ("name", "section", "type")}
    assert ours["output"] == comfy["outputs"]
    assert (ours["category"], ours["display_name"]) == (comfy["category"], comfy["display_name"])


# Properties that need no oracle.


def test_grow_makes_diamonds_or_squares_and_shrink_undoes_it() -> None:
    dot = torch.zeros(1, 15, 15)
    dot[0, 7, 7] = 1.0
    rows, cols = torch.meshgrid(torch.arange(15), torch.arange(15), indexing="ij")
    diamond = ((rows - 7).abs() + (cols - 7).abs() <= 3).float()
    square = (torch.maximum((rows - 7).abs(), (cols - 7).abs()) <= 3).float()
    assert torch.equal(grow.grow(dot, 3, tapered=True)[0], diamond)
    assert torch.equal(grow.grow(dot, 3, tapered=False)[0], square)
    assert torch.equal(grow.grow(grow.grow(dot, 3, False), -3, False), dot)
    assert torch.equal(grow.grow(dot, 40, True), torch.ones(1, 15, 15))  # stops once full
    assert torch.equal(grow.grow(dot, -1, True), torch.zeros(1, 15, 15))


def test_feather_ramps_and_comfyuis_right_edge_quirk() -> None:
    out = feather.FeatherMask(mask=torch.ones(1, 2, 8), left=4).invoke(Ctx())
    assert torch.equal(out[0, 0, :5], torch.tensor([0.25, 0.5, 0.75, 1.0, 1.0]))
    out = feather.FeatherMask(mask=torch.ones(1, 2, 8), right=4).invoke(Ctx())
    # ComfyUI counts from the right as pixel -i: i = 0 is the first column, not the last.
    assert torch.equal(out[0, 0], torch.tensor([0.25, 1, 1, 1, 1, 1.0, 0.75, 0.5]))


def test_outpaint_keeps_the_picture_and_masks_the_border() -> None:
    image = torch.rand(1, 20, 20, 3)
    node = outpaint.ImagePadForOutpaint(image=image, left=8, bottom=4, feathering=4)
    out = node.invoke(Ctx())
    assert torch.equal(out.image[:, :20, 8:28], image)
    assert bool((out.image[:, 20:] == 0.5).all()) and bool((out.image[:, :, :8] == 0.5).all())
    assert bool((out.mask[:, 20:] == 1).all()) and bool((out.mask[:, :, :8] == 1).all())
    inner = out.mask[0, :20, 8:]
    assert inner[10, :5].tolist() == [1.0, 0.5625, 0.25, 0.0625, 0.0]  # ((4 - d) / 4)^2
    assert inner[19, 10] == 0.5625 and inner[15, 10] == 0.0  # the bottom counts from 1
    assert bool((inner[:16, -1] == 0).all()), "the right side was not padded"


def test_composite_through_a_mask_of_another_size() -> None:
    destination, source = torch.zeros(1, 8, 8, 3), torch.ones(1, 8, 8, 3)
    half = torch.zeros(1, 2, 2)
    half[:, :, 1] = 1.0  # resized bilinear to 8 x 8: the right half, blended in between
    out = composite.ImageCompositeMasked(destination=destination, source=source, mask=half)
    result = out.invoke(Ctx())
    assert torch.equal(result[0, :, 0], torch.zeros(8, 3))
    assert torch.equal(result[0, :, 7], torch.ones(8, 3))
    unmasked = composite.ImageCompositeMasked(destination=destination, source=source, x=6, y=6)
    assert float(unmasked.invoke(Ctx()).sum()) == 2 * 2 * 3  # clipped at the corner


def test_resizes_honour_the_hosts_pixel_limit() -> None:
    image = torch.rand(1, 10, 10, 3)
    with pytest.raises(ValueError, match="the limit is 1000"):
        scale.ImageScaleBy(image=image, scale_by=4.0).invoke(Ctx(max_image_pixels=1000))
    node = outpaint.ImagePadForOutpaint(image=image, left=64)
    with pytest.raises(ValueError, match="the limit is 500"):
        node.invoke(Ctx(max_image_pixels=500))


def test_a_mask_workflow_runs_through_the_executor(tmp_path: Path) -> None:
    picture = write_picture(tmp_path, "rgba.png", reference())
    workflow = {
        "m": {"class_type": "LoadImageMask", "inputs": {"image": picture.name, "channel": "alpha"}},
        "g": {"class_type": "GrowMask", "inputs": {"mask": ["m", 0], "expand": -1}},
        "f": {"class_type": "FeatherMask", "inputs": {"mask": ["g", 0], "left": 2, "top": 0,
                                                      "right": 0, "bottom": 1}},
        "i": {"class_type": "MaskToImage", "inputs": {"mask": ["f", 0]}},
        "b": {"class_type": "ImageBlend", "inputs": {"image1": ["i", 0], "image2": ["i", 0],
                                                     "blend_factor": 0.5, "blend_mode": "screen"}},
        "c": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["b", 0],
                                                               "source": ["i", 0], "x": 1, "y": 1,
                                                               "resize_source": False}},
        "show": {"class_type": "ShowValue", "inputs": {"value": ["c", 0]}},
    }  # fmt: skip
    settings = RunSettings(base_dir=tmp_path, options={"device": "cpu"})
    result = Executor(diffusion_registry()).run(workflow, settings)
    assert result.ok, result.error
    assert result.outputs["c"][0].shape == (1, 6, 9, 3)
