"""The InstructPix2Pix cases compared with ComfyUI's own numbers: the inputs both sides build
(tools/comfy_reference/make_ip2p_reference.py runs them through ComfyUI, by hand;
tests/test_instruct_pix2pix.py through nodegraph)."""

from __future__ import annotations

from typing import Any

import torch

from tests.comfy_cases import TINY_KSAMPLER

FAMILY = "sd1_ip2p"
WIDTH = 32
"""The tiny SD 1.x text width (tests.family_fixtures' CLIP-L stand-in)."""
KSAMPLER = TINY_KSAMPLER

CASES: list[dict[str, Any]] = [
    # the node's own latent; 70 x 67 pixels: cropped (centred) to 64 x 64 before encoding
    {"name": "ip2p.node", "pixels": "odd", "inputs": KSAMPLER},
    # a negative prompt without the picture: its concat channels are zeros
    {"name": "ip2p.plain_negative", "pixels": "odd", "plain_negative": True,
     "inputs": {**KSAMPLER, "sampler_name": "dpmpp_2m", "cfg": 3.5}},
    # a batch of 2 at 8 x 8 from a 6 x 7 latent: resized (bilinear) and batched
    {"name": "ip2p.resized", "pixels": "small", "latent": [2, 4, 8, 8],
     "inputs": {**KSAMPLER, "steps": 3, "cfg": 4.0}},
    # a noise mask on the latent: the sampler keeps the latent outside it; the concat stays
    {"name": "ip2p.noise_mask", "pixels": "odd", "noise_mask": "box",
     "inputs": {**KSAMPLER, "sampler_name": "ddim", "denoise": 0.8}},
]  # fmt: skip


def inputs() -> dict[str, torch.Tensor]:
    """Seeded prompts, pictures (B, H, W, 3) in 0..1 and a mask."""
    g = torch.Generator().manual_seed(2024)
    box = torch.zeros((1, 64, 64))
    box[:, 8:40, 16:56] = 1.0
    return {
        "cond": torch.randn((1, 77, WIDTH), generator=g),
        "uncond": torch.randn((1, 77, WIDTH), generator=g),
        "odd": torch.rand((1, 70, 67, 3), generator=g),
        "small": torch.rand((1, 48, 56, 3), generator=g),
        "box": box,
    }
