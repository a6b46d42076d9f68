"""ComfyUI's conditioning arithmetic: ConditioningCombine (both lists, evaluated side by side),
ConditioningAverage and ConditioningConcat (each Cond of the first with the second's first),
ConditioningZeroOut."""

from __future__ import annotations

import torch

from nodegraph import InputField, Node, NodeContext

from ..values import CONDITIONING, Cond, Conditioning


class ConditioningCombine(Node):
    """Both conditionings, evaluated side by side at each step and blended by their weights."""

    category = "conditioning"
    display_name = "Conditioning (Combine)"
    conditioning_1: CONDITIONING = InputField(description="The first conditioning.")
    conditioning_2: CONDITIONING = InputField(description="The second conditioning.")

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        return Conditioning(self.conditioning_1.conds + self.conditioning_2.conds)


def _average(to: Cond, source: Cond, w: float) -> Cond:
    mixed_in = source.embeds[:, : to.embeds.shape[1]]
    if mixed_in.shape[1] < to.embeds.shape[1]:
        missing = to.embeds.shape[1] - mixed_in.shape[1]
        pad = torch.zeros((1, missing, to.embeds.shape[2]), dtype=mixed_in.dtype)
        mixed_in = torch.cat([mixed_in, pad.to(mixed_in.device)], dim=1)
    embeds = torch.mul(to.embeds, w) + torch.mul(mixed_in, 1.0 - w)
    pooled_from = source.pooled
    pooled_to = to.pooled if to.pooled is not None else pooled_from
    pooled = pooled_to
    if pooled_from is not None and pooled_to is not None:
        pooled = torch.mul(pooled_to, w) + torch.mul(pooled_from, 1.0 - w)
    return Cond(embeds, pooled, dict(to.extras))


class ConditioningAverage(Node):
    """Mix two prompts' embeddings: conditioning_to_strength of the first, the rest of the
    second (cut or zero-padded to the first's length); pooled outputs alike."""

    category = "conditioning"
    conditioning_to: CONDITIONING = InputField(description="The prompt mixed into.")
    conditioning_from: CONDITIONING = InputField(description="The prompt mixed in.")
    conditioning_to_strength: float = InputField(
        1.0, description="Share of conditioning_to.", ge=0.0, le=1.0, step=0.01
    )

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        source = self.conditioning_from.conds[0]  # ComfyUI uses the first
        w = self.conditioning_to_strength
        return self.conditioning_to.map(lambda to: _average(to, source, w))


class ConditioningConcat(Node):
    """Append the second prompt's tokens to the first's."""

    category = "conditioning"
    display_name = "Conditioning (Concat)"
    conditioning_to: CONDITIONING = InputField(description="The prompt appended to.")
    conditioning_from: CONDITIONING = InputField(description="The prompt appended.")

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        source = self.conditioning_from.conds[0].embeds
        return self.conditioning_to.map(
            lambda to: Cond(torch.cat((to.embeds, source), 1), to.pooled, dict(to.extras))
        )


def _zeros(c: Cond) -> Cond:
    pooled = None if c.pooled is None else torch.zeros_like(c.pooled)
    return Cond(torch.zeros_like(c.embeds), pooled, dict(c.extras))


class ConditioningZeroOut(Node):
    """The prompt with its embeddings (and pooled output) set to zeros."""

    category = "advanced/conditioning"
    conditioning: CONDITIONING = InputField(description="The prompt.")

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        return self.conditioning.map(_zeros)
