"""Checkpoints of every family as users have them: single files with nothing beside them and
diffusers folders, on tiny random-weight models the tests build (tests.family_fixtures)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodes.formats.detect import detect
from nodes.formats.tensors import CheckpointError, open_safetensors
from nodes.loading import checkpoints as C
from nodes.loading.folders import list_models, use_model_dirs
from tests import family_fixtures as ff
from tests.diffusion_fixtures import diffusion_registry

FAMILY_NAMES = {
    "sd1": "sd1",
    "sd1_inpaint": "sd1-inpaint",
    "sd1_ip2p": "sd1-ip2p",
    "sd2": "sd2",
    "sd2_v": "sd2-v",
    "sdxl": "sdxl",
    "sdxl_refiner": "sdxl_refiner",
    "sdxl_inpaint": "sdxl-inpaint",
}
PROMPT = "a red circle on blue"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A ComfyUI-style models folder: every family as a single file and as a diffusers folder."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    (root / "diffusers").mkdir()
    for family in FAMILY_NAMES:
        (root / "checkpoints" / f"{family}.safetensors").symlink_to(ff.single_file(family))
        (root / "diffusers" / family).symlink_to(ff.diffusers_folder(family))
    half = root / "checkpoints" / "half"
    half.mkdir()
    (half / "sdxl-fp16.safetensors").symlink_to(ff.single_file("sdxl", dtype=torch.float16))
    (half / "sd1-bf16.safetensors").symlink_to(ff.single_file("sd1", dtype=torch.bfloat16))
    use_model_dirs([root])  # as --models does: the loaders' choices list these
    return root


@pytest.fixture(scope="module")
def options(models) -> dict:
    return {"models": [str(models)], "device": "cpu"}


@pytest.fixture(scope="module")
def executor(models) -> Executor:
    return Executor(diffusion_registry())


@pytest.fixture
def settings(tmp_path, options) -> RunSettings:
    return RunSettings(output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp", options=options)


@pytest.mark.parametrize("family", list(FAMILY_NAMES))
def test_the_family_is_read_from_the_tensors(family):
    assert detect(open_safetensors(ff.single_file(family))).name == FAMILY_NAMES[family]
    assert C.folder_variant(ff.diffusers_folder(family)).name == FAMILY_NAMES[family]


def test_models_are_listed_with_kind_format_and_family(models):
    listed = {m.name: m for m in list_models("checkpoints", [str(models)])}
    assert listed["sdxl.safetensors"].format == "safetensors"
    assert listed["sdxl_refiner"].format == "diffusers"
    assert C.describe(listed["sd2_v.safetensors"]) == "sd2-v"
    assert C.describe(listed["half/sdxl-fp16.safetensors"]) == "sdxl"


@pytest.mark.parametrize("family", list(FAMILY_NAMES))
def test_a_single_file_equals_its_diffusers_folder(family, options):
    model, clip, vae = C.load_checkpoint(f"{family}.safetensors", options)
    ref_model, ref_clip, ref_vae = C.load_checkpoint(family, options)
    assert model.family == ref_model.family and model.latent_scale == ref_model.latent_scale
    for ours, theirs in ((model.unet, ref_model.unet), (vae.vae, ref_vae.vae)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, model.unet.config.in_channels, 8, 8, generator=g)
    context = torch.randn(1, 77, model.unet.config.cross_attention_dim, generator=g)
    added = None
    if model.unet.config.addition_embed_type == "text_time":
        n_ids = 5 if family == "sdxl_refiner" else 6
        width = model.unet.config.projection_class_embeddings_input_dim - n_ids * ff.TIME_DIM
        added = {
            "text_embeds": torch.randn(1, width, generator=g),
            "time_ids": torch.rand(1, n_ids),
        }
    out = [m.unet(x, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
           for m in (model, ref_model)]  # fmt: skip
    # The inferred configs compute what the folder's do (to rounding: even a UNet built from the
    # folder's own config and weights differs from from_pretrained's by ~1e-6 on this CPU).
    assert torch.allclose(out[0], out[1], atol=1e-5)
    from nodes.conditioning.text import encode_text

    ours, theirs = encode_text(clip, PROMPT).conds[0], encode_text(ref_clip, PROMPT).conds[0]
    # SD 2's file holds the tower's unused last layer, the folder does not: same conditioning.
    assert torch.allclose(ours.embeds, theirs.embeds, atol=1e-6)
    if ours.pooled is not None:
        assert torch.allclose(ours.pooled, theirs.pooled, atol=1e-6)


def test_half_precision_files_load(options):
    model, clip, vae = C.load_checkpoint("half/sdxl-fp16.safetensors", options)
    full, _, _ = C.load_checkpoint("sdxl.safetensors", options)
    assert model.dtype == torch.float32  # computed in full precision on the CPU
    for name, weight in full.unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], weight.half().float()), name
    bf16, _, _ = C.load_checkpoint("half/sd1-bf16.safetensors", options)
    ref, _, _ = C.load_checkpoint("sd1.safetensors", options)
    key = "conv_in.weight"
    assert torch.equal(bf16.unet.state_dict()[key], ref.unet.state_dict()[key].bfloat16().float())


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_clip_position_ids_in_a_file_are_ignored(family, tmp_path):
    """Most real SD 1.x / SDXL files keep CLIP-L's position ids (0..76) beside its weights."""
    from safetensors.torch import load_file, save_file

    state = load_file(ff.single_file(family))
    root = next(p for p in ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.")
                if any(k.startswith(p) for k in state))  # fmt: skip
    state[root + "text_model.embeddings.position_ids"] = torch.arange(77)[None].float()
    save_file(state, str(tmp_path / "with_ids.safetensors"))
    _, clip, _ = C.load_checkpoint("with_ids.safetensors", {"models": [str(tmp_path)]})
    _, plain, _ = C.load_checkpoint(ff.single_file(family).name,
                                    {"models": [str(ff.single_file(family).parent)]})  # fmt: skip
    for ours, theirs in zip(clip.towers, plain.towers, strict=True):
        assert ours.encoder.state_dict().keys() == theirs.encoder.state_dict().keys()


def test_loaded_models_are_kept_and_reloaded_when_the_file_changes(tmp_path):
    target = tmp_path / "checkpoints" / "copy.safetensors"
    target.parent.mkdir()
    shutil.copy(ff.single_file("sd1"), target)
    opts = {"models": [str(tmp_path)], "device": "cpu"}
    first = C.load_checkpoint("copy.safetensors", opts)
    loads = C.STORE.loads
    assert C.load_checkpoint("copy.safetensors", opts)[0] is first[0] and C.STORE.loads == loads
    import os

    os.utime(target, (target.stat().st_atime, target.stat().st_mtime + 10))
    assert C.load_checkpoint("copy.safetensors", opts)[0] is not first[0]


def test_unknown_layouts_and_broken_files_are_clear_errors(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    save_file({"some.weight": torch.zeros(2)}, str(folder / "other.safetensors"))
    (folder / "text.safetensors").write_text("not a checkpoint at all")
    data = ff.single_file("sd1").read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: len(data) // 2])
    opts = {"models": [str(tmp_path)], "device": "cpu"}
    with pytest.raises(
        CheckpointError,
        match=r"other\.safetensors: not a Stable Diffusion .*model\.diffusion_model\.",
    ):
        C.load_checkpoint("other.safetensors", opts)
    with pytest.raises(CheckpointError, match=r"text\.safetensors is not a readable \.safetensors"):
        C.load_checkpoint("text.safetensors", opts)
    with pytest.raises(CheckpointError, match=r"cut\.safetensors"):
        C.load_checkpoint("cut.safetensors", opts)


def test_a_pickle_needs_the_opt_in(tmp_path, options):
    from safetensors.torch import load_file

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"state_dict": load_file(str(ff.single_file("sd1")))}, folder / "old.ckpt")
    opts = {"models": [str(tmp_path)], "device": "cpu"}
    with pytest.raises(C.PickleRefused, match="can run arbitrary code"):
        C.load_checkpoint("old.ckpt", opts)
    model, _, _ = C.load_checkpoint("old.ckpt", {**opts, "allow_pickle": True})
    ref, _, _ = C.load_checkpoint("sd1.safetensors", options)
    a, b = model.unet.state_dict(), ref.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


# --------------------------------------------------------------------------- SDXL, natively


def native_stage(prefix: str, ckpt: str, latent: list, noise: dict, denoise: dict) -> dict:
    """CheckpointLoader -> TextEncode x2 -> AddNoise -> Denoise, node ids prefixed."""

    def ref(node: str, output: int = 0) -> list:
        return [prefix + node, output]

    return {
        prefix + "ckpt": {"class_type": "CheckpointLoader", "inputs": {"name": ckpt}},
        prefix + "pos": {
            "class_type": "TextEncode",
            "inputs": {"clip": ref("ckpt", 1), "text": PROMPT},
        },
        prefix + "neg": {
            "class_type": "TextEncode",
            "inputs": {"clip": ref("ckpt", 1), "text": ""},
        },
        prefix + "noise": {
            "class_type": "AddNoise",
            "inputs": {
                "model": ref("ckpt"),
                "latent": latent,
                "seed": 99,
                "steps": STEPS,
                "sampler": "euler",
                **noise,
            },
        },  # fmt: skip
        prefix + "denoise": {
            "class_type": "Denoise",
            "inputs": {
                "model": ref("ckpt"),
                "noisy": ref("noise"),
                "positive": ref("pos"),
                "negative": ref("neg"),
                "cfg": CFG,
                **denoise,
            },
        },  # fmt: skip
        prefix + "decode": {
            "class_type": "VAEDecode",
            "inputs": {"samples": ref("denoise"), "vae": ref("ckpt", 2)},
        },
        prefix + "show": {"class_type": "PreviewImage", "inputs": {"images": ref("decode")}},
    }


EMPTY = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
STEPS, CFG, SEED = 10, 5.0, 99


@pytest.mark.parametrize("ckpt", ["sdxl.safetensors", "sdxl"])
def test_sdxl_base_then_refiner_equal_the_diffusers_pipelines(ckpt, executor, settings):
    """Native nodes, base to denoising_end 0.7 then refiner from denoising_start 0.7 (the
    ensemble of experts), against StableDiffusionXLPipeline and StableDiffusionXLImg2ImgPipeline;
    the single files and the diffusers folders give the same picture."""
    f = 0.7
    refiner = ckpt.replace("sdxl", "sdxl_refiner")
    wf = {"empty": EMPTY}
    wf |= native_stage("b_", ckpt, ["empty", 0], {}, {"denoising_end": f})
    wf |= native_stage("r_", refiner, ["b_denoise", 0], {"denoising_start": f}, {})
    result = executor.run(wf, settings)
    assert result.ok, result.error
    base, ref = ff.build_pipeline("sdxl"), ff.build_pipeline("sdxl_refiner")
    for pipe in (base, ref):
        pipe.set_progress_bar_config(disable=True)
    common = {"negative_prompt": "", "num_inference_steps": STEPS, "guidance_scale": CFG}
    latents = base(
        PROMPT, height=64, width=64, denoising_end=f, output_type="latent",
        generator=torch.Generator("cpu").manual_seed(SEED), **common,
    ).images  # fmt: skip
    scale = base.vae.config.scaling_factor
    assert torch.allclose(result.outputs["b_denoise"][0].samples * scale, latents, atol=1e-5)
    theirs = ref(
        PROMPT, image=latents, denoising_start=f, output_type="np",
        generator=torch.Generator("cpu").manual_seed(SEED), **common,
    ).images  # fmt: skip
    ours = result.outputs["r_decode"][0].cpu().numpy()
    assert ours.shape == theirs.shape == (1, 64, 64, 3)
    assert np.abs(ours - theirs).max() <= 1e-4
    base_image = result.outputs["b_decode"][0].cpu().numpy()
    assert np.abs(ours - base_image).max() > 0.01  # the refiner did change the picture


def test_v_prediction_family_denoises_with_v(executor, settings):
    """SD 2 768-v read from the file's weights: its schedule predicts v, as the pipeline's."""
    model, _, _ = C.load_checkpoint("sd2_v.safetensors", settings.options)
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    wf = {"empty": EMPTY} | native_stage("", "sd2_v.safetensors", ["empty", 0], {}, {})
    result = executor.run(wf, settings)
    assert result.ok, result.error
    pipe = ff.build_pipeline("sd2_v")
    import diffusers

    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        PROMPT, negative_prompt="", height=64, width=64, num_inference_steps=STEPS,
        guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
    ).images  # fmt: skip
    assert np.abs(result.outputs["decode"][0].cpu().numpy() - theirs).max() <= 1e-4


@pytest.mark.parametrize("family", ["sd1_inpaint", "sdxl_inpaint"])
def test_inpainting_checkpoints_sample_with_their_extra_channels(family, executor, settings):
    """With nothing masked, a 9-channel UNet sees a mask of ones and ComfyUI's black latent."""
    model, _, _ = C.load_checkpoint(f"{family}.safetensors", settings.options)
    seen = []
    hook = model.unet.conv_in.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        wf = {"empty": EMPTY} | native_stage("", f"{family}.safetensors", ["empty", 0], {}, {})
        result = executor.run(wf, settings)
    finally:
        hook.remove()
    assert result.ok, result.error
    x = seen[0]
    assert x.shape[1] == 9 and torch.all(x[:, 4] == 1.0)
    from nodes.sampling.unet_inputs import BLACK_LATENT

    assert torch.allclose(x[0, 5:, 0, 0], torch.tensor(BLACK_LATENT))
