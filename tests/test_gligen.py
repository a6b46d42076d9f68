"""GLIGEN: ComfyUI's GLIGENLoader and GLIGENTextBoxApply on the tiny SD 1.x model, with a tiny
GLIGEN model the tests build (tests.gligen_cases: a position net and a gated self-attention
layer per attention block, in a file of the real layout).

Oracle: ComfyUI's own loader, node and KSampler on the same UNet and file
(tests/data/comfy_reference/gligen.*, made by tools/comfy_reference/make_gligen_reference.py).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.conditioning.gligen import GLIGEN_KEY, GLIGENTextBoxApply, add_box
from nodes.formats.tensors import CheckpointError
from nodes.loading.gligen_nodes import GLIGENLoader
from nodes.sampling.gligen import attention_blocks, fused
from nodes.sampling.ksampler import KSampler
from nodes.values import Conditioning, Gligen, Latent
from tests import comfy_cases as C
from tests import comfy_reference_data as R
from tests import gligen_cases as G
from tests.node_ctx import NodeCtx

MANIFEST = R.manifest("gligen")
LATENT_TOL = 1e-4

pytestmark = pytest.mark.usefixtures("reference_threads")


reference = functools.partial(R.tensors, "gligen")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gligen_models")
    (root / "gligen").mkdir()
    state = G.gligen_state(C.tiny_model(G.FAMILY).unet)
    save_file(state, str(root / "gligen" / "tiny_gligen.safetensors"))
    return root


def load(models: Path) -> Gligen:
    return GLIGENLoader(gligen_name="tiny_gligen.safetensors").invoke(
        NodeCtx({"models": [str(models)]})
    )


def boxed(gligen: Gligen, base: str, boxes: list[list[Any]]) -> Conditioning:
    cond = Conditioning.of(reference()[base])
    for text, width, height, x, y in boxes:
        cond = add_box(cond, gligen, reference()[text], width, height, x, y)
    return cond


def test_the_file_written_is_the_one_comfyui_ran(models):
    ours = load_file(models / "gligen" / "tiny_gligen.safetensors")
    theirs = {k[5:]: v for k, v in reference().items() if k.startswith("file.")}
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_the_loader_reads_a_layer_per_attention_block(models):
    gligen = load(models)
    assert gligen.weights.widths() == [32, 64, 32, 32]  # input 1, middle, output 2 and 3
    assert gligen.weights.key_dim == G.KEY_DIM
    unet = C.tiny_model(G.FAMILY).unet
    assert len(attention_blocks(unet)) == 4


def test_boxes_are_appended_in_latent_units_and_the_conditioning_is_copied(models):
    gligen = load(models)
    cond = Conditioning.of(reference()["cond"])
    one = add_box(cond, gligen, reference()["cat"], 20, 36, 17, 33)
    two = add_box(one, gligen, reference()["dog"], 64, 8, 0, 8)
    boxes = two.conds[0].extras[GLIGEN_KEY].boxes
    assert [(b.height, b.width, b.y, b.x) for b in boxes] == [(4, 2, 4, 2), (1, 8, 1, 0)]
    assert GLIGEN_KEY not in cond.conds[0].extras
    assert len(one.conds[0].extras[GLIGEN_KEY].boxes) == 1


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: c["name"])
def test_sampling_matches_comfyui(case: dict[str, Any], models) -> None:
    gligen = load(models)
    model = C.tiny_model(G.FAMILY)
    positive = boxed(gligen, "cond", case["positive"])
    if "positive2" in case:
        positive = Conditioning((*positive.conds, *boxed(gligen, "cond2", case["positive2"]).conds))
    sampled = KSampler(
        model=model, positive=positive, negative=boxed(gligen, "uncond", case.get("negative", [])),
        latent_image=Latent(torch.zeros(case.get("latent", [1, 4, 8, 8]))), **case["inputs"],
    ).invoke(NodeCtx())  # fmt: skip
    theirs = reference()[case["name"]]
    scale = max(1.0, float(theirs.abs().max()))
    assert float((sampled.samples - theirs).abs().max()) <= LATENT_TOL * scale


def test_the_boxes_steer_the_sample_and_the_model_is_left_as_it_was(models):
    gligen = load(models)
    model = C.tiny_model(G.FAMILY)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}

    def sample(positive: Conditioning) -> torch.Tensor:
        return KSampler(
            model=model, positive=positive, negative=Conditioning.of(reference()["uncond"]),
            latent_image=Latent(torch.zeros(1, 4, 8, 8)), **{**G.KSAMPLER, "steps": 2},
        ).invoke(NodeCtx()).samples  # fmt: skip

    plain = sample(Conditioning.of(reference()["cond"]))
    left = sample(boxed(gligen, "cond", [["cat", 32, 32, 0, 0]]))
    right = sample(boxed(gligen, "cond", [["cat", 32, 32, 32, 32]]))
    assert float((left - plain).abs().max()) > 1e-2 and float((left - right).abs().max()) > 1e-2
    assert torch.equal(sample(Conditioning.of(reference()["cond"])), plain)
    after = model.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not hasattr(model.unet, "position_net")


def test_the_node_encodes_the_phrase_with_the_clip(models):
    gligen = load(models)
    _, clip, _ = C.tiny_checkpoint(G.FAMILY)
    base = Conditioning.of(reference()["cond"])
    out = GLIGENTextBoxApply(
        conditioning_to=base, clip=clip, gligen_textbox_model=gligen, text="a cat",
        width=32, height=24, x=8, y=16,
    ).invoke(NodeCtx())  # fmt: skip
    (box,) = out.conds[0].extras[GLIGEN_KEY].boxes
    from nodes.conditioning.clip_nodes import CLIPTextEncode

    pooled = CLIPTextEncode(text="a cat", clip=clip).invoke(NodeCtx()).conds[0].pooled
    assert torch.equal(box.pooled, pooled.float()) and box.pooled.shape == (1, G.KEY_DIM)
    assert (box.height, box.width, box.y, box.x) == (3, 4, 2, 1)


def test_bad_files_and_misfits_are_clear_errors(models, tmp_path):
    (tmp_path / "gligen").mkdir()
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "gligen" / "lora.safetensors"))
    with pytest.raises(CheckpointError, match="lora.safetensors: not a GLIGEN model"):
        GLIGENLoader(gligen_name="lora.safetensors").invoke(NodeCtx({"models": [str(tmp_path)]}))
    gligen = load(models)
    wide = boxed(gligen, "cond", [["cat", 32, 32, 0, 0]])
    narrow = add_box(
        Conditioning.of(reference()["cond"]), gligen, torch.zeros(1, 16), 32, 32, 0, 0
    )
    with pytest.raises(ValueError, match="takes phrases encoded 32 wide; this CLIP's are 16"):
        KSampler(
            model=C.tiny_model(G.FAMILY), positive=narrow, negative=wide,
            latent_image=Latent(torch.zeros(1, 4, 8, 8)), **{**G.KSAMPLER, "steps": 1},
        ).invoke(NodeCtx())  # fmt: skip
    sdxl = C.tiny_model("sdxl").unet  # attention blocks of other widths
    misfit = r"widths \[32, 64, 32, 32\]; this model's are \[64"
    with pytest.raises(ValueError, match=misfit), fused(sdxl, gligen, torch.float32):
        pass
    assert not hasattr(sdxl, "position_net")
