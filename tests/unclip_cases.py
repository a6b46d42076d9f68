"""The unCLIP cases compared with ComfyUI's own numbers: the inputs both sides build
(tools/comfy_reference/make_unclip_reference.py runs them through ComfyUI, by hand;
tests/test_unclip.py through nodegraph)."""

from __future__ import annotations

from typing import Any

import torch

from tests.comfy_cases import TINY_KSAMPLER

FAMILY = "sd2_unclip"
WIDTH = 64
"""The tiny SD 2.x text width (tests.family_fixtures' OpenCLIP-H stand-in)."""
EMBED = 24
"""The tiny CLIP vision encoder's image embedding width (the UNet's class label is twice it)."""
KSAMPLER = TINY_KSAMPLER

CASES: list[dict[str, Any]] = [
    # one picture, no augmentation
    {"name": "unclip.one", "positive": [["one", 1.0, 0.0]], "inputs": KSAMPLER},
    # augmented and weaker; a seed under 10 (ComfyUI seeds the augmentation with seed - 10)
    {"name": "unclip.noised", "positive": [["one", 0.7, 0.3]],
     "inputs": {**KSAMPLER, "seed": 3, "sampler_name": "dpmpp_2m", "cfg": 4.0}},
    # two unCLIPConditioning nodes: summed, then augmented at 0.05 (ComfyUI's merge)
    {"name": "unclip.two", "positive": [["one", 1.0, 0.1], ["other", 0.5, 0.2]],
     "inputs": {**KSAMPLER, "seed": 100, "sampler_name": "euler_ancestral"}},
    # two pictures in one CLIP vision output, and a latent batch of 2
    {"name": "unclip.batch", "positive": [["pair", 1.0, 0.0]], "latent": [2, 4, 8, 8],
     "inputs": {**KSAMPLER, "steps": 3}},
    # the negative prompt has a picture too
    {"name": "unclip.negative", "positive": [["one", 1.0, 0.0]],
     "negative": [["other", 1.5, 0.5]], "inputs": {**KSAMPLER, "scheduler": "karras"}},
    # img2img at 0.6 from a picture's latent
    {"name": "unclip.img2img", "positive": [["other", 1.0, 0.25]], "latent": "image",
     "inputs": {**KSAMPLER, "denoise": 0.6, "seed": 5}},
]  # fmt: skip


SDXL_WIDTH = 64
"""The tiny SDXL's pooled text width (its bigG stand-in; real: 1280, clip_vision_g's embedding)."""
SDXL_CASES: list[dict[str, Any]] = [
    # SDXL "revision": the pictures' embeddings replace the pooled text (ComfyUI's sdxl_pooled)
    {"name": "sdxl.one", "entries": [["g_one", 1.0, 0.0]], "seed": 42},
    {"name": "sdxl.noised", "entries": [["g_one", 0.8, 0.4]], "seed": 4},
    {"name": "sdxl.merged", "entries": [["g_one", 1.0, 0.3], ["g_pair", 0.5, 0.1]], "seed": 9},
]  # fmt: skip


def inputs() -> dict[str, torch.Tensor]:
    """Seeded prompts, image embeddings (as CLIPVisionEncode gives them) and a latent."""
    g = torch.Generator().manual_seed(4242)
    return {
        "cond": torch.randn((1, 77, WIDTH), generator=g),
        "uncond": torch.randn((1, 77, WIDTH), generator=g),
        "one": torch.randn((1, EMBED), generator=g),
        "other": torch.randn((1, EMBED), generator=g),
        "pair": torch.randn((2, EMBED), generator=g),
        "image": torch.randn((1, 4, 8, 8), generator=g) * 4.0,
        "g_one": torch.randn((1, SDXL_WIDTH), generator=g),
        "g_pair": torch.randn((2, SDXL_WIDTH), generator=g),
    }
