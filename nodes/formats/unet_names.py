"""The original (LDM) name of every diffusers UNet weight, from the UNet's config.

LoRA files and merge recipes name UNet weights in either layout (kohya's SDXL LoRAs use the
original names); this is the renaming diffusers' single-file converter undoes, as a table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _block_map(config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers module prefixes -> original ones, block by block."""
    layers = int(config["layers_per_block"])
    levels = len(config["block_out_channels"])
    names = dict(TOP)
    for b in range(levels):
        for i in range(layers):
            block = 1 + b * (layers + 1) + i
            names[f"down_blocks.{b}.resnets.{i}"] = f"input_blocks.{block}.0"
            names[f"down_blocks.{b}.attentions.{i}"] = f"input_blocks.{block}.1"
        if b < levels - 1:
            names[f"down_blocks.{b}.downsamplers.0.conv"] = (
                f"input_blocks.{(b + 1) * (layers + 1)}.0.op"
            )
    names["mid_block.resnets.0"] = "middle_block.0"
    names["mid_block.attentions.0"] = "middle_block.1"
    names["mid_block.resnets.1"] = "middle_block.2"
    for b in range(levels):
        attention = config["up_block_types"][b].startswith("CrossAttn")
        for i in range(layers + 1):
            block = b * (layers + 1) + i
            names[f"up_blocks.{b}.resnets.{i}"] = f"output_blocks.{block}.0"
            names[f"up_blocks.{b}.attentions.{i}"] = f"output_blocks.{block}.1"
        if b < levels - 1:
            last = b * (layers + 1) + layers
            names[f"up_blocks.{b}.upsamplers.0.conv"] = (
                f"output_blocks.{last}.{2 if attention else 1}.conv"
            )
    return names


def original_unet_names(config: Mapping[str, Any], weights: Iterable[str]) -> dict[str, str]:
    """diffusers weight name -> original name (without `model.diffusion_model.`), where known."""
    blocks = sorted(_block_map(config).items(), key=lambda kv: -len(kv[0]))
    out: dict[str, str] = {}
    for weight in weights:
        for new, old in blocks:
            if weight.startswith(new + "."):
                rest = weight[len(new) + 1 :]
                if ".resnets." in new or new.startswith("mid_block.resnets"):
                    head, _, tail = rest.partition(".")
                    rest = f"{RESNET.get(head, head)}.{tail}"
                out[weight] = f"{old}.{rest}"
                break
    return out


SDXL_MERGE_BLOCKS: tuple[str, ...] = (
    "time_embed.",
    "label_emb.",
    *(f"input_blocks.{i}" for i in range(9)),
    *(f"middle_block.{i}" for i in range(3)),
    *(f"output_blocks.{i}" for i in range(9)),
    "out.",
)
"""The parts of an SDXL UNet by original-name prefix, in ComfyUI's ModelMergeSDXL order."""


def longest_prefix(name: str, prefixes: Iterable[str]) -> str | None:
    """The longest of `prefixes` that `name` starts with (None: none does)."""
    return max((p for p in prefixes if name.startswith(p)), key=len, default=None)
