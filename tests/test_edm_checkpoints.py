"""SDXL checkpoints trained on EDM's continuous sigmas with v-prediction (CosXL, CosXL Edit):
the file's `edm_vpred.sigma_max` / `sigma_min` markers make the model sample as ComfyUI's
V_PREDICTION_EDM (ModelSamplingContinuousEDM, sigma_data 1), on the tiny SDXL models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.conditioning.clip_nodes import CLIPTextEncode
from nodes.conditioning.instruct_pix2pix import InstructPixToPixConditioning
from nodes.formats.detect import detect
from nodes.formats.tensors import CheckpointError, open_safetensors
from nodes.latents.codec import vae_encode
from nodes.loading.checkpoints import load_checkpoint
from nodes.sampling.ksampler import KSampler
from nodes.sampling.model_sampling_nodes import ModelSamplingContinuousEDM
from nodes.sampling.native import AddNoise
from nodes.values import Latent
from tests import family_fixtures as ff
from tests.node_ctx import NodeCtx

SIGMAS = {"edm_vpred.sigma_max": 120.0, "edm_vpred.sigma_min": 0.002}  # CosXL's


def marked(family: str, folder: Path, sigmas: dict[str, float] = SIGMAS) -> Path:
    """The family's tiny file with EDM v-prediction markers."""
    state = load_file(ff.single_file(family))
    state.update({k: torch.tensor(v) for k, v in sigmas.items()})
    path = folder / f"{family}-edm.safetensors"
    save_file(state, str(path))
    return path


def sample(model, clip, latent: Latent, positive=None, negative=None) -> torch.Tensor:
    ctx = NodeCtx()
    positive = positive or CLIPTextEncode(text="a cat", clip=clip).invoke(ctx)
    negative = negative or CLIPTextEncode(text="", clip=clip).invoke(ctx)
    return KSampler(
        model=model, seed=5, steps=3, cfg=4.0, sampler_name="dpmpp_2m", scheduler="karras",
        positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    ).invoke(ctx).samples  # fmt: skip


def test_a_cosxl_file_samples_as_comfyuis_edm_v_prediction(tmp_path):
    path = marked("sdxl", tmp_path)
    variant = detect(open_safetensors(path))
    assert variant.name == "sdxl-v-edm" and variant.edm.prediction == "v_prediction"
    assert (variant.edm.sigma_min, variant.edm.sigma_max) == pytest.approx((0.002, 120.0))
    model, clip, _ = load_checkpoint(path.name, {"models": [str(tmp_path)]})
    plain, _, _ = load_checkpoint(ff.single_file("sdxl").name,
                                  {"models": [str(ff.single_file("sdxl").parent)]})  # fmt: skip
    patched = ModelSamplingContinuousEDM(
        model=plain, sampling="v_prediction", sigma_max=120.0, sigma_min=0.002
    ).invoke(NodeCtx())
    latent = Latent(torch.zeros(1, 4, 8, 8))
    ours = sample(model, clip, latent)
    assert torch.equal(ours, sample(patched, clip, latent))  # the file's own sampling
    assert float((ours - sample(plain, clip, latent)).abs().max()) > 1e-2  # not the discrete
    with pytest.raises(ValueError, match="EDM's continuous sigmas .* with KSampler"):
        AddNoise(model=model, latent=latent, strength=1.0, seed=1, steps=3).invoke(NodeCtx())


def test_sigma_min_defaults_to_comfyuis_and_other_families_are_refused(tmp_path):
    path = marked("sdxl", tmp_path, {"edm_vpred.sigma_max": 80.0})
    edm = detect(open_safetensors(path)).edm
    assert (edm.sigma_min, edm.sigma_max, edm.sigma_data) == pytest.approx((0.002, 80.0, 1.0))
    sd1 = marked("sd1", tmp_path)
    with pytest.raises(CheckpointError, match="an EDM SD 1.x checkpoint"):
        detect(open_safetensors(sd1))


def test_cosxl_edit_takes_the_pictures_latent_in_the_unets_space(tmp_path):
    """ComfyUI's SDXL_instructpix2pix scales the picture's latent (SDXL's process_in) for an
    EDM v-prediction model, where diffusers-trained SDXL edit models take it unscaled."""
    path = marked("sdxl_ip2p", tmp_path)
    assert detect(open_safetensors(path)).name == "sdxl-v-ip2p-edm"
    model, clip, vae = load_checkpoint(path.name, {"models": [str(tmp_path)]})
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    ctx = NodeCtx()
    cond = CLIPTextEncode(text="make it green", clip=clip).invoke(ctx)
    uncond = CLIPTextEncode(text="", clip=clip).invoke(ctx)
    out = InstructPixToPixConditioning(positive=cond, negative=uncond, vae=vae, pixels=pixels)
    out = out.invoke(ctx)
    seen: list[torch.Tensor] = []
    handle = model.unet.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    try:
        sample(model, clip, out.latent, out.positive, out.negative)
    finally:
        handle.remove()
    picture = vae_encode(vae, pixels)[0]
    assert seen and all(torch.allclose(x[:, 4:], picture * 0.13025, atol=1e-6) for x in seen)


PLAYGROUND = {
    "edm_mean": [-1.6574, 1.886, -1.383, 2.5155],
    "edm_std": [8.4927, 5.9022, 6.5498, 5.2299],
}
"""ComfyUI's SDXL_Playground_2_5 latent format (latents_mean, latents_std; scale 0.5)."""


def test_a_playground_2_5_file_has_its_latent_format_and_edm_sampling(tmp_path):
    state = load_file(ff.single_file("sdxl"))
    state.update({k: torch.tensor(v) for k, v in PLAYGROUND.items()})
    save_file(state, str(tmp_path / "playground.safetensors"))
    assert detect(open_safetensors(tmp_path / "playground.safetensors")).name == (
        "sdxl-edm-playground"
    )
    model, clip, _ = load_checkpoint("playground.safetensors", {"models": [str(tmp_path)]})
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 5
    mean, std = (torch.tensor(PLAYGROUND[k]).view(1, 4, 1, 1) for k in ("edm_mean", "edm_std"))
    assert torch.equal(model.latent_in(latent), (latent - mean) * 0.5 / std)  # process_in
    assert torch.allclose(model.latent_out(model.latent_in(latent)), latent, atol=1e-5)
    plain, _, _ = load_checkpoint(ff.single_file("sdxl").name,
                                  {"models": [str(ff.single_file("sdxl").parent)]})  # fmt: skip
    patched = ModelSamplingContinuousEDM(
        model=plain, sampling="edm", sigma_max=80.0, sigma_min=0.002
    ).invoke(NodeCtx())  # EDM prediction, sigma_data 0.5
    patched = dataclasses.replace(patched, latent_scale=0.5, latent_shift=mean, latent_std=std)
    start = Latent(torch.zeros(1, 4, 8, 8))
    assert torch.equal(sample(model, clip, start), sample(patched, clip, start))
    assert float((sample(model, clip, start) - sample(plain, clip, start)).abs().max()) > 1e-2
