"""VAEEncodeForInpaint, InpaintModelConditioning and SetLatentNoiseMask on the tiny models
(ComfyUI's semantics; the sampler's side is compared with ComfyUI in test_comfy_sampling)."""

from __future__ import annotations

from typing import Any

import torch

from nodes.latents.codec import vae_encode
from nodes.latents.inpaint import InpaintModelConditioning, SetLatentNoiseMask, VAEEncodeForInpaint
from nodes.sampling.ksampler import KSampler
from nodes.values import Conditioning, Latent
from tests import comfy_cases as C


class Ctx:
    def progress(self, value: int, total: int, preview: Any = None) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


def picture_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand((1, 64, 64, 3), generator=g)
    mask = torch.zeros((1, 64, 64))
    mask[:, 16:40, 24:48] = 1.0
    return pixels, mask


def test_vae_encode_for_inpaint_greys_the_mask_and_grows_it():
    _, _, vae = C.tiny_checkpoint("sd1")
    pixels, mask = picture_and_mask()
    out = VAEEncodeForInpaint(pixels=pixels, vae=vae, mask=mask, grow_mask_by=6).invoke(Ctx())
    greyed = pixels.clone()
    greyed[:, 16:40, 24:48] = 0.5
    assert torch.equal(out.samples, vae_encode(vae, greyed)[0])
    noise_mask = out.noise_mask[0, 0]
    assert noise_mask.shape == (64, 64) and set(noise_mask.unique().tolist()) == {0.0, 1.0}
    # grown with a 6x6 box, padding 3 (ComfyUI's conv): 2 rows above, 3 below, cut to 64
    rows = noise_mask.amax(dim=1).nonzero().flatten()
    cols = noise_mask.amax(dim=0).nonzero().flatten()
    assert (int(rows[0]), int(rows[-1])) == (14, 42) and (int(cols[0]), int(cols[-1])) == (22, 50)
    unmasked = VAEEncodeForInpaint(pixels=pixels, vae=vae, mask=mask, grow_mask_by=0)
    assert torch.equal(unmasked.invoke(Ctx()).noise_mask[0, 0], mask[0])


def test_inpaint_model_conditioning_gives_both_prompts_the_mask_and_the_masked_latent():
    _, _, vae = C.tiny_checkpoint("sd1")
    pixels, mask = picture_and_mask()
    pos, neg = Conditioning.of(torch.zeros(1, 77, 32)), Conditioning.of(torch.ones(1, 77, 32))
    out = InpaintModelConditioning(positive=pos, negative=neg, vae=vae, pixels=pixels,
                                   mask=mask, noise_mask=True).invoke(Ctx())  # fmt: skip
    greyed = pixels.clone()
    greyed[:, 16:40, 24:48] = 0.5
    for (c,) in (out.positive.conds, out.negative.conds):
        assert torch.equal(c.extras["concat_latent_image"], vae_encode(vae, greyed)[0])
        assert torch.equal(c.extras["concat_mask"][0, 0], mask[0])
    assert torch.equal(out.latent.samples, vae_encode(vae, pixels)[0])
    assert torch.equal(out.latent.noise_mask[0, 0], mask[0])
    assert torch.equal(out.positive.conds[0].embeds, pos.conds[0].embeds)
    assert not pos.conds[0].extras  # copies, not edits


def test_a_noise_mask_keeps_the_latent_outside_it_and_repaints_inside():
    """A plain model with SetLatentNoiseMask: where the mask (resized to the latent, bilinear)
    is 0 the latent comes back exactly as it went in; inside it is repainted. (Decoded, the
    tiny random VAE's attention spreads any change over the whole picture, so the comparison
    is in latent space.)"""
    model, _, vae = C.tiny_checkpoint("sd1")
    pixels, mask = picture_and_mask()
    latent = Latent(vae_encode(vae, pixels)[0])
    masked = SetLatentNoiseMask(samples=latent, mask=mask).invoke(Ctx())
    cond = Conditioning.of(torch.randn((1, 77, 32), generator=torch.Generator().manual_seed(1)))
    sampled = KSampler(model=model, seed=5, steps=4, cfg=4.0, sampler_name="euler",
                       scheduler="normal", positive=cond, negative=cond, latent_image=masked,
                       denoise=0.9).invoke(Ctx())  # fmt: skip
    small = torch.nn.functional.interpolate(mask[:, None], size=(8, 8), mode="bilinear")[0, 0]
    outside, inside = small == 0, small == 1
    assert outside.sum() > 30 and inside.sum() > 2
    before, after = latent.samples[0], sampled.samples[0]
    assert torch.allclose(
        after[:, outside], before[:, outside], rtol=1e-6, atol=1e-6
    )  # scaled in, out
    assert (after[:, inside] - before[:, inside]).abs().max() > 0.1


def test_a_latent_composite_outside_the_canvas_is_refused_clearly():
    import pytest

    from nodes.latents.transform import LatentComposite

    canvas, patch = Latent(torch.zeros(1, 4, 8, 8)), Latent(torch.ones(1, 4, 2, 2))
    with pytest.raises(ValueError, match=r"x=64, y=0 lies outside the destination latent"):
        LatentComposite(samples_to=canvas, samples_from=patch, x=64, y=0).invoke(Ctx())
    inside = LatentComposite(samples_to=canvas, samples_from=patch, x=48, y=56).invoke(Ctx())
    assert float(inside.samples.sum()) == 4 * 2 * 1  # clipped at the bottom edge: 2 x 1 pixels


def _first_unet_input(unet: Any, run: Any) -> torch.Tensor:
    """The latent the UNet is given on its first call during `run()`."""
    seen: list[torch.Tensor] = []
    handle = unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_vae_encode_for_inpaint_gives_a_9_channel_unet_what_diffusers_inpaint_pipeline_does():
    """Diffusers' contract for the UNet's extra channels (StableDiffusionInpaintPipeline's mask
    and masked-picture latent), reached through ComfyUI's nodes (VAEEncodeForInpaint,
    KSampler): both channels equal the pipeline's, for a mask on the latent's 8-pixel grid."""
    from diffusers import StableDiffusionInpaintPipeline

    from nodes.values import Vae
    from tests import family_fixtures as ff

    pipe = ff.build_pipeline("sd1_inpaint")
    assert isinstance(pipe, StableDiffusionInpaintPipeline)
    with torch.no_grad():  # a sharp posterior: the pipeline's sampled latent is its mean
        pipe.vae.quant_conv.weight[4:] = 0.0
        pipe.vae.quant_conv.bias[4:] = -30.0
    pixels, mask = picture_and_mask()
    cond, uncond = torch.randn((2, 1, 77, 32), generator=torch.Generator().manual_seed(4))
    theirs = _first_unet_input(pipe.unet, lambda: pipe(
        prompt_embeds=cond, negative_prompt_embeds=uncond, image=pixels.movedim(-1, 1),
        mask_image=mask[:, None], height=64, width=64, num_inference_steps=1, strength=1.0,
        guidance_scale=5.0, output_type="latent"))  # fmt: skip
    model = C.tiny_model("sd1_inpaint")
    vae = Vae(pipe.vae, torch.device("cpu"), torch.float32, "sharp")
    latent = VAEEncodeForInpaint(pixels=pixels, vae=vae, mask=mask, grow_mask_by=0).invoke(Ctx())
    node = KSampler(model=model, seed=1, steps=1, cfg=5.0, sampler_name="euler",
                    scheduler="normal", positive=Conditioning.of(cond),
                    negative=Conditioning.of(uncond), latent_image=latent, denoise=1.0)  # fmt: skip
    ours = _first_unet_input(model.unet, lambda: node.invoke(Ctx()))
    assert ours.shape == theirs.shape == (2, 9, 8, 8)
    assert torch.equal(ours[:, 4], theirs[:, 4])  # the mask, at the latent's size
    assert torch.allclose(ours[:, 5:], theirs[:, 5:], atol=1e-5)  # the masked picture's latent
    assert ours[:, 4].sum() == 3 * 3 * 2 and ours[:, 5:].abs().amax() > 0.1
