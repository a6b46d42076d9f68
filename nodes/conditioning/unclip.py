"""unCLIP conditioning values (ComfyUI's unCLIPConditioning), without the node yet.

ComfyUI's node appends `{clip_vision_output, strength, noise_augmentation}` to every Cond's
`unclip_conditioning` list (kept in order across repeated nodes; strength 0 returns the
conditioning unchanged). An unCLIP UNet then reads the list as its class-label (adm) input:
each image embedding noise-augmented at level round((max_noise_level - 1) * noise_augmentation),
concatenated with that level's embedding and times its strength; several are summed and
augmented once more at unclip_noise_augment_merge (0.05).

The node is not registered: nodegraph cannot load unCLIP checkpoints (their family, and the
UNet's class-embedding input in sampling, live in modules this change does not touch), so a
workflow using it would have its image conditioning silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..values import ClipVisionOutput, Cond, Conditioning

UNCLIP_KEY = "unclip_conditioning"


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
