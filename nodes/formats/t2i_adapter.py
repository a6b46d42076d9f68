"""T2I-Adapter files (TencentARC's original layout, or diffusers'): what they are, and the
diffusers T2IAdapter (full adapter) built from their tensors with a config read from the
shapes. ComfyUI's ControlNetLoader loads them through the same input."""

from __future__ import annotations

import re
from typing import Any

import torch

from .convert import load_into
from .tensors import CheckpointError, Tensors

DOWNSCALE = 8
"""The pixel unshuffle of SD 1.x / 2.x adapters (SDXL's is 16)."""
_BLOCK = re.compile(r"body\.(\d+)\.(in_conv|block1|block2)\.(weight|bias)$")


def is_t2i_adapter(tensors: Tensors) -> bool:
    keys = set(tensors)
    return (
        "adapter.conv_in.weight" in keys
        or ("conv_in.weight" in keys and "body.0.block2.weight" in keys)
        or "body.0.in_conv.weight" in keys
    )


def _diffusers_names(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The original layout's keys as diffusers names them (ComfyUI's mapping, reversed):
    body.{2i+j}.block* -> adapter.body.{i}.resnets.{j}.block*, body.{2i}.in_conv ->
    adapter.body.{i}.in_conv."""
    if any(k.endswith("down_opt.op.weight") for k in state):
        raise CheckpointError(f"{name} is a T2I-Adapter with convolution downsampling, which "
                              "nodegraph cannot load yet")  # fmt: skip
    out = {}
    for key, value in state.items():
        if key.startswith("conv_in."):
            out["adapter." + key] = value
            continue
        match = _BLOCK.fullmatch(key)
        if match is None:
            raise CheckpointError(f"{name}: unexpected T2I-Adapter tensor {key}")
        index, part, param = int(match.group(1)), match.group(2), match.group(3)
        level, block = divmod(index, 2)
        where = "in_conv" if part == "in_conv" else f"resnets.{block}.{part}"
        out[f"adapter.body.{level}.{where}.{param}"] = value
    return out


def adapter_config(state: dict[str, torch.Tensor], name: str) -> dict[str, Any]:
    """A FullAdapter's config from its tensors (4 levels of 2 residual blocks, as SD's)."""
    conv_in = state["adapter.conv_in.weight"]
    levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("adapter.body."))
    channels = [int(state[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0])
                for i in range(levels)]  # fmt: skip
    if int(conv_in.shape[1]) % (DOWNSCALE * DOWNSCALE):
        raise CheckpointError(f"{name} is not an SD 1.x / 2.x T2I-Adapter (an SDXL one?), "
                              "which nodegraph cannot load yet")  # fmt: skip
    if tuple(state["adapter.body.0.resnets.0.block2.weight"].shape[-2:]) != (1, 1):
        raise CheckpointError(f"{name} is a T2I-Adapter of another kernel size than diffusers'")
    return {
        "in_channels": int(conv_in.shape[1]) // (DOWNSCALE * DOWNSCALE),
        "channels": channels,
        "num_res_blocks": 2,
        "downscale_factor": DOWNSCALE,
        "adapter_type": "full_adapter",
    }


def build_t2i_adapter(tensors: Tensors) -> Any:
    """A diffusers T2IAdapter from a single file of either layout."""
    from diffusers import T2IAdapter

    name = tensors.path.name
    if "body.0.in_conv.weight" in tensors:
        raise CheckpointError(f"{name} is a light T2I-Adapter, which nodegraph cannot load yet")
    state = tensors.read(list(tensors))
    if "adapter.conv_in.weight" not in state:
        state = _diffusers_names(state, name)
    with torch.device("meta"):
        net = T2IAdapter(**adapter_config(state, name))
    load_into(net, state, name)
    return net.eval()
