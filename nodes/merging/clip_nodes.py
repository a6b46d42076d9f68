"""ComfyUI's CLIPMergeSimple, CLIPMergeAdd and CLIPMergeSubtract: the second CLIP's text
encoder weights merged into the first's, tower by tower, as patches."""

from __future__ import annotations

import dataclasses

from nodegraph import InputField, Node, NodeContext

from ..values import CLIP, Clip
from .model_nodes import CATEGORY, _multiplier, _ratio
from .weights import merge_patch


def merged(node: str, clip1: Clip, clip2: Clip, strengths: tuple[float, float]) -> Clip:
    """clip1 with clip2's weights patched into each tower both have (clip1's patches first)."""
    others = {t.key: t for t in clip2.towers}
    added = []
    for tower in clip1.towers:
        other = others.get(tower.key)
        if other is None:
            continue
        own_patches = [p for key, p in clip2.patches if key == tower.key]
        key = (node, clip2.name, tower.key, *strengths)
        patches = merge_patch(tower.encoder, other.encoder, own_patches, lambda n: strengths, key)
        added += [(tower.key, patch) for patch in patches]
    if not added:
        raise ValueError(f"{node}: clip2 has none of clip1's text encoders")
    return dataclasses.replace(clip1, patches=(*clip1.patches, *added))


class CLIPMergeSimple(Node):
    """ratio of clip1's weights plus the rest of clip2's (1: clip1, 0: clip2)."""

    category = CATEGORY
    clip1: CLIP = InputField(description="The first CLIP.")
    clip2: CLIP = InputField(description="The second CLIP.")
    ratio: float = _ratio("Share of clip1.")

    def invoke(self, ctx: NodeContext) -> CLIP:
        r = self.ratio
        return merged("CLIPMergeSimple", self.clip1, self.clip2, (1.0 - r, r))


class CLIPMergeSubtract(Node):
    """(clip1 - clip2) * multiplier, weight by weight."""

    category = CATEGORY
    clip1: CLIP = InputField(description="The CLIP subtracted from.")
    clip2: CLIP = InputField(description="The CLIP subtracted.")
    multiplier: float = _multiplier()

    def invoke(self, ctx: NodeContext) -> CLIP:
        m = self.multiplier
        return merged("CLIPMergeSubtract", self.clip1, self.clip2, (-m, m))


class CLIPMergeAdd(Node):
    """clip1 + clip2, weight by weight."""

    category = CATEGORY
    clip1: CLIP = InputField(description="The first CLIP.")
    clip2: CLIP = InputField(description="The CLIP added.")

    def invoke(self, ctx: NodeContext) -> CLIP:
        return merged("CLIPMergeAdd", self.clip1, self.clip2, (1.0, 1.0))
