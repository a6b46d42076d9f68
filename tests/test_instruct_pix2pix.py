"""InstructPix2Pix: ComfyUI's InstructPixToPixConditioning and 8-channel SD 1.x checkpoints, on
the tiny random-weight "sd1_ip2p" model of tests.family_fixtures.

Oracles: ComfyUI's own node and KSampler on the same UNet (tests/data/comfy_reference/ip2p.*,
made by tools/comfy_reference/make_ip2p_reference.py) for the final latents; diffusers'
StableDiffusionInstructPix2PixPipeline for what the UNet is given and, where the two contracts
agree (image_guidance_scale 1: the negative prompt sees the picture too), for the whole walk.
"""

from __future__ import annotations

import functools
import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.conditioning.instruct_pix2pix import InstructPixToPixConditioning
from nodes.formats.detect import detect
from nodes.formats.tensors import CheckpointError, open_safetensors
from nodes.latents.codec import vae_encode
from nodes.latents.inpaint import SetLatentNoiseMask
from nodes.loading.checkpoints import folder_variant
from nodes.sampling.ksampler import KSampler
from nodes.sampling.native import AddNoise, Denoise
from nodes.values import Cond, Conditioning, Latent, Vae
from tests import comfy_cases as C
from tests import comfy_reference_data as R
from tests import family_fixtures as ff
from tests import ip2p_cases as P

MANIFEST = R.manifest("ip2p")
LATENT_TOL = 1e-4


class Ctx:
    def progress(self, value: int, total: int, preview: Any = None) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


pytestmark = pytest.mark.usefixtures("reference_threads")


reference = functools.partial(R.tensors, "ip2p")


def prompts() -> tuple[Conditioning, Conditioning]:
    inputs = reference()
    return Conditioning.of(inputs["cond"]), Conditioning.of(inputs["uncond"])


def close(ours: torch.Tensor, theirs: torch.Tensor, tol: float) -> float:
    """The largest difference in units of the tolerance, scaled to the reference's size."""
    assert ours.shape == theirs.shape
    return float((ours - theirs).abs().max()) / (tol * max(1.0, float(theirs.abs().max())))


def test_the_node_crops_to_8_encodes_and_gives_every_cond_the_latent():
    _, _, vae = C.tiny_checkpoint(P.FAMILY)
    pixels = reference()["odd"]  # 70 x 67: cropped to 64 x 64, rows 3.. and columns 1..
    assert pixels.shape == (1, 70, 67, 3)
    cond, uncond = prompts()
    two = Conditioning((cond.conds[0], Cond(uncond.conds[0].embeds, None, {"strength": 0.5})))
    out = InstructPixToPixConditioning(positive=two, negative=uncond, vae=vae, pixels=pixels)
    out = out.invoke(Ctx())
    want = vae_encode(vae, pixels[:, 3:67, 1:65].contiguous())[0]
    assert want.shape == (1, 4, 8, 8) and float(want.abs().max()) > 0.1
    top_left = vae_encode(vae, pixels[:, :64, :64].contiguous())[0]
    assert float((want - top_left).abs().max()) > 1e-2  # centred, not cut at one corner
    for c in (*out.positive.conds, *out.negative.conds):
        assert torch.equal(c.extras["concat_latent_image"], want)
    assert out.positive.conds[1].extras["strength"] == 0.5  # other options kept
    assert torch.equal(out.positive.conds[0].embeds, cond.conds[0].embeds)
    assert not two.conds[0].extras and not uncond.conds[0].extras  # copies, not edits
    assert torch.equal(out.latent.samples, torch.zeros(1, 4, 8, 8))
    assert out.latent.noise_mask is None
    # ComfyUI's node gave its VAE the same crop and set the same latent
    assert MANIFEST["cases"][0]["encoded_shape"] == [1, 64, 64, 3]
    assert torch.allclose(want, reference()["ip2p.node.concat"], atol=1e-6)


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: c["name"])
def test_sampling_matches_comfyui(case: dict[str, Any]) -> None:
    model, _, vae = C.tiny_checkpoint(P.FAMILY)
    ref = reference()
    cond, uncond = prompts()
    out = InstructPixToPixConditioning(
        positive=cond, negative=uncond, vae=vae, pixels=ref[case["pixels"]]
    ).invoke(Ctx())
    concat = out.positive.conds[0].extras["concat_latent_image"]
    assert torch.allclose(concat, ref[f"{case['name']}.concat"], atol=1e-6)
    assert torch.equal(out.latent.samples, ref[f"{case['name']}.latent"])
    negative = uncond if case.get("plain_negative") else out.negative
    latent = out.latent
    if "latent" in case:
        latent = Latent(torch.zeros(case["latent"]))
    if "noise_mask" in case:
        latent = SetLatentNoiseMask(samples=latent, mask=ref[case["noise_mask"]]).invoke(Ctx())
    sampled = KSampler(
        model=model, positive=out.positive, negative=negative, latent_image=latent,
        **case["inputs"],
    ).invoke(Ctx())  # fmt: skip
    theirs = ref[case["name"]]
    assert close(sampled.samples, theirs, LATENT_TOL) <= 1.0
    assert float(theirs.abs().max()) > 1.0


def _unet_calls(unet: Any, run: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, text) of each UNet call during `run()`."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        seen.append((args[0].clone(), kwargs["encoder_hidden_states"].clone()))

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen


@cache
def pipeline() -> Any:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = ff.build_pipeline(P.FAMILY)  # seed 0: the weights of the tiny file
    assert isinstance(pipe, StableDiffusionInstructPix2PixPipeline)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _picture() -> torch.Tensor:
    """64 x 64 pixels: diffusers resizes what ComfyUI crops, so both get a 64-pixel picture."""
    return reference()["odd"][:, 3:67, 1:65].contiguous()


def _pipe_vae() -> Vae:
    return Vae(pipeline().vae, torch.device("cpu"), torch.float32, "pipe")


def test_the_unet_sees_the_picture_as_diffusers_ip2p_pipeline_gives_it():
    """diffusers batches (instruction, picture), (negative, picture), (negative, zeros);
    ComfyUI's two prompts are the first two, or the first and the third when the negative
    prompt does not carry the picture: channels 4..8 equal the pipeline's for each."""
    pipe, pixels = pipeline(), _picture()
    cond, uncond = prompts()
    ((theirs, their_text),) = _unet_calls(pipe.unet, lambda: pipe(
        prompt_embeds=cond.conds[0].embeds, negative_prompt_embeds=uncond.conds[0].embeds,
        image=pixels.movedim(-1, 1), num_inference_steps=1, guidance_scale=5.0,
        image_guidance_scale=1.5, output_type="latent"))  # fmt: skip
    assert theirs.shape == (3, 8, 8, 8) and float(theirs[0, 4:].abs().max()) > 0.1
    assert torch.equal(theirs[2, 4:], torch.zeros(4, 8, 8))
    model = C.tiny_model(P.FAMILY)
    out = InstructPixToPixConditioning(
        positive=cond, negative=uncond, vae=_pipe_vae(), pixels=pixels
    ).invoke(Ctx())
    for negative, rows in ((out.negative, (0, 1)), (uncond, (0, 2))):
        node = KSampler(model=model, seed=1, steps=1, cfg=5.0, sampler_name="euler",
                        scheduler="normal", positive=out.positive, negative=negative,
                        latent_image=out.latent, denoise=1.0)  # fmt: skip
        ((ours, our_text),) = _unet_calls(model.unet, lambda n=node: n.invoke(Ctx()))
        assert ours.shape == (2, 8, 8, 8)
        for i in range(2):  # pair our rows with the pipeline's by their text
            (j,) = [j for j in rows if torch.equal(our_text[i], their_text[j])]
            assert torch.allclose(ours[i, 4:], theirs[j, 4:], atol=1e-6), (i, j)


def test_native_denoise_equals_diffusers_ip2p_pipeline_at_image_guidance_1():
    """image_guidance_scale 1 is ComfyUI's CFG with the picture on both prompts: the native
    nodes (diffusers' Euler, the seed's CPU noise) walk the pipeline's latents to 1e-4."""
    import diffusers

    pipe, pixels = pipeline(), _picture()
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    cond, uncond = prompts()
    theirs = pipe(
        prompt_embeds=cond.conds[0].embeds, negative_prompt_embeds=uncond.conds[0].embeds,
        image=pixels.movedim(-1, 1), num_inference_steps=4, guidance_scale=5.0,
        image_guidance_scale=1.0, generator=torch.Generator().manual_seed(7),
        output_type="latent",
    ).images  # fmt: skip
    model = C.tiny_model(P.FAMILY)
    out = InstructPixToPixConditioning(
        positive=cond, negative=uncond, vae=_pipe_vae(), pixels=pixels
    ).invoke(Ctx())
    noisy = AddNoise(model=model, latent=out.latent, strength=1.0, seed=7, steps=4,
                     sampler="euler", scheduler="normal").invoke(Ctx())  # fmt: skip
    ours = Denoise(model=model, noisy=noisy, positive=out.positive, negative=out.negative,
                   cfg=5.0).invoke(Ctx())  # fmt: skip
    ours = model.latent_in(ours.samples)
    assert close(ours, theirs, LATENT_TOL) <= 1.0
    # and the picture matters: without it (zeros on both prompts) the walk ends elsewhere
    plain = Denoise(model=model, noisy=noisy, positive=cond, negative=uncond, cfg=5.0)
    assert float((model.latent_in(plain.invoke(Ctx()).samples) - theirs).abs().max()) > 0.1


def _with_conv_in(family: str, path: Path, channels: int) -> Path:
    """The family's tiny file with its UNet's first convolution widened to `channels`."""
    state = load_file(str(ff.single_file(family)))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    w = state[key]
    state[key] = torch.cat([w, w[:, : channels - w.shape[1]]], dim=1).contiguous()
    save_file(state, str(path))
    return path


def test_8_channel_files_and_folders_load_as_ip2p_for_sd1_and_sdxl(tmp_path: Path):
    variant = detect(open_safetensors(ff.single_file(P.FAMILY)))
    assert (variant.name, variant.family.key, variant.in_channels) == ("sd1-ip2p", "sd1", 8)
    assert folder_variant(ff.diffusers_folder(P.FAMILY)).name == "sd1-ip2p"
    variant = detect(open_safetensors(ff.single_file("sdxl_ip2p")))
    assert (variant.name, variant.family.key, variant.in_channels) == ("sdxl-ip2p", "sdxl", 8)
    assert folder_variant(ff.diffusers_folder("sdxl_ip2p")).name == "sdxl-ip2p"
    for family, label in (("sdxl_refiner", "SDXL refiner"), ("sd2", "SD 2.x")):
        path = _with_conv_in(family, tmp_path / f"{family}-8.safetensors", 8)
        with pytest.raises(CheckpointError, match=f"is a {label} InstructPix2Pix model"):
            detect(open_safetensors(path))
    seven = _with_conv_in("sd1", tmp_path / "sd1-7.safetensors", 7)
    with pytest.raises(CheckpointError, match="is a 7-channel model"):
        detect(open_safetensors(seven))
    folder = tmp_path / "refiner-8"
    for part in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
        (folder / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ff.diffusers_folder("sdxl_refiner") / part, folder / part)
    config = json.loads((folder / "unet/config.json").read_text())
    (folder / "unet/config.json").write_text(json.dumps({**config, "in_channels": 8}))
    with pytest.raises(CheckpointError, match="SDXL refiner InstructPix2Pix"):
        folder_variant(folder)


@cache
def sdxl_pipeline() -> Any:
    from diffusers import StableDiffusionXLInstructPix2PixPipeline

    pipe = ff.build_pipeline("sdxl_ip2p")  # seed 0: the weights of the tiny file
    assert isinstance(pipe, StableDiffusionXLInstructPix2PixPipeline)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_prompts() -> tuple[Conditioning, Conditioning]:
    """Seeded SDXL prompts: CLIP-L and bigG states side by side (96 wide), bigG's pooled (64)."""
    g = torch.Generator().manual_seed(99)
    width = ff.family("sdxl_ip2p").unet["cross_attention_dim"]
    pooled = ff.OPEN_CLIP_G["width"]
    made = [(torch.randn((1, 77, width), generator=g), torch.randn((1, pooled), generator=g))
            for _ in range(2)]  # fmt: skip
    return Conditioning.of(*made[0]), Conditioning.of(*made[1])


def test_sdxl_ip2p_native_denoise_equals_diffusers_pipeline_at_image_guidance_1():
    """SDXL InstructPix2Pix (ComfyUI's SDXL_instructpix2pix, diffusers-trained: the picture's
    latent unscaled, as SD 1.x's): at image_guidance_scale 1 diffusers' pipeline is CFG with the
    picture on both prompts; the native nodes walk its latents to 1e-4, the UNet seeing the
    picture's latent in channels 4..8."""
    import diffusers

    pipe, pixels = sdxl_pipeline(), _picture()
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    cond, uncond = sdxl_prompts()
    (c,), (u,) = cond.conds, uncond.conds
    theirs = pipe(
        prompt_embeds=c.embeds, negative_prompt_embeds=u.embeds,
        pooled_prompt_embeds=c.pooled, negative_pooled_prompt_embeds=u.pooled,
        image=pixels.movedim(-1, 1), num_inference_steps=4, guidance_scale=5.0,
        image_guidance_scale=1.0, generator=torch.Generator().manual_seed(7),
        output_type="latent",
    ).images  # fmt: skip
    model = C.tiny_model("sdxl_ip2p")
    vae = Vae(pipe.vae, torch.device("cpu"), torch.float32, "pipe")
    out = InstructPixToPixConditioning(
        positive=cond, negative=uncond, vae=vae, pixels=pixels
    ).invoke(Ctx())
    noisy = AddNoise(model=model, latent=out.latent, strength=1.0, seed=7, steps=4,
                     sampler="euler", scheduler="normal").invoke(Ctx())  # fmt: skip
    node = Denoise(model=model, noisy=noisy, positive=out.positive, negative=out.negative,
                   cfg=5.0)  # fmt: skip
    calls = _unet_calls(model.unet, lambda: node.invoke(Ctx()))
    ours = model.latent_in(node.invoke(Ctx()).samples)
    assert close(ours, theirs, LATENT_TOL) <= 1.0
    picture = vae_encode(vae, pixels)[0]  # unscaled, as diffusers' pipeline and ComfyUI give it
    assert all(torch.allclose(x[:, 4:], picture.expand(2, -1, -1, -1), atol=1e-6) for x, _ in calls)
    plain = Denoise(model=model, noisy=noisy, positive=cond, negative=uncond, cfg=5.0)
    assert float((model.latent_in(plain.invoke(Ctx()).samples) - theirs).abs().max()) > 0.1


def test_sdxl_ip2p_samples_with_ksampler():
    model, _, vae = C.tiny_checkpoint("sdxl_ip2p")
    cond, uncond = sdxl_prompts()
    out = InstructPixToPixConditioning(
        positive=cond, negative=uncond, vae=vae, pixels=_picture()
    ).invoke(Ctx())
    node = KSampler(model=model, seed=3, steps=2, cfg=4.0, sampler_name="euler",
                    scheduler="normal", positive=out.positive, negative=out.negative,
                    latent_image=out.latent, denoise=1.0)  # fmt: skip
    calls = _unet_calls(model.unet, lambda: node.invoke(Ctx()))
    concat = out.positive.conds[0].extras["concat_latent_image"]
    assert len(calls) == 2
    assert all(torch.equal(x[:, 4:], concat.expand(2, -1, -1, -1)) for x, _ in calls)
