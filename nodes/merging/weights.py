"""Another model's weights as patches (ComfyUI's get_key_patches + add_patches): each merged
weight becomes `weight * model_strength + strength * other`, computed while the merged model
runs, so neither checkpoint changes in memory or on disk."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..formats.lora import Adapter
from ..loading.patching import Patch, patched_weight
from ..loading.residency import RESIDENCY

SKIPPED_SUFFIXES = (".position_ids", ".logit_scale")
"""Text-encoder tensors ComfyUI's CLIP merges leave alone."""


@dataclass(frozen=True, eq=False, kw_only=True)
class ModelWeight(Adapter):
    """One weight of another model, with that model's own patches (its LoRAs) applied: a
    ComfyUI "diff" patch of the other model's weight."""

    name: str
    tensor: torch.Tensor
    patches: tuple[Patch, ...]
    module: torch.nn.Module
    """The other model's module holding `tensor` (read where it is; given back first if its
    weights were let go to keep within the memory budget)."""
    reshapes: ClassVar[bool] = False

    def product(self, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
        with RESIDENCY.present([self.module]):
            weight, _ = patched_weight(self.name, self.tensor, self.patches)
        return weight.to(dtype=dtype, device=device)


Ratios = Callable[[str], tuple[float, float]]
"""Weight name -> (strength of the other weight, strength of the own weight)."""


def merge_patch(
    into: torch.nn.Module,
    other: torch.nn.Module,
    other_patches: Sequence[Patch],
    ratios: Ratios,
    key: Hashable,
) -> list[Patch]:
    """Patches putting `other`'s weights into `into`'s, by name where both have the weight
    (shapes that differ are warned about when applied and left unmerged); one Patch per
    distinct pair of strengths."""
    own = dict(into.named_parameters())
    by_strengths: dict[tuple[float, float], dict[str, Adapter]] = {}
    for name, tensor in other.named_parameters():
        if name in own and not name.endswith(SKIPPED_SUFFIXES):
            patches = tuple(other_patches)
            adapter = ModelWeight(name=name, tensor=tensor, patches=patches, module=other)
            by_strengths.setdefault(ratios(name), {})[name] = adapter
    return [
        Patch(adapters, strength, (key, strength, model_strength), model_strength)
        for (strength, model_strength), adapters in by_strengths.items()
    ]
