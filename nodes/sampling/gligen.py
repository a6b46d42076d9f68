"""GLIGEN while sampling: the UNet runs with a GLIGEN model's gated self-attention layers fused
into its transformer blocks (after each block's self-attention, as ComfyUI's middle_patch) and
its position net turning the prompt's boxes into grounding tokens: diffusers' own GLIGEN path
(UNet2DConditionModel's `position_net`, BasicTransformerBlock's `fuser`), attached for one call
under the UNet's patch lock and taken off afterwards, so the loaded checkpoint stays as it was.

The boxes are ComfyUI's (Gligen.set_position): (x, y, x + w, y + h) over the latent's width and
height, up to 30 with a mask, the rest zeros; each layer has its UNet block's attention heads
(ComfyUI's rule: 8 on SD 1.x, one per 64 channels otherwise, which is how those UNets split
their own attention).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from weakref import WeakKeyDictionary

import torch

from ..conditioning.gligen import MAX_BOXES, GligenBoxes
from ..formats.gligen import build_fuser
from ..loading.patching import module_lock
from ..values import Gligen

_placed: WeakKeyDictionary[Gligen, dict[tuple, Any]] = WeakKeyDictionary()


class _TokensIn(torch.nn.Module):
    """The position net in float32, its grounding tokens handed on in the UNet's dtype."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, **boxes: torch.Tensor) -> torch.Tensor:
        return self.net(**boxes).to(self.dtype)


def attention_blocks(unet: Any) -> list[Any]:
    """The UNet's attention blocks (Transformer2DModels) in the order it runs them."""
    levels = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return [a for level in levels if level is not None for a in getattr(level, "attentions", ())]


def _layers(gligen: Gligen, heads: tuple[int, ...], device: torch.device, dtype: torch.dtype):
    key = (heads, str(device), dtype)
    placed = _placed.setdefault(gligen, {})
    if key not in placed:
        fusers = [
            build_fuser(state, n).to(device=device, dtype=dtype)
            for state, n in zip(gligen.weights.fusers, heads, strict=True)
        ]
        position_net = gligen.position_net  # float32 on the CPU: a copy for other devices
        if torch.device(device).type != "cpu":
            position_net = copy.deepcopy(position_net).to(device)
        net = _TokensIn(position_net, dtype)
        placed[key] = (net, fusers)
    return placed[key]


def _check(gligen: Gligen, blocks: list[Any], widths: list[int]) -> None:
    fusers = gligen.weights.widths()
    if len(fusers) != len(blocks) or fusers != widths:
        raise ValueError(
            f"GLIGEN model {gligen.name} fits a UNet with attention blocks of widths {fusers}; "
            f"this model's are {widths} (a GLIGEN model fits one model family: SD 1.x)"
        )


@contextmanager
def fused(unet: Any, gligen: Gligen, dtype: torch.dtype) -> Iterator[None]:
    """The UNet with the GLIGEN model's layers and position net attached, for one call."""
    blocks = attention_blocks(unet)
    firsts = [b.transformer_blocks[0] for b in blocks]
    _check(gligen, blocks, [int(t.norm1.normalized_shape[0]) for t in firsts])
    if hasattr(unet, "position_net") or any(hasattr(t, "fuser") for t in firsts):
        raise ValueError("this UNet has GLIGEN layers of its own: it takes no GLIGEN model")
    device = next(unet.parameters()).device
    heads = tuple(int(t.attn1.heads) for t in firsts)
    net, fusers = _layers(gligen, heads, device, dtype)
    with module_lock(unet):
        unet.position_net = net
        try:
            for block, fuser in zip(blocks, fusers, strict=True):
                for transformer in block.transformer_blocks:
                    transformer.fuser = fuser
            yield
        finally:
            del unet.position_net
            for block in blocks:
                for transformer in block.transformer_blocks:
                    transformer._modules.pop("fuser", None)


def position_inputs(
    given: GligenBoxes, shape: torch.Size, device: torch.device
) -> dict[str, torch.Tensor]:
    """The position net's inputs for a latent of `shape` (batch, channels, height, width)."""
    batch, _, h, w = shape
    key_dim = given.model.weights.key_dim
    boxes = torch.zeros((MAX_BOXES, 4))
    masks = torch.zeros((MAX_BOXES,))
    texts = torch.zeros((MAX_BOXES, key_dim))
    for i, box in enumerate(given.boxes):
        pooled = box.pooled.reshape(-1)
        if pooled.shape[0] != key_dim:
            raise ValueError(
                f"GLIGEN model {given.model.name} takes phrases encoded {key_dim} wide; this "
                f"CLIP's are {pooled.shape[0]} (use the CLIP of the checkpoint it was made for)"
            )
        boxes[i] = torch.tensor(
            (box.x / w, box.y / h, (box.x + box.width) / w, (box.y + box.height) / h)
        )
        masks[i] = 1.0
        texts[i] = pooled.float()
    return {
        "boxes": boxes[None].repeat(batch, 1, 1).to(device),
        "masks": masks[None].repeat(batch, 1).to(device),
        "positive_embeddings": texts[None].repeat(batch, 1, 1).to(device),
    }
