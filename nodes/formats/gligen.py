"""GLIGEN files (gligen_sd14_textbox_pruned and the like): a position net that turns boxes and
their phrases' pooled text into grounding tokens, and one gated self-attention layer per
attention block of the UNet, fused in after that block's self-attention.

The layers are keyed by the UNet block they sit in (`input_blocks.1.1.transformer_blocks.0.
fuser.*`, ..., `middle_block.1.*`, `output_blocks.*`) and listed in ComfyUI's order (input
blocks, middle block, output blocks, each by number: the order the UNet runs them). Their names
under `fuser.` and the position net's under `position_net.` are those of diffusers'
GatedSelfAttentionDense and GLIGENTextBoundingboxProjection, which run them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .tensors import CheckpointError

POSITION_NET = "position_net."
FUSER = ".fuser."
BLOCKS = ("input_blocks", "middle_block", "output_blocks")
_BLOCK = re.compile(r"(input_blocks|middle_block|output_blocks)\.(\d+)\.")
FOURIER_FREQS = 8
"""The position net's Fourier features per box coordinate (ComfyUI's PositionNet default)."""


@dataclass(frozen=True)
class GligenWeights:
    """A GLIGEN file's tensors: the position net's and each fused layer's, in the UNet's order."""

    position_net: dict[str, torch.Tensor]
    fusers: tuple[dict[str, torch.Tensor], ...]

    @property
    def key_dim(self) -> int:
        """The width of the phrases' pooled text the file takes."""
        return int(self.position_net["null_positive_feature"].shape[0])

    @property
    def token_dim(self) -> int:
        """The width of the grounding tokens (the UNet's cross-attention width)."""
        return int(self.position_net["linears.4.weight"].shape[0])

    def widths(self) -> list[int]:
        """Each fused layer's width (its UNet block's channels)."""
        return [int(f["linear.weight"].shape[0]) for f in self.fusers]


def parse_gligen(state: Mapping[str, torch.Tensor], name: str) -> GligenWeights:
    """A GLIGEN file's tensors grouped for its modules (a CheckpointError saying what is not)."""
    position = {k[len(POSITION_NET) :]: v for k, v in state.items() if k.startswith(POSITION_NET)}
    missing = {"null_positive_feature", "null_position_feature", "linears.0.weight",
               "linears.4.weight"} - position.keys()  # fmt: skip
    if missing:
        raise CheckpointError(
            f"{name}: not a GLIGEN model: expected a position net ({POSITION_NET}"
            f"{sorted(missing)[0]}, ...); found {', '.join(sorted(state)[:3]) or 'no tensors'}"
        )
    layers: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if FUSER not in key:
            continue
        found = _BLOCK.search(key)
        if found is None:
            raise CheckpointError(f"{name}: a fused layer outside the UNet's blocks: {key}")
        place = (BLOCKS.index(found[1]), int(found[2]))
        layers.setdefault(place, {})[key.split(FUSER)[-1]] = value
    if not layers:
        raise CheckpointError(f"{name}: a GLIGEN position net without fused layers ({FUSER})")
    fusers = tuple(layers[place] for place in sorted(layers))
    for fuser in fusers:
        if "linear.weight" not in fuser or "attn.to_q.weight" not in fuser:
            raise CheckpointError(f"{name}: a fused layer without its linear / attention weights")
    return GligenWeights(position, fusers)


def build_position_net(weights: GligenWeights) -> torch.nn.Module:
    """diffusers' GLIGENTextBoundingboxProjection holding the file's position net."""
    from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

    with torch.device("meta"):
        net = GLIGENTextBoundingboxProjection(
            weights.key_dim, weights.token_dim, "text-only", FOURIER_FREQS
        )
    net.load_state_dict(weights.position_net, assign=True)
    return net.float().eval().requires_grad_(False)


def build_fuser(state: Mapping[str, torch.Tensor], heads: int) -> torch.nn.Module:
    """diffusers' GatedSelfAttentionDense holding one fused layer, with `heads` heads."""
    from diffusers.models.attention import GatedSelfAttentionDense

    width, key_dim = state["linear.weight"].shape
    with torch.device("meta"):
        fuser = GatedSelfAttentionDense(int(width), int(key_dim), heads, int(width) // heads)
    fuser.load_state_dict(dict(state), assign=True)
    return fuser.float().eval().requires_grad_(False)
