"""ComfyUI's conditioning arithmetic that needs no sampler support: ConditioningAverage,
ConditioningConcat, ConditioningZeroOut (a single prompt each, as nodegraph's CONDITIONING)."""

from __future__ import annotations

import dataclasses

import torch

from nodegraph import InputField, Node, NodeContext

from ..values import CONDITIONING


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
        to, source, w = self.conditioning_to, self.conditioning_from, self.conditioning_to_strength
        mixed_in = source.embeds[:, : to.embeds.shape[1]]
        if mixed_in.shape[1] < to.embeds.shape[1]:
            missing = to.embeds.shape[1] - mixed_in.shape[1]
            pad = torch.zeros((1, missing, to.embeds.shape[2]), dtype=mixed_in.dtype)
            mixed_in = torch.cat([mixed_in, pad.to(mixed_in.device)], dim=1)
        embeds = torch.mul(to.embeds, w) + torch.mul(mixed_in, 1.0 - w)
        pooled_from = source.pooled
        pooled_to = to.pooled if to.pooled is not None else pooled_from
        pooled = to.pooled
        if pooled_from is not None and pooled_to is not None:
            pooled = torch.mul(pooled_to, w) + torch.mul(pooled_from, 1.0 - w)
        return dataclasses.replace(to, embeds=embeds, pooled=pooled, extras=dict(to.extras))


class ConditioningConcat(Node):
    """Append the second prompt's tokens to the first's."""

    category = "conditioning"
    conditioning_to: CONDITIONING = InputField(description="The prompt appended to.")
    conditioning_from: CONDITIONING = InputField(description="The prompt appended.")

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        to = self.conditioning_to
        embeds = torch.cat((to.embeds, self.conditioning_from.embeds), 1)
        return dataclasses.replace(to, embeds=embeds, extras=dict(to.extras))


class ConditioningZeroOut(Node):
    """The prompt with its embeddings (and pooled output) set to zeros."""

    category = "advanced/conditioning"
    conditioning: CONDITIONING = InputField(description="The prompt.")

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        c = self.conditioning
        pooled = None if c.pooled is None else torch.zeros_like(c.pooled)
        return dataclasses.replace(
            c, embeds=torch.zeros_like(c.embeds), pooled=pooled, extras=dict(c.extras)
        )
