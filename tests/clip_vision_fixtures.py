"""Tiny random-weight CLIP vision encoders (transformers' and OpenCLIP's layouts) and pictures,
shared by tests/test_clip_vision.py and tools/comfy_reference/make_clip_vision_reference.py."""

from __future__ import annotations

import torch

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 24,
    "num_hidden_layers": 3,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 16,
    "patch_size": 4,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
"""The tiny encoder's config: what nodes.formats.clip_vision must infer from its shapes."""


def tiny_state(
    seed: int = 0, projection_dim: int = TINY["projection_dim"]
) -> dict[str, torch.Tensor]:
    """A tiny CLIPVisionModelWithProjection's state dict (transformers' names), seeded; another
    `projection_dim` fits another model (the tiny SDXL's pooled width for its revision)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**{**TINY, "projection_dim": projection_dim})
    model = CLIPVisionModelWithProjection(config)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith("position_ids"):
            continue
        if "layer_norm" in name or "layrnorm" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            state[name] = base + 0.1 * torch.randn(value.shape, generator=g)
        else:
            fan_in = value.shape[-1] if value.ndim > 1 else 4
            state[name] = torch.randn(value.shape, generator=g) / fan_in**0.5
    return state


def to_openclip(state: dict[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """The same tower in OpenCLIP's names (in_proj fused, `proj` transposed)."""
    v = "vision_model."
    top = {
        "embeddings.class_embedding": "class_embedding",
        "embeddings.patch_embedding.weight": "conv1.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "pre_layrnorm.weight": "ln_pre.weight",
        "pre_layrnorm.bias": "ln_pre.bias",
        "post_layernorm.weight": "ln_post.weight",
        "post_layernorm.bias": "ln_post.bias",
    }
    out = {prefix + new: state[v + old] for old, new in top.items()}
    out[prefix + "proj"] = state["visual_projection.weight"].t().contiguous()
    block = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
             "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}  # fmt: skip
    for i in range(TINY["num_hidden_layers"]):
        ours, theirs = f"{v}encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            for old, new in block.items():
                out[f"{theirs}{new}.{kind}"] = state[f"{ours}{old}.{kind}"]
            qkv = [state[f"{ours}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{theirs}attn.in_proj_{kind}"] = torch.cat(qkv)
    return out


def pictures() -> dict[str, torch.Tensor]:
    """IMAGE batches in 0..1: non-square both ways (one with alpha), and one of the model's size."""
    g = torch.Generator().manual_seed(7)
    return {
        "wide": torch.rand(2, 22, 30, 3, generator=g),
        "tall_rgba": torch.rand(1, 37, 20, 4, generator=g),
        "square": torch.rand(1, 16, 16, 3, generator=g),
    }
