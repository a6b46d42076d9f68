"""Our nodes against diffusers' own pipelines, on a tiny Stable Diffusion made in the test.

Text-to-image through EmptyLatentImage -> AddNoise(strength 1) -> Denoise must equal
StableDiffusionPipeline with a CPU generator of the same seed; image-to-image through
VAEEncode -> AddNoise -> Denoise must equal StableDiffusionImg2ImgPipeline fed the same encoded
latents. Compared on the decoded images, to 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nodegraph import RunSettings
from tests import diffusion_fixtures as df
from tests.diffusion_fixtures import TINY_NAME, TINY_SIZE, write_picture

tiny_sd = df.tiny_sd
diffusion_executor = df.diffusion_executor

PROMPT = "a red circle"
STEPS = 10
CFG = 7.5
SEED = 1234
TOLERANCE = 1e-4
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}


def _pipelines(model_dir: Path, sampler: str):
    import diffusers

    txt = diffusers.StableDiffusionPipeline.from_pretrained(
        str(model_dir), local_files_only=True, safety_checker=None
    )
    scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(txt.scheduler.config)
    # Built as from_pretrained builds it, so the pipeline's own scheduler-config fixes apply.
    txt = diffusers.StableDiffusionPipeline(**{**txt.components, "scheduler": scheduler})
    txt.set_progress_bar_config(disable=True)
    img = diffusers.StableDiffusionImg2ImgPipeline(**txt.components)
    img.set_progress_bar_config(disable=True)
    return txt, img


def workflow(picture: str | None, strength: float, sampler: str) -> dict:
    """Our graph: txt2img from an empty latent, or img2img from a picture."""
    wf = {
        "ckpt": {"class_type": "CheckpointLoader", "inputs": {"name": TINY_NAME}},
        "pos": {"class_type": "TextEncode", "inputs": {"clip": ["ckpt", 1], "text": PROMPT}},
        "neg": {"class_type": "TextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "noise": {
            "class_type": "AddNoise",
            "inputs": {
                "model": ["ckpt", 0],
                "latent": ["src", 0],
                "strength": strength,
                "seed": SEED,
                "steps": STEPS,
                "sampler": sampler,
                "scheduler": "normal",
            },
        },
        "denoise": {
            "class_type": "Denoise",
            "inputs": {
                "model": ["ckpt", 0],
                "noisy": ["noise", 0],
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "cfg": CFG,
            },
        },
        "decode": {
            "class_type": "VAEDecode",
            "inputs": {"samples": ["denoise", 0], "vae": ["ckpt", 2]},
        },
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }
    if picture is None:
        wf["src"] = {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": TINY_SIZE, "height": TINY_SIZE, "batch_size": 1},
        }
    else:
        wf["load"] = {"class_type": "LoadImage", "inputs": {"image": picture}}
        wf["src"] = {
            "class_type": "VAEEncode",
            "inputs": {"pixels": ["load", 0], "vae": ["ckpt", 2]},
        }
    return wf


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_picture(tmp_path_factory.mktemp("pics") / "disc.png")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> RunSettings:
    out = tmp_path_factory.mktemp("out")
    return RunSettings(output_dir=out, temp_dir=out / "temp", options={"device": "cpu"})


def _run(executor, wf, settings):
    result = executor.run(wf, settings)
    assert result.ok, result.error and result.error.message
    return result


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_txt2img_and_img2img_equal_diffusers(
    sampler, tiny_sd, diffusion_executor, picture, settings
):
    txt, img = _pipelines(tiny_sd / TINY_NAME, sampler)
    ours = _run(diffusion_executor, workflow(None, 1.0, sampler), settings)
    image = ours.outputs["decode"][0].cpu().numpy()
    theirs = txt(
        PROMPT,
        negative_prompt="",
        height=TINY_SIZE,
        width=TINY_SIZE,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images
    assert image.shape == theirs.shape == (1, TINY_SIZE, TINY_SIZE, 3)
    assert np.abs(image - theirs).max() <= TOLERANCE

    outputs = {}
    for strength in (0.3, 0.6, 0.9):
        ours = _run(diffusion_executor, workflow(str(picture), strength, sampler), settings)
        latents = ours.outputs["src"][0].samples
        # (the VAE's own latents: the pipeline takes them scaled)
        image = ours.outputs["decode"][0].cpu().numpy()
        theirs = img(
            PROMPT,
            image=latents.clone() * img.vae.config.scaling_factor,
            strength=strength,
            negative_prompt="",
            num_inference_steps=STEPS,
            guidance_scale=CFG,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="np",
        ).images
        diff = np.abs(image - theirs).max()
        assert diff <= TOLERANCE, f"{sampler} strength {strength}: max diff {diff}"
        outputs[strength] = image
    # The strengths really differ (the comparison is not between constant pictures).
    assert np.abs(outputs[0.3] - outputs[0.9]).max() > 0.01


def test_a_batch_equals_the_pipelines_images_per_prompt(tiny_sd, diffusion_executor, settings):
    """batch_size 2 draws one noise tensor for the batch, as num_images_per_prompt does."""
    txt, _ = _pipelines(tiny_sd / TINY_NAME, "euler")
    wf = workflow(None, 1.0, "euler")
    wf["src"]["inputs"]["batch_size"] = 2
    image = _run(diffusion_executor, wf, settings).outputs["decode"][0].cpu().numpy()
    theirs = txt(
        PROMPT,
        negative_prompt="",
        height=TINY_SIZE,
        width=TINY_SIZE,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        num_images_per_prompt=2,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images
    assert image.shape == theirs.shape == (2, TINY_SIZE, TINY_SIZE, 3)
    assert np.abs(image - theirs).max() <= TOLERANCE
    assert np.abs(image[0] - image[1]).max() > 0.01  # two different pictures
