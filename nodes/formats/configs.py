"""diffusers / transformers configurations inferred from an original-layout file's tensor shapes.

Widths, depths, channel counts and block structure come from the shapes (so a tiny test model
and a real one load through the same code); what shapes cannot tell (attention heads, the
activation, the latent scale) comes from the family (nodes.formats.families).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .detect import UNET_PREFIX
from .families import Family, TowerSpec, Variant
from .tensors import CheckpointError, Tensors

GROUPS = 32  # every SD-family UNet and VAE normalises in 32 groups
HEAD_WIDTH = 64  # SD 2.x / SDXL attention: one head per 64 channels


def _indices(tensors: Tensors, prefix: str) -> list[int]:
    """The distinct integers N of keys `<prefix>N.` (sorted)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in tensors if (m := pattern.match(k))})


def _heads(family: Family, channels: int) -> int:
    return 8 if family.heads == "fixed8" else max(1, channels // HEAD_WIDTH)


def unet_config(tensors: Tensors, variant: Variant) -> dict[str, Any]:
    """UNet2DConditionModel's config for the file's UNet."""
    u = UNET_PREFIX
    family = variant.family
    name = tensors.path.name
    model_channels = tensors.shape(u + "input_blocks.0.0.weight")[0]
    levels: list[dict[str, int]] = [{"channels": model_channels, "resnets": 0, "depth": 0}]
    for i in _indices(tensors, u + "input_blocks.")[1:]:
        block = f"{u}input_blocks.{i}."
        if block + "0.op.weight" in tensors:  # a downsample closes the level
            levels.append({"channels": levels[-1]["channels"], "resnets": 0, "depth": 0})
            continue
        level = levels[-1]
        level["channels"] = tensors.shape(block + "0.out_layers.3.weight")[0]
        level["resnets"] += 1
        level["depth"] = max(
            level["depth"], len(_indices(tensors, block + "1.transformer_blocks."))
        )
    resnets = {lv["resnets"] for lv in levels}
    if len(resnets) != 1:
        raise CheckpointError(f"{name}: UNet levels with different resblock counts {resnets}")
    channels = [lv["channels"] for lv in levels]
    depths = [lv["depth"] for lv in levels]
    mid_depth = len(_indices(tensors, u + "middle_block.1.transformer_blocks."))
    if mid_depth and depths[-1] and mid_depth != depths[-1]:
        raise CheckpointError(
            f"{name}: middle block depth {mid_depth} != last level's {depths[-1]}"
        )
    context = next(k for k in tensors if k.startswith(u) and k.endswith("attn2.to_k.weight"))
    proj_in = next(k for k in tensors if k.startswith(u) and k.endswith("proj_in.weight"))
    heads = [_heads(family, c) for c in channels]
    config: dict[str, Any] = {
        "sample_size": variant.size // 8,
        "in_channels": tensors.shape(u + "input_blocks.0.0.weight")[1],
        "out_channels": tensors.shape(u + "out.2.weight")[0],
        "block_out_channels": channels,
        "layers_per_block": resnets.pop(),
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_depth else None,
        # diffusers' middle block takes the last entry; levels without attention ignore theirs
        "transformer_layers_per_block": [d or mid_depth or 1 for d in depths],
        "cross_attention_dim": tensors.shape(context)[1],
        "use_linear_projection": len(tensors.shape(proj_in)) == 2,
        "attention_head_dim": heads[0] if family.heads == "fixed8" else heads,
        "norm_num_groups": GROUPS,
        "upcast_attention": family.key == "sd2",
    }
    if variant.unclip:
        adm = tensors.shape(u + "label_emb.0.0.weight")[1]
        config.update(class_embed_type="projection", projection_class_embeddings_input_dim=adm)
    elif family.time_ids:
        adm = tensors.shape(u + "label_emb.0.0.weight")[1]
        pooled = _pooled_width(tensors, family)
        time_dim, rest = divmod(adm - pooled, family.time_ids)
        if rest or time_dim <= 0:
            raise CheckpointError(
                f"{name}: label_emb takes {adm} features, which is not the pooled text ({pooled})"
                f" plus {family.time_ids} size conditions"
            )
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=adm,
        )
    return config


def _pooled_width(tensors: Tensors, family: Family) -> int:
    """The width of the pooled text SDXL's UNet takes: bigG's projection (1280 when absent)."""
    from .detect import tower_prefix

    g = family.towers[-1]
    prefix = tower_prefix(tensors, g)
    if prefix and prefix + "text_projection" in tensors:
        return tensors.shape(prefix + "text_projection")[1]
    return 1280


def vae_config(tensors: Tensors, prefix: str, variant: Variant | None) -> dict[str, Any]:
    """AutoencoderKL's config for the file's VAE (under `prefix`; a bare VAE has no variant)."""
    e = prefix + "encoder."
    levels = _indices(tensors, e + "down.")
    channels = [tensors.shape(f"{e}down.{i}.block.0.conv2.weight")[0] for i in levels]
    return {
        "in_channels": tensors.shape(e + "conv_in.weight")[1],
        "out_channels": tensors.shape(prefix + "decoder.conv_out.weight")[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": channels,
        "layers_per_block": len(_indices(tensors, e + "down.0.block.")),
        "latent_channels": tensors.shape(prefix + "decoder.conv_in.weight")[1],
        "norm_num_groups": GROUPS,
        "sample_size": variant.size if variant else 512,
        "scaling_factor": variant.family.latent_scale if variant else 1.0,
    }


def diffusers_vae_config(tensors: Tensors) -> dict[str, Any]:
    """AutoencoderKL's config for a VAE file in diffusers' key layout."""
    e = "encoder."
    levels = _indices(tensors, e + "down_blocks.")
    channels = [tensors.shape(f"{e}down_blocks.{i}.resnets.0.conv2.weight")[0] for i in levels]
    return {
        "in_channels": tensors.shape(e + "conv_in.weight")[1],
        "out_channels": tensors.shape("decoder.conv_out.weight")[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": channels,
        "layers_per_block": len(_indices(tensors, e + "down_blocks.0.resnets.")),
        "latent_channels": tensors.shape("decoder.conv_in.weight")[1],
        "norm_num_groups": GROUPS,
        "scaling_factor": 1.0,
    }


def _hf_root(tensors: Tensors, prefix: str) -> str:
    """A CLIP-L tower's key root: with `text_model.` (most files) or without (some old ones)."""
    return prefix + "text_model." if tensors.count(prefix + "text_model.") else prefix


@dataclass(frozen=True)
class TextLayout:
    """Where a text tower's shapes are read, in one key layout."""

    token: str
    position: str
    layers: str
    mlp: str
    activation: str
    projection: str
    projection_axis: int
    """The projection's output width is this axis of its tensor (a Linear weight, or
    OpenCLIP's [width, projection] matrix)."""


TEXT_LAYOUTS = {
    "hf": TextLayout(
        "embeddings.token_embedding.weight",
        "embeddings.position_embedding.weight",
        "encoder.layers.",
        "encoder.layers.0.mlp.fc1.weight",
        "quick_gelu",
        "text_projection.weight",
        0,
    ),
    "open_clip": TextLayout(
        "token_embedding.weight",
        "positional_embedding",
        "transformer.resblocks.",
        "transformer.resblocks.0.mlp.c_fc.weight",
        "gelu",
        "text_projection",
        1,
    ),
}


def text_config(tensors: Tensors, prefix: str, spec: TowerSpec) -> dict[str, Any]:
    """CLIPTextConfig keyword arguments for a tower stored under `prefix`."""
    keys = TEXT_LAYOUTS[spec.layout]
    root = _hf_root(tensors, prefix) if spec.layout == "hf" else prefix
    vocab, width = tensors.shape(root + keys.token)
    projection = prefix + keys.projection
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": tensors.shape(root + keys.mlp)[0],
        "num_hidden_layers": len(_indices(tensors, root + keys.layers)),
        "num_attention_heads": max(1, width // HEAD_WIDTH),
        "max_position_embeddings": tensors.shape(root + keys.position)[0],
        "hidden_act": keys.activation,
        "projection_dim": (
            tensors.shape(projection)[keys.projection_axis] if projection in tensors else width
        ),
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": spec.pad_id,
    }
