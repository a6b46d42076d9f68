"""CLIPVisionLoader + CLIPVisionEncode on a tiny random-weight encoder the tests build: its
config is read from its shapes in both key layouts (transformers', OpenCLIP's), its picture
preparation and its outputs equal ComfyUI 0.8.0's
(tools/comfy_reference/make_clip_vision_reference.py), and its outputs equal transformers' model
on pixels computed here by hand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodes.conditioning.clip_vision_encode import clip_preprocess, encode_image
from nodes.formats.clip_vision import CLIP_MEAN, CLIP_STD, vision_config, vision_state
from nodes.formats.tensors import CheckpointError
from nodes.loading import folders
from nodes.loading.clip_vision_nodes import FULL, STORE, load_clip_vision
from nodes.loading.folders import use_model_dirs
from nodes.values import ClipVisionOutput
from tests.clip_vision_fixtures import TINY, pictures, tiny_state, to_openclip
from tests.diffusion_fixtures import diffusion_registry

DATA = Path(__file__).parent / "data" / "comfy_reference" / "clip_vision.safetensors"
OUTPUTS = ("last_hidden_state", "penultimate_hidden_states", "image_embeds")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("clip_vision_root")
    folder = root / "clip_vision"
    (folder / "sd").mkdir(parents=True)
    state = tiny_state()
    save_file(state, str(folder / "tiny_vit.safetensors"))
    half = {k: v.half() for k, v in to_openclip(state).items()}
    save_file(half, str(folder / "sd" / "tiny_open_clip_fp16.safetensors"))
    unclip = {**to_openclip(state, "embedder.model.visual."), "model.diffusion_model.x": state[
        "visual_projection.weight"]}  # fmt: skip
    save_file(unclip, str(folder / "tiny_unclip_checkpoint.safetensors"))
    save_file({"foo.weight": torch.zeros(4, 4)}, str(folder / "not_a_clip.safetensors"))
    siglip = {"vision_model.embeddings.patch_embedding.weight": torch.zeros(32, 3, 4, 4)}
    save_file(siglip, str(folder / "siglip_like.safetensors"))
    use_model_dirs([root])
    STORE.clear()
    yield root
    STORE.clear()
    with folders._lock:  # leave the process's model folders as they were, for later tests
        folders._configured.remove(str(root))


def options(root: Path) -> dict:
    return {"models": [str(root)], "device": "cpu"}


def held(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's precision: float16, but the outer layer norms and the projection float32."""
    return {k: v if k.startswith(FULL) else v.half().float() for k, v in state.items()}


def reference_model() -> CLIPVisionModelWithProjection:
    """transformers' model with the tiny weights as ComfyUI holds them, in float32."""
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY)).eval()
    state = held(tiny_state())
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    return model


def test_the_config_is_read_from_the_shapes_in_both_layouts() -> None:
    state = tiny_state()
    config = vision_config(vision_state(state, "t"), "t")
    assert {k: config[k] for k in TINY} == TINY
    for prefix in ("visual.", "embedder.model.visual."):
        converted = vision_state(to_openclip(state, prefix), "t")
        assert set(converted) == set(state)
        assert all(torch.equal(converted[k], state[k]) for k in state)
    big = {k: v for k, v in state.items()}
    big["vision_model.encoder.layers.31.layer_norm1.weight"] = torch.ones(32)
    assert vision_config(big, "t")["hidden_act"] == "gelu"  # 32 layers: OpenCLIP ViT-H as ComfyUI


def test_the_files_load_in_both_layouts_with_comfyuis_precision(models: Path) -> None:
    a = load_clip_vision("tiny_vit.safetensors", options(models))
    assert load_clip_vision("tiny_vit.safetensors", options(models)) is a  # kept once loaded
    b = load_clip_vision("sd/tiny_open_clip_fp16.safetensors", options(models))
    c = load_clip_vision("tiny_unclip_checkpoint.safetensors", options(models))
    assert (a.image_size, a.mean, a.std, a.dtype) == (16, CLIP_MEAN, CLIP_STD, torch.float32)
    assert a.model.config.hidden_act == "quick_gelu" and a.model.config.num_hidden_layers == 3
    want = held(tiny_state())
    for clip in (a, c):
        got = clip.model.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
    want = {k: v.half().float() for k, v in tiny_state().items()}  # an fp16 file
    got = b.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("name", ["wide", "tall_rgba", "square"])
@pytest.mark.parametrize("crop", ["center", "none"])
def test_preprocessing_and_outputs_equal_comfyuis(name: str, crop: str, models: Path) -> None:
    reference = load_file(str(DATA))
    image = pictures()[name]
    pixels = clip_preprocess(image, 16, CLIP_MEAN, CLIP_STD, crop=crop == "center")
    assert pixels.shape == (image.shape[0], 3, 16, 16)
    torch.testing.assert_close(pixels, reference[f"{name}.{crop}.pixels"], rtol=0, atol=1e-6)
    clip = load_clip_vision("tiny_vit.safetensors", options(models))
    out = encode_image(clip, image, crop=crop == "center")
    for output in OUTPUTS:
        ours, theirs = getattr(out, output), reference[f"{name}.{crop}.{output}"]
        assert ours.shape == theirs.shape and float(theirs.std()) > 0.1
        torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-6)


def test_crop_modes_differ_on_a_non_square_picture() -> None:
    image = pictures()["wide"]
    center = clip_preprocess(image, 16, CLIP_MEAN, CLIP_STD, crop=True)
    squash = clip_preprocess(image, 16, CLIP_MEAN, CLIP_STD, crop=False)
    assert float((center - squash).abs().max()) > 0.1


def test_the_workflow_equals_transformers_on_pixels_made_by_hand(models: Path, tmp_path) -> None:
    square = pictures()["square"][0]
    Image.fromarray((square * 255).round().to(torch.uint8).numpy()).save(tmp_path / "in.png")
    wf = {
        "load": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "clip": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tiny_vit.safetensors"}},
        "enc": {"class_type": "CLIPVisionEncode",
                "inputs": {"clip_vision": ["clip", 0], "image": ["load", 0], "crop": "none"}},
        "show": {"class_type": "ShowValue", "inputs": {"value": ["enc", 0]}},
    }  # fmt: skip
    settings = RunSettings(input_dir=tmp_path, output_dir=tmp_path / "o", temp_dir=tmp_path / "t",
                           options=options(models))  # fmt: skip
    result = Executor(diffusion_registry()).run(wf, settings)
    assert result.ok, result.error
    out = result.outputs["enc"][0]
    assert isinstance(out, ClipVisionOutput) and out.mm_projected is None
    # by hand: the 16 x 16 picture needs no resizing, only 8-bit levels, CLIP's mean and std
    levels = (square * 255).round() / 255
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    pixels = ((levels - mean) / std).permute(2, 0, 1)[None]
    with torch.no_grad():
        want = reference_model()(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(out.image_embeds, want.image_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.last_hidden_state, want.last_hidden_state, rtol=0, atol=1e-5)
    penultimate = want.hidden_states[-2]
    torch.testing.assert_close(out.penultimate_hidden_states, penultimate, rtol=0, atol=1e-5)
    assert out.image_embeds.shape == (1, 24) and out.last_hidden_state.shape == (1, 17, 32)


def test_the_nodes_offer_the_folders_files(models: Path) -> None:
    catalogue = diffusion_registry().catalogue()
    loader, encode = catalogue["CLIPVisionLoader"], catalogue["CLIPVisionEncode"]
    names = loader["input"]["required"]["clip_name"][0]
    assert {"tiny_vit.safetensors", "sd/tiny_open_clip_fp16.safetensors"} <= set(names)
    assert loader["output"] == ["CLIP_VISION"] and encode["output"] == ["CLIP_VISION_OUTPUT"]
    assert encode["input"]["required"]["crop"][0] == ["center", "none"]
    assert encode["input_order"]["required"] == ["clip_vision", "image", "crop"]


@pytest.mark.parametrize(
    ("name", "message"),
    [("not_a_clip.safetensors", "does not contain a valid CLIP vision model"),
     ("siglip_like.safetensors", "without a class token (SigLIP or DINOv2)")],
)  # fmt: skip
def test_other_files_are_clear_errors(models: Path, name: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_clip_vision(name, options(models))


def test_unclip_entries_append_to_every_cond_in_order() -> None:
    from nodes.conditioning.unclip import UNCLIP_KEY, add_unclip
    from nodes.values import Cond, Conditioning

    def output(value: float) -> ClipVisionOutput:
        return ClipVisionOutput(*(torch.full((1, 2), value) for _ in range(3)))

    base = Conditioning((Cond(torch.zeros(1, 3, 4)), Cond(torch.ones(1, 3, 4), extras={"x": 1})))
    first = add_unclip(base, output(1.0), 1.0, 0.0)
    both = add_unclip(first, output(2.0), -0.5, 0.25)
    assert add_unclip(both, output(3.0), 0.0, 0.5) is both  # strength 0: unchanged
    assert UNCLIP_KEY not in base.conds[0].extras and len(first.conds[0].extras[UNCLIP_KEY]) == 1
    for cond in both.conds:
        entries = cond.extras[UNCLIP_KEY]
        got = [(float(e.clip_vision_output.image_embeds[0, 0]), e.strength, e.noise_augmentation)
               for e in entries]  # fmt: skip
        assert got == [(1.0, 1.0, 0.0), (2.0, -0.5, 0.25)]
    assert both.conds[1].extras["x"] == 1
