"""ComfyUI's InstructPixToPixConditioning: the picture to edit, as an InstructPix2Pix UNet's
extra input (its latent on both prompts), and an empty latent of its size to sample from."""

from __future__ import annotations

import torch

from nodegraph import InputField, Node, NodeContext, Outputs

from ..latents.codec import vae_encode
from ..values import CONDITIONING, IMAGE, LATENT, VAE, Latent

GRID = 8
"""ComfyUI's node crops the pictures to multiples of 8 pixels (centred) before encoding."""


def crop_to_grid(pixels: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """Pictures (B, H, W, C) cropped, centred, to sides that are multiples of `grid`."""
    h, w = (pixels.shape[1] // grid) * grid, (pixels.shape[2] // grid) * grid
    if (h, w) == tuple(pixels.shape[1:3]):
        return pixels
    top, left = (pixels.shape[1] % grid) // 2, (pixels.shape[2] % grid) // 2
    return pixels[:, top : top + h, left : left + w, :]


class InstructPixToPixOutputs(Outputs):
    shown_names = True  # ComfyUI's output display names
    positive: CONDITIONING
    negative: CONDITIONING
    latent: LATENT


class InstructPixToPixConditioning(Node):
    """Give both conditionings the latent of the picture to edit (an InstructPix2Pix UNet's
    extra input), and an empty latent of the same size to sample the edit from."""

    category = "conditioning/instructpix2pix"
    positive: CONDITIONING = InputField(description="The edit instruction.")
    negative: CONDITIONING = InputField(description="What the edit should avoid.")
    vae: VAE = InputField(description="The VAE.")
    pixels: IMAGE = InputField(description="The pictures to edit.")

    def invoke(self, ctx: NodeContext) -> InstructPixToPixOutputs:
        encoded = vae_encode(self.vae, crop_to_grid(self.pixels))[0]
        positive, negative = (
            c.with_options(concat_latent_image=encoded) for c in (self.positive, self.negative)
        )
        latent = Latent(torch.zeros_like(encoded))
        return InstructPixToPixOutputs(positive=positive, negative=negative, latent=latent)
