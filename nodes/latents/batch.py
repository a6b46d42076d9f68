"""ComfyUI's latent batch nodes: RepeatLatentBatch, LatentFromBatch, LatentBatch. Batch indices
follow the images, so each keeps the seed's noise it would get alone."""

from __future__ import annotations

import math

import torch

from nodegraph import InputField, Node, NodeContext

from ..values import LATENT, Latent
from .scaling import common_upscale


def _indices(latent: Latent) -> list[int]:
    return list(latent.batch_index or range(latent.samples.shape[0]))


def _tile_masks(masks: torch.Tensor, count: int) -> torch.Tensor:
    reps = math.ceil(count / masks.shape[0])
    return masks.repeat((reps,) + (1,) * (masks.ndim - 1))[:count]


class LatentFromBatch(Node):
    """Take `length` latents from a batch, starting at `batch_index`."""

    category = "latent/batch"
    display_name = "Latent From Batch"
    samples: LATENT = InputField(description="The batch.")
    batch_index: int = InputField(0, description="The first latent taken.", ge=0, le=63)
    length: int = InputField(1, description="How many.", ge=1, le=64)

    def invoke(self, ctx: NodeContext) -> LATENT:
        samples = self.samples.samples
        start = min(samples.shape[0] - 1, self.batch_index)
        length = min(samples.shape[0] - start, self.length)
        mask = self.samples.noise_mask
        if mask is not None and mask.shape[0] > 1:
            if mask.shape[0] < samples.shape[0]:
                mask = _tile_masks(mask, samples.shape[0])
            mask = mask[start : start + length].clone()
        elif mask is not None:
            mask = mask.clone()
        taken = samples[start : start + length].clone()
        indices = tuple(_indices(self.samples)[start : start + length])
        return Latent(taken, mask, indices)


class RepeatLatentBatch(Node):
    """Repeat a batch `amount` times (batch indices continue, so the repeats get new noise)."""

    category = "latent/batch"
    display_name = "Repeat Latent Batch"
    samples: LATENT = InputField(description="The batch.")
    amount: int = InputField(1, description="How many times.", ge=1, le=64)

    def invoke(self, ctx: NodeContext) -> LATENT:
        samples = self.samples.samples
        out = samples.repeat((self.amount,) + (1,) * (samples.ndim - 1))
        mask = self.samples.noise_mask
        if mask is not None and mask.shape[0] > 1:
            mask = mask.repeat((self.amount,) + (1,) * (mask.ndim - 1))
        indices = self.samples.batch_index
        if indices is not None:
            offset = max(indices) - min(indices) + 1
            more = [x + i * offset for i in range(1, self.amount) for x in indices]
            indices = tuple(indices) + tuple(more)
        return Latent(out, mask, indices)


class LatentBatch(Node):
    """Join two batches (the second resized to the first's size)."""

    category = "latent/batch"
    display_name = "LatentBatch"
    samples1: LATENT = InputField(description="The first batch.")
    samples2: LATENT = InputField(description="The second batch.")

    def invoke(self, ctx: NodeContext) -> LATENT:
        first, second = self.samples1.samples, self.samples2.samples
        if second.shape[1:] != first.shape[1:]:
            second = common_upscale(second, first.shape[-1], first.shape[-2], "bilinear", "center")
        indices = tuple(_indices(self.samples1) + _indices(self.samples2))
        return Latent(torch.cat((first, second), dim=0), self.samples1.noise_mask, indices)
