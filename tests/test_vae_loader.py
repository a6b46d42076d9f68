"""VAELoader: a VAE file replaces the checkpoint's, in the layouts users have; bad pairs fail
clearly; a LoRA made for another family is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodes.loading.checkpoint_nodes import load_vae
from nodes.loading.folders import use_model_dirs
from tests import family_fixtures as ff
from tests.diffusion_fixtures import diffusion_registry
from tests.lora_fixtures import make_lora


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vae_models")
    for kind in ("checkpoints", "vae", "loras"):
        (root / kind).mkdir()
    (root / "checkpoints" / "sd1.safetensors").symlink_to(ff.single_file("sd1"))
    (root / "checkpoints" / "sdxl.safetensors").symlink_to(ff.single_file("sdxl"))
    sdxl = ff.build_pipeline("sdxl")
    original = ff.original_state_dict(sdxl, "sdxl")
    vae = {k[len("first_stage_model.") :]: v for k, v in original.items()
           if k.startswith("first_stage_model.")}  # fmt: skip
    save_file(vae, str(root / "vae" / "sdxl_vae.safetensors"))  # original layout, no prefix
    save_file(sdxl.vae.state_dict(), str(root / "vae" / "diffusers_layout.safetensors"))
    sdxl.vae.save_pretrained(str(root / "vae" / "folder"))
    from diffusers import AutoencoderKL

    wide = AutoencoderKL(block_out_channels=(32, 64), latent_channels=16, norm_num_groups=32,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2)  # fmt: skip
    save_file(wide.state_dict(), str(root / "vae" / "sixteen_channels.safetensors"))
    tensors, _ = make_lora(sdxl, original_names=True, text_prefixes={})
    save_file(tensors, str(root / "loras" / "xl_only.safetensors"))
    use_model_dirs([root])
    return root


@pytest.fixture
def settings(tmp_path, models):
    opts = {"models": [str(models)], "device": "cpu"}
    return RunSettings(output_dir=tmp_path / "o", temp_dir=tmp_path / "t", options=opts)


@pytest.mark.parametrize("name", ["sdxl_vae.safetensors", "diffusers_layout.safetensors", "folder"])
def test_every_vae_layout_loads_the_same_weights(name, settings):
    vae = load_vae(name, settings.options)
    reference = ff.build_pipeline("sdxl").vae.state_dict()
    ours = vae.vae.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def graph(ckpt: str, vae_name: str | None) -> dict:
    vae = ["ckpt", 2]
    wf = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    if vae_name:
        wf["vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}}
        vae = ["vae", 0]
    return wf | {
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a cat"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64}},
        "sample": {"class_type": "KSampler",
                   "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                              "latent_image": ["empty", 0], "steps": 3, "seed": 1}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": vae}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }  # fmt: skip


def test_a_vae_file_replaces_the_checkpoints(settings):
    executor = Executor(diffusion_registry())
    own = executor.run(graph("sdxl.safetensors", None), settings)
    loaded = executor.run(graph("sdxl.safetensors", "sdxl_vae.safetensors"), settings)
    assert own.ok and loaded.ok, (own.error, loaded.error)
    assert "vae" in loaded.executed and "sample" in loaded.cached  # only the decode side re-ran
    a, b = (r.outputs["decode"][0].numpy() for r in (own, loaded))
    assert np.abs(a - b).max() <= 1e-6  # the same weights: the same picture
    other = executor.run(graph("sd1.safetensors", "sdxl_vae.safetensors"), settings)
    assert other.ok  # any 4-channel VAE decodes any 4-channel model's latents (ComfyUI's LATENT)


def test_a_vae_of_other_latent_channels_is_a_clear_error(settings):
    result = Executor(diffusion_registry()).run(
        graph("sd1.safetensors", "sixteen_channels.safetensors"), settings
    )
    assert not result.ok
    assert result.error.node_id == "decode"
    assert "decodes latents of 16 channels" in result.error.message


def test_a_lora_for_another_family_is_refused(settings):
    wf = graph("sd1.safetensors", None)
    wf["lora"] = {"class_type": "LoraLoaderModelOnly",
                  "inputs": {"model": ["ckpt", 0], "lora_name": "xl_only.safetensors"}}  # fmt: skip
    wf["sample"]["inputs"]["model"] = ["lora", 0]
    result = Executor(diffusion_registry()).run(wf, settings)
    assert not result.ok and result.error.node_id == "lora"
    assert "xl_only.safetensors matches none of this model's weights" in result.error.message
