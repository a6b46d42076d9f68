"""ControlNet files: their layout (diffusers, or the original `control_model.` one) and the
diffusers ControlNetModel built from their tensors, with a config inferred from the shapes."""

from __future__ import annotations

import re
from typing import Any, Literal

import torch

from .configs import GROUPS, HEAD_WIDTH
from .convert import load_into
from .t2i_adapter import build_t2i_adapter, is_t2i_adapter
from .tensors import CheckpointError, Tensors

Layout = Literal["diffusers", "original"]
ORIGINAL_PREFIX = "control_model."
SDXL_POOLED, SDXL_SIZES = 1280, 6


UNSUPPORTED = {
    "lora_controlnet": "a Control-LoRA",
    "control_add_embedding.linear_1.bias": "a ControlNet-Union",
}
"""Keys of ControlNet kinds nodegraph does not load yet, and what they are."""


DIFFERENCE = "difference"
"""The key that marks a difference ControlNet: its UNet-like weights are offsets from the
model's (DiffControlNetLoader adds the model's; ComfyUI reads it in the original layout)."""


def controlnet_layout(tensors: Tensors) -> Layout:
    """Which layout a ControlNet file's tensors are in; a CheckpointError when neither."""
    for key, kind in UNSUPPORTED.items():
        if key in tensors:
            raise CheckpointError(f"{tensors.path.name} is {kind}, which nodegraph cannot load yet")
    if "controlnet_cond_embedding.conv_in.weight" in tensors:
        return "diffusers"
    if any(k.startswith(ORIGINAL_PREFIX) or k.startswith("input_hint_block.") for k in tensors):
        return "original"
    raise CheckpointError(f"{tensors.path.name} is not a ControlNet (no hint embedding found)")


def _count(keys: list[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pattern.match(k))})


def _original_to_diffusers(tensors: Tensors) -> dict[str, torch.Tensor]:
    """The original layout renamed by diffusers' own converter."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    state = tensors.read([k for k in tensors if k != DIFFERENCE])
    inner = [k.removeprefix(ORIGINAL_PREFIX) for k in state]
    blocks = _count(inner, "input_blocks.")
    downsamples = sum(1 for k in inner if re.fullmatch(r"input_blocks\.\d+\.0\.op\.weight", k))
    layers = (blocks - 1 - downsamples) // (downsamples + 1)
    return convert_controlnet_checkpoint(state, {"layers_per_block": layers})


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(state[key].shape)


def controlnet_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """ControlNetModel's config for diffusers-layout tensors."""
    keys = list(state)
    n = _count(keys, "down_blocks.")
    channels = [_shape(state, f"down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(n)]
    depths = [_count(keys, f"down_blocks.{i}.attentions.0.transformer_blocks.") for i in range(n)]
    mid_depth = _count(keys, "mid_block.attentions.0.transformer_blocks.")
    context = next(k for k in keys if k.endswith("attn2.to_k.weight"))
    proj_in = next(k for k in keys if k.endswith("proj_in.weight"))
    linear = len(_shape(state, proj_in)) == 2
    heads = [8 if not linear else max(1, c // HEAD_WIDTH) for c in channels]
    hint = _count(keys, "controlnet_cond_embedding.blocks.") // 2 + 1
    embed = [
        _shape(state, f"controlnet_cond_embedding.blocks.{2 * i}.weight")[0]
        for i in range(hint - 1)
    ]
    embed.append(_shape(state, "controlnet_cond_embedding.conv_out.weight")[1])
    config: dict[str, Any] = {
        "in_channels": _shape(state, "conv_in.weight")[1],
        "conditioning_channels": _shape(state, "controlnet_cond_embedding.conv_in.weight")[1],
        "block_out_channels": channels,
        "layers_per_block": _count(keys, "down_blocks.0.resnets."),
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "transformer_layers_per_block": [d or mid_depth or 1 for d in depths],
        "cross_attention_dim": _shape(state, context)[1],
        "use_linear_projection": linear,
        "attention_head_dim": heads[0] if not linear else heads,
        "norm_num_groups": GROUPS,
        "conditioning_embedding_out_channels": embed,
    }
    if "add_embedding.linear_1.weight" in state:
        adm = _shape(state, "add_embedding.linear_1.weight")[1]
        config.update(addition_embed_type="text_time", projection_class_embeddings_input_dim=adm)
        # shapes cannot split the ADM vector: SDXL's is 1280 pooled + 6 size conditions x 256
        config["addition_time_embed_dim"] = (adm - SDXL_POOLED) // SDXL_SIZES
    return config


def _add_base(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> None:
    """A difference ControlNet's offsets made weights: the model's added where it has the key
    (ControlNetModel names what it shares with the UNet as the UNet does)."""
    for key, value in state.items():
        own = base.get(key)
        if own is not None and own.shape == value.shape:
            state[key] = value + own.to(device=value.device, dtype=value.dtype)


def build_controlnet(tensors: Tensors, base: dict[str, torch.Tensor] | None = None) -> Any:
    """A diffusers ControlNetModel from a single file of either layout (or a T2IAdapter, which
    ControlNetLoader loads too); a difference ControlNet needs `base`, the model's UNet weights
    (diffusers names)."""
    from diffusers import ControlNetModel

    if is_t2i_adapter(tensors):
        return build_t2i_adapter(tensors)
    if controlnet_layout(tensors) == "original":
        state = _original_to_diffusers(tensors)
    else:
        state = tensors.read([k for k in tensors if k != DIFFERENCE])
    if DIFFERENCE in tensors:
        if base is None:
            raise CheckpointError(
                f"{tensors.path.name} is a difference ControlNet: load it with "
                "DiffControlNetLoader, which adds the model's weights"
            )
        _add_base(state, base)
    config = controlnet_config(state)
    with torch.device("meta"):
        net = ControlNetModel(**config)
    load_into(net, state, tensors.path.name)
    return net.eval()
