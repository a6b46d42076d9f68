"""CLIP vision encoders in a single file: their key layouts and their config, read from shapes.

Two layouts are known, as ComfyUI knows them:
- transformers' (`vision_model.embeddings.class_embedding`, `vision_model.encoder.layers.N.`,
  `visual_projection.weight`): the files of ComfyUI's models/clip_vision folder;
- OpenCLIP's (`visual.class_embedding`, `visual.transformer.resblocks.N.attn.in_proj_weight`,
  `visual.proj`), also found inside unCLIP checkpoints under `embedder.model.visual.`.
Both become transformers' names (OpenCLIP's fused in_proj split in three, `proj` transposed).

The config (CLIPVisionConfig) comes from the tensors' shapes: widths, depth, patch and picture
size (the position embeddings are one per patch plus the class token), so a tiny test file and
a real one load through the same code. What shapes cannot tell follows ComfyUI's configs:
16 attention heads (all of ComfyUI's CLIP vision configs have 16), OpenAI's `quick_gelu` for the
ViT-L family (fewer than 31 layers: ComfyUI's vitl configs) and `gelu` for OpenCLIP's ViT-H /
bigG (31 layers and more), CLIP's mean and std.
SigLIP and DINOv2 encoders (no class token / other layouts) are refused with a clear message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from .tensors import CheckpointError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HEADS = 16
GELU_FROM_LAYERS = 31  # ComfyUI: 31+ layers is ViT-H / bigG (gelu), fewer the ViT-L family
OPENCLIP_PREFIXES = ("visual.", "embedder.model.visual.")
"""Where OpenCLIP's visual tower sits: its own file, or an unCLIP checkpoint's image embedder."""

V = "vision_model."
CLASS_EMBEDDING = V + "embeddings.class_embedding"
PATCH_EMBEDDING = V + "embeddings.patch_embedding.weight"
POSITION_EMBEDDING = V + "embeddings.position_embedding.weight"
LAYERS = V + "encoder.layers."
PROJECTION = "visual_projection.weight"

_OPENCLIP_TOP = {
    "class_embedding": CLASS_EMBEDDING,
    "conv1.weight": PATCH_EMBEDDING,
    "positional_embedding": POSITION_EMBEDDING,
    "ln_pre.weight": V + "pre_layrnorm.weight",
    "ln_pre.bias": V + "pre_layrnorm.bias",
    "ln_post.weight": V + "post_layernorm.weight",
    "ln_post.bias": V + "post_layernorm.bias",
}
_OPENCLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)[._](weight|bias)$")


def openclip_prefix(keys: Mapping[str, Any]) -> str | None:
    """The prefix of an OpenCLIP visual tower among `keys`, or None."""
    for prefix in OPENCLIP_PREFIXES:
        if f"{prefix}transformer.resblocks.0.attn.in_proj_weight" in keys:
            return prefix
    return None


def has_clip_vision(keys: Mapping[str, Any]) -> bool:
    """Whether `keys` hold a CLIP vision tower in either layout."""
    return CLASS_EMBEDDING in keys or openclip_prefix(keys) is not None


def from_openclip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP's visual tower under `prefix` in transformers' names (other keys left out)."""
    out: dict[str, torch.Tensor] = {}
    for key in [k for k in state if k.startswith(prefix)]:  # read only the tower's tensors
        value, rest = state[key], key[len(prefix) :]
        if rest in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[rest]] = value
        elif rest == "proj":
            out[PROJECTION] = value.transpose(0, 1).contiguous()
        elif m := _RESBLOCK.match(rest):
            layer, part, kind = m.groups()
            base = f"{LAYERS}{layer}."
            if part == "attn.in_proj":
                for name, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"{base}self_attn.{name}_proj.{kind}"] = chunk.contiguous()
            elif part in _OPENCLIP_BLOCK:
                out[f"{base}{_OPENCLIP_BLOCK[part]}.{kind}"] = value
    return out


def vision_state(state: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """A file's CLIP vision tower in transformers' names, or a CheckpointError naming the file."""
    prefix = openclip_prefix(state)
    if prefix is not None:
        return from_openclip(state, prefix)
    if CLASS_EMBEDDING in state:
        return {k: state[k] for k in state if k.startswith(V) or k == PROJECTION}
    if any(k.startswith(V) for k in state) or any("layer_scale2" in k for k in state):
        raise CheckpointError(
            f"{name} is a vision encoder without a class token (SigLIP or DINOv2), which "
            "nodegraph does not support yet"
        )
    raise CheckpointError(
        f"{name} is invalid and does not contain a valid CLIP vision model "
        f"(no {CLASS_EMBEDDING} nor OpenCLIP visual.transformer weights)"
    )


def _layer_count(state: Mapping[str, torch.Tensor]) -> int:
    pattern = re.compile(re.escape(LAYERS) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def vision_config(state: Mapping[str, torch.Tensor], name: str) -> dict[str, Any]:
    """CLIPVisionConfig's arguments for a tower in transformers' names, from its shapes."""
    for key in (PATCH_EMBEDDING, POSITION_EMBEDDING, PROJECTION, LAYERS + "0.mlp.fc1.weight"):
        if key not in state:
            raise CheckpointError(f"{name}: the CLIP vision tower has no {key}")
    hidden = int(state[CLASS_EMBEDDING].shape[0])
    patch = int(state[PATCH_EMBEDDING].shape[-1])
    positions = int(state[POSITION_EMBEDDING].shape[0])
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointError(f"{name}: {positions} position embeddings is not a square + 1")
    if hidden % HEADS:
        raise CheckpointError(f"{name}: width {hidden} does not split into {HEADS} heads")
    layers = _layer_count(state)
    return {
        "hidden_size": hidden,
        "intermediate_size": int(state[LAYERS + "0.mlp.fc1.weight"].shape[0]),
        "projection_dim": int(state[PROJECTION].shape[0]),
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_channels": int(state[PATCH_EMBEDDING].shape[1]),
        "image_size": grid * patch,
        "patch_size": patch,
        "hidden_act": "gelu" if layers >= GELU_FROM_LAYERS else "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
    }


def build_clip_vision(state: Mapping[str, torch.Tensor], name: str) -> Any:
    """transformers' CLIPVisionModelWithProjection with the file's weights (float as stored)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    weights = vision_state(state, name)
    config = CLIPVisionConfig(**vision_config(weights, name))
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    expected = set(model.state_dict())
    known = {k: v for k, v in weights.items() if k in expected}
    missing = sorted(expected - set(known) - {V + "embeddings.position_ids"})
    if missing:
        raise CheckpointError(f"{name}: the CLIP vision tower lacks {', '.join(missing[:4])}")
    dtype = next(iter(known.values())).dtype
    model = model.to(dtype=dtype)
    model.load_state_dict(known, strict=False, assign=True)
    embeddings = model.vision_model.embeddings
    if embeddings.position_ids.is_meta:  # a buffer the file need not hold
        count = embeddings.position_ids.shape[-1]
        embeddings.register_buffer(
            "position_ids", torch.arange(count).expand((1, -1)), persistent=False
        )
    return model.eval().requires_grad_(False)
