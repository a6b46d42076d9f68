"""unCLIP: SD 2.x unCLIP checkpoints (unCLIPCheckpointLoader) and ComfyUI's unCLIPConditioning,
on the tiny random-weight "sd2_unclip" model of tests.family_fixtures (a v-prediction SD 2.x
UNet whose class label is a CLIP image embedding, with a tiny CLIP image encoder inside).

Oracle: ComfyUI's own node, adm and KSampler on the same UNet (tests/data/comfy_reference/
unclip.*, made by tools/comfy_reference/make_unclip_reference.py).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from nodes.conditioning.clip_nodes import CLIPTextEncode
from nodes.conditioning.unclip import UNCLIP_KEY, UnclipConditioning, class_label, sdxl_pooled
from nodes.formats.detect import detect
from nodes.formats.tensors import open_safetensors
from nodes.loading.checkpoints import folder_variant
from nodes.loading.unclip_nodes import UnclipCheckpointLoader
from nodes.sampling.ksampler import KSampler
from nodes.sampling.unet_inputs import UnetInputs
from nodes.values import ClipVisionOutput, Conditioning, Latent
from tests import comfy_cases as C
from tests import comfy_reference_data as R
from tests import family_fixtures as ff
from tests import unclip_cases as U
from tests.diffusion_fixtures import diffusion_registry
from tests.node_ctx import NodeCtx

MANIFEST = R.manifest("unclip")
LATENT_TOL = 1e-4

pytestmark = pytest.mark.usefixtures("reference_threads")


reference = functools.partial(R.tensors, "unclip")


def output(embeds: torch.Tensor) -> ClipVisionOutput:
    n = embeds.shape[0]
    return ClipVisionOutput(torch.zeros(n, 5, 32), torch.zeros(n, 5, 32), embeds)


def conditioning(base: str, entries: list[list[Any]]) -> Conditioning:
    cond = Conditioning.of(reference()[base])
    for name, strength, augmentation in entries:
        cond = UnclipConditioning(
            conditioning=cond,
            clip_vision_output=output(reference()[name]),
            strength=strength,
            noise_augmentation=augmentation,
        ).invoke(NodeCtx())
    return cond


def test_an_unclip_file_is_told_from_sdxl_and_loads_with_its_image_encoder():
    path = ff.single_file(U.FAMILY)
    variant = detect(open_safetensors(path))
    assert variant.name == "sd2-v-unclip" and variant.unclip
    ctx = NodeCtx({"models": [str(path.parent)]})
    out = UnclipCheckpointLoader(ckpt_name=path.name).invoke(ctx)
    assert out.model.unet.config.class_embed_type == "projection"
    assert out.model.unet.config.projection_class_embeddings_input_dim == 2 * U.EMBED
    assert out.model.scheduler_config["prediction_type"] == "v_prediction"
    ref = ff.build_pipeline(U.FAMILY).unet.state_dict()
    ours = out.model.unet.state_dict()
    assert ours.keys() == ref.keys()
    assert all(torch.equal(ours[k], ref[k]) for k in ref)  # label_emb -> class_embedding too
    assert out.clip is not None and out.vae is not None and not ctx.warnings
    assert out.clip_vision.model.config.projection_dim == U.EMBED
    # a plain checkpoint: its CLIP_VISION is empty, with a warning (as ComfyUI gives None)
    plain = ff.single_file("sd2")
    ctx = NodeCtx({"models": [str(plain.parent)]})
    assert UnclipCheckpointLoader(ckpt_name=plain.name).invoke(ctx).clip_vision is None
    assert any("no CLIP image encoder" in w for w in ctx.warnings)
    # SDXL files (label_emb too) are still SDXL
    assert detect(open_safetensors(ff.single_file("sdxl"))).name == "sdxl"


def test_a_diffusers_folder_with_a_projection_class_embedding_is_unclip(tmp_path):
    folder = ff.write_diffusers(U.FAMILY, tmp_path / "unclip")
    assert folder_variant(folder).name == "sd2-v-unclip"


def test_the_node_appends_entries_and_strength_zero_changes_nothing():
    cond = Conditioning.of(reference()["cond"])
    assert UnclipConditioning(
        conditioning=cond, clip_vision_output=output(reference()["one"]), strength=0.0
    ).invoke(NodeCtx()) is cond
    two = conditioning("cond", [["one", 1.0, 0.1], ["other", 0.5, 0.2]])
    entries = two.conds[0].extras[UNCLIP_KEY]
    assert [(e.strength, e.noise_augmentation) for e in entries] == [(1.0, 0.1), (0.5, 0.2)]
    assert UNCLIP_KEY not in cond.conds[0].extras  # a copy, not an edit
    registry = diffusion_registry()
    assert "unCLIPConditioning" in registry and "unCLIPCheckpointLoader" in registry


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: c["name"])
def test_class_labels_equal_comfyui_adm(case: dict[str, Any]) -> None:
    seed = case["inputs"]["seed"]
    for role, base in (("positive", "cond"), ("negative", "uncond")):
        cond = conditioning(base, case.get(role, []))
        ours = class_label(cond.conds[0].extras.get(UNCLIP_KEY, ()), 2 * U.EMBED, seed)
        theirs = reference()[f"{case['name']}.{role}_adm"]
        assert ours.shape == theirs.shape == (1, 2 * U.EMBED)
        assert float((ours - theirs).abs().max()) <= 1e-6, role


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: c["name"])
def test_sampling_matches_comfyui(case: dict[str, Any]) -> None:
    model, _, _ = C.tiny_checkpoint(U.FAMILY)
    ref = reference()
    shape = case.get("latent", [1, 4, 8, 8])
    source = ref["image"] if shape == "image" else torch.zeros(shape)
    sampled = KSampler(
        model=model,
        positive=conditioning("cond", case["positive"]),
        negative=conditioning("uncond", case.get("negative", [])),
        latent_image=Latent(source),
        **case["inputs"],
    ).invoke(NodeCtx())
    theirs = ref[case["name"]]
    scale = max(1.0, float(theirs.abs().max()))
    assert float((sampled.samples - theirs).abs().max()) <= LATENT_TOL * scale
    assert float(theirs.abs().max()) > 1.0


def test_the_picture_steers_the_sample_and_a_wrong_width_is_refused():
    model, _, _ = C.tiny_checkpoint(U.FAMILY)

    def sample(positive: Conditioning) -> torch.Tensor:
        return KSampler(
            model=model, positive=positive, negative=conditioning("uncond", []),
            latent_image=Latent(torch.zeros(1, 4, 8, 8)), **{**U.KSAMPLER, "steps": 2},
        ).invoke(NodeCtx()).samples  # fmt: skip

    plain, one = sample(conditioning("cond", [])), sample(conditioning("cond", [["one", 1, 0]]))
    other = sample(conditioning("cond", [["other", 1.0, 0.0]]))
    assert float((one - plain).abs().max()) > 1e-2 and float((one - other).abs().max()) > 1e-2
    wide = Conditioning.of(reference()["cond"])
    wide = UnclipConditioning(
        conditioning=wide, clip_vision_output=output(torch.ones(1, U.EMBED + 8)), strength=1.0
    ).invoke(NodeCtx())
    with pytest.raises(ValueError, match="32 wide; this model takes 24"):
        sample(wide)


@pytest.mark.parametrize("case", MANIFEST["sdxl_cases"], ids=lambda c: c["name"])
def test_sdxl_pooled_text_from_pictures_equals_comfyuis(case: dict[str, Any]) -> None:
    cond = conditioning("cond", case["entries"]).conds[0]
    ours = sdxl_pooled(cond.extras[UNCLIP_KEY], U.SDXL_WIDTH, case["seed"])
    theirs = reference()[case["name"]]
    assert ours.shape == theirs.shape == (1, U.SDXL_WIDTH)
    assert float((ours - theirs).abs().max()) <= 1e-6


def test_an_sdxl_revision_prompt_samples_with_the_pictures_as_pooled_text():
    model, clip, _ = C.tiny_checkpoint("sdxl")
    text = CLIPTextEncode(text="a cat", clip=clip).invoke(NodeCtx())
    revision = text
    for name, strength, augmentation in MANIFEST["sdxl_cases"][2]["entries"]:
        revision = UnclipConditioning(
            conditioning=revision, clip_vision_output=output(reference()[name]),
            strength=strength, noise_augmentation=augmentation,
        ).invoke(NodeCtx())  # fmt: skip
    latent = torch.zeros(1, 4, 8, 8)
    inputs = UnetInputs.build(model, latent, revision.conds[0], text.conds[0], seed=9)
    pooled = inputs.added["text_embeds"]
    assert torch.equal(pooled[0], text.conds[0].pooled[0])  # the negative keeps its text
    assert float((pooled[1] - reference()["sdxl.merged"][0]).abs().max()) <= 1e-6

    def sample(positive: Conditioning) -> torch.Tensor:
        return KSampler(
            model=model, positive=positive, negative=text, latent_image=Latent(latent),
            **{**U.KSAMPLER, "steps": 2, "seed": 9},
        ).invoke(NodeCtx()).samples  # fmt: skip

    assert float((sample(revision) - sample(text)).abs().max()) > 1e-3
