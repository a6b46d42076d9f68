"""unCLIP conditioning: the image entries ComfyUI's unCLIPConditioning adds to a prompt, and the
class label an SD 2.x unCLIP UNet reads from them (ComfyUI's unclip_adm).

ComfyUI's node appends `{clip_vision_output, strength, noise_augmentation}` to every Cond's
`unclip_conditioning` list (kept in order across repeated nodes; strength 0 returns the
conditioning unchanged). An unCLIP UNet then reads the list as its class-label (adm) input:
each image embedding noise-augmented at level round((max_noise_level - 1) * noise_augmentation),
concatenated with that level's embedding and times its strength; several are summed and
augmented once more at unclip_noise_augment_merge (0.05). A prompt without entries gives
zeros. On SDXL (base and refiner) the entries replace the pooled text instead: the noised
embedding without its level, merged at augmentation 0 (ComfyUI's sdxl_pooled). The noise is
ComfyUI's: a CPU draw from a generator seeded with the sampling seed - 10, reseeded for each
embedding; the merge draws the next numbers of the same stream (ComfyUI's
randn_like on the global generator its last reseed left there).

ComfyUI's CLIPEmbeddingNoiseAugmentation normalises with a mean of 0 and a std of 1 (its stats
buffers are not loaded from checkpoints), so the noise is added to the embedding as it is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nodegraph import InputField, Node, NodeContext

from ..values import CLIP_VISION_OUTPUT, CONDITIONING, ClipVisionOutput, Cond, Conditioning

UNCLIP_KEY = "unclip_conditioning"
MERGE_KEY = "unclip_noise_augment_merge"
MERGE_AUGMENTATION = 0.05
"""ComfyUI's noise augmentation of several summed image embeddings."""
MAX_NOISE_LEVEL = 1000
SEED_OFFSET = -10
"""ComfyUI seeds the augmentation noise with the sampling seed minus 10."""


@dataclass(frozen=True, eq=False)
class UnclipEntry:
    """One unCLIP image condition, as ComfyUI's dictionary holds it."""

    clip_vision_output: ClipVisionOutput
    strength: float
    noise_augmentation: float


def add_unclip(
    conditioning: Conditioning,
    clip_vision_output: ClipVisionOutput,
    strength: float,
    noise_augmentation: float,
) -> Conditioning:
    """ComfyUI's unCLIPConditioning: the entry appended to every Cond's list."""
    if strength == 0:
        return conditioning
    entry = UnclipEntry(clip_vision_output, float(strength), float(noise_augmentation))

    def append(cond: Cond) -> Cond:
        return cond.with_options(**{UNCLIP_KEY: (*cond.extras.get(UNCLIP_KEY, ()), entry)})

    return conditioning.map(append)


class UnclipConditioning(Node):
    """Condition on pictures' CLIP image embeddings, for an unCLIP checkpoint (ComfyUI's
    unCLIPConditioning; several add up)."""

    node_type = "unCLIPConditioning"
    category = "conditioning"
    conditioning: CONDITIONING = InputField(description="The prompt to add the pictures to.")
    clip_vision_output: CLIP_VISION_OUTPUT = InputField(description="From CLIPVisionEncode.")
    strength: float = InputField(
        1.0, description="How strongly the pictures condition.", ge=-10.0, le=10.0, step=0.01
    )
    noise_augmentation: float = InputField(
        0.0,
        description="Noise added to the image embedding: more leaves the model more freedom.",
        ge=0.0,
        le=1.0,
        step=0.01,
    )

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        return add_unclip(
            self.conditioning, self.clip_vision_output, self.strength, self.noise_augmentation
        )


@functools.cache
def _noise_scales() -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(alphas_cumprod) and sqrt(1 - alphas_cumprod) of the augmentation's schedule: 1000
    steps of the squaredcos_cap_v2 (Karlo) betas, computed in float64 and kept as float32."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = MAX_NOISE_LEVEL
    betas = torch.tensor(
        [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
        dtype=torch.float64,
    )
    cumprod = torch.cumprod(1.0 - betas, dim=0)
    return cumprod.sqrt().float(), (1.0 - cumprod).sqrt().float()


def _augmented(
    embed: torch.Tensor, augmentation: float, generator: torch.Generator
) -> torch.Tensor:
    """An embedding (1, width) noised to its level, with that level's sinusoidal embedding."""
    from diffusers.models.embeddings import get_timestep_embedding

    level = round((MAX_NOISE_LEVEL - 1) * augmentation)
    noise = torch.randn(embed.shape, dtype=embed.dtype, generator=generator)
    keep, add = _noise_scales()
    noised = keep[level] * embed + add[level] * noise.to(embed.device)
    levels = torch.tensor([level], device=embed.device)
    level_embed = get_timestep_embedding(
        levels, embed.shape[1], flip_sin_to_cos=True, downscale_freq_shift=0
    )
    return torch.cat([noised, level_embed.to(noised.dtype)], dim=1)


def class_label(
    entries: Sequence[UnclipEntry], width: int, seed: int, merge: float = MERGE_AUGMENTATION
) -> torch.Tensor:
    """An unCLIP UNet's class label (1, width) for a prompt's image entries (zeros for none)."""
    if not entries:
        return torch.zeros((1, width))
    generator = torch.Generator()
    labels = []
    for entry in entries:
        embeds = entry.clip_vision_output.image_embeds.float()
        if embeds.shape[-1] * 2 != width:
            raise ValueError(
                f"the CLIP vision output's image embeddings are {embeds.shape[-1]} wide; this "
                f"model takes {width // 2} (use the CLIP vision model it was made with)"
            )
        for embed in embeds.reshape(-1, embeds.shape[-1]):
            generator.manual_seed(seed + SEED_OFFSET)
            noised = _augmented(embed[None], entry.noise_augmentation, generator)
            labels.append(noised * entry.strength)
    if len(labels) == 1:
        return labels[0]
    summed = torch.stack(labels).sum(0)
    return _augmented(summed[:, : width // 2], merge, generator)


def sdxl_pooled(entries: Sequence[UnclipEntry], width: int, seed: int) -> torch.Tensor:
    """SDXL's pooled text replaced by the pictures' embeddings (ComfyUI's sdxl_pooled, the
    "revision" workflows): the class label's noised-embedding half, merged at augmentation 0."""
    return class_label(entries, 2 * width, seed, merge=0.0)[:, :width]
