"""kohya-format LoRA files for the tiny checkpoints, and the weights they mean merged by hand."""

from __future__ import annotations

import copy

import torch

from nodes.formats.unet_names import original_unet_names

RANK, ALPHA = 2, 1.0
UNET_TARGETS = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "down_blocks.0.attentions.0.proj_in.weight",  # a 1x1 convolution in SD 1.x (LoCon)
    "up_blocks.1.resnets.0.conv1.weight",  # a 3x3 convolution (LoCon)
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",  # SDXL's first attention
    "mid_block.attentions.0.proj_in.weight",
)
TEXT_TARGETS = ("encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.1.mlp.fc1.weight")


def _pair(weight: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) for a weight: Linear (out, in) or Conv (out, in, kh, kw)."""
    down = torch.randn(RANK, *weight.shape[1:], generator=g) * 0.3
    up = torch.randn(weight.shape[0], RANK, *([1, 1] if weight.ndim == 4 else []), generator=g)
    return up * 0.3, down


def _delta(up: torch.Tensor, down: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return (up.flatten(1) @ down.flatten(1)).reshape(shape) * (ALPHA / RANK)


def _kohya(name: str, up, down) -> dict[str, torch.Tensor]:
    return {
        f"{name}.lora_up.weight": up,
        f"{name}.lora_down.weight": down,
        f"{name}.alpha": torch.tensor(ALPHA),
    }


def make_lora(
    pipe, *, original_names: bool, text_prefixes: dict, seed: int = 0
) -> tuple[dict, dict]:
    """A kohya LoRA file's tensors and the deltas it means, per (component, weight)."""
    g = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    unet = pipe.unet.state_dict()
    names = original_unet_names(pipe.unet.config, unet) if original_names else {}
    for target in UNET_TARGETS:
        if target not in unet:
            continue
        up, down = _pair(unet[target], g)
        module = names.get(target, target).removesuffix(".weight").replace(".", "_")
        tensors |= _kohya(f"lora_unet_{module}", up, down)
        deltas[("unet", target)] = _delta(up, down, unet[target].shape)
    for component, prefix in text_prefixes.items():
        encoder = getattr(pipe, component).state_dict()
        for target in TEXT_TARGETS:
            key = target if target in encoder else "text_model." + target
            up, down = _pair(encoder[key], g)
            module = ("text_model." + target).removesuffix(".weight").replace(".", "_")
            tensors |= _kohya(f"{prefix}_{module}", up, down)
            deltas[(component, key)] = _delta(up, down, encoder[key].shape)
    return tensors, deltas


def merged(pipe, deltas: dict, strength_model: float, strength_clip: float):
    pipe = copy.deepcopy(pipe)
    with torch.no_grad():
        for (component, name), delta in deltas.items():
            strength = strength_model if component == "unet" else strength_clip
            param = dict(getattr(pipe, component).named_parameters())[name]
            param += strength * delta
    return pipe
