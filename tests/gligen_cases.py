"""A tiny GLIGEN model for the tiny SD 1.x UNet, and the cases compared with ComfyUI's own
numbers (tools/comfy_reference/make_gligen_reference.py runs them through ComfyUI, by hand;
tests/test_gligen.py through nodegraph)."""

from __future__ import annotations

from typing import Any

import torch

from tests.comfy_cases import TINY_KSAMPLER

FAMILY = "sd1"
KEY_DIM = 32
"""The tiny SD 1.x text width: the phrases' pooled text and the grounding tokens (real: 768)."""
KSAMPLER = TINY_KSAMPLER

CASES: list[dict[str, Any]] = [
    # one box on the positive prompt; the negative has none and shares it (ComfyUI's rule)
    {"name": "gligen.one", "positive": [["cat", 32, 24, 8, 16]], "inputs": KSAMPLER},
    # two boxes, pixel sizes that are not multiples of 8 (floored to latent units)
    {"name": "gligen.two", "positive": [["cat", 20, 36, 0, 0], ["dog", 44, 30, 17, 33]],
     "inputs": {**KSAMPLER, "sampler_name": "dpmpp_2m", "seed": 7}},
    # the negative prompt has a box of its own: nothing is shared
    {"name": "gligen.own_negative", "positive": [["cat", 32, 32, 0, 0]],
     "negative": [["dog", 24, 24, 32, 32]], "inputs": {**KSAMPLER, "cfg": 3.0}},
    # a latent batch of 2
    {"name": "gligen.batch", "positive": [["dog", 40, 16, 8, 8]], "latent": [2, 4, 8, 8],
     "inputs": {**KSAMPLER, "steps": 3}},
    # two positive Conds with boxes (ConditioningCombine): the negative gets the last one's
    {"name": "gligen.combined", "positive": [["cat", 32, 24, 8, 16]],
     "positive2": [["dog", 16, 48, 40, 8]], "inputs": {**KSAMPLER, "seed": 11}},
]  # fmt: skip


def inputs() -> dict[str, torch.Tensor]:
    """Seeded prompts, the phrases' pooled texts and the GLIGEN model's weights."""
    g = torch.Generator().manual_seed(777)
    return {
        "cond": torch.randn((1, 77, KEY_DIM), generator=g),
        "cond2": torch.randn((1, 77, KEY_DIM), generator=g),
        "uncond": torch.randn((1, 77, KEY_DIM), generator=g),
        "cat": torch.randn((1, KEY_DIM), generator=g),
        "dog": torch.randn((1, KEY_DIM), generator=g),
    }


def gligen_state(unet: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    """A GLIGEN file's tensors for `unet` (original-layout block names, as real files have
    them): a position net, and a gated self-attention layer per attention block with its gates
    open (tanh(alpha) well away from 0, as a trained model's)."""
    from diffusers.models.attention import GatedSelfAttentionDense
    from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

    from tests.family_fixtures import unet_to_original

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = GLIGENTextBoundingboxProjection(KEY_DIM, KEY_DIM, "text-only", 8)
        diffusers_names: dict[str, torch.Tensor] = {}
        for path, module in unet.named_modules():
            if not path.endswith("transformer_blocks.0"):
                continue
            width = module.norm1.normalized_shape[0]
            fuser = GatedSelfAttentionDense(width, KEY_DIM, 8, width // 8)
            with torch.no_grad():
                fuser.alpha_attn.fill_(0.7)
                fuser.alpha_dense.fill_(-0.5)
            for key, value in fuser.state_dict().items():
                diffusers_names[f"{path}.fuser.{key}"] = value
        with torch.no_grad():
            net.null_positive_feature.normal_()
            net.null_position_feature.normal_()
    state = unet_to_original(diffusers_names, unet.config)
    state.update({f"position_net.{k}": v for k, v in net.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in state.items()}
