"""Resampling pictures exactly as ComfyUI's common_upscale does, Lanczos included."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..latents.scaling import centre_crop, common_upscale


def lanczos(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Images (B, C, H, W) through 8-bit Pillow pictures (truncated, not rounded), Lanczos."""
    done = []
    for image in images:
        pixels = np.clip(255.0 * image.movedim(0, -1).cpu().numpy(), 0, 255).astype(np.uint8)
        resized = Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS)
        done.append(torch.from_numpy(np.array(resized).astype(np.float32) / 255.0).movedim(-1, 0))
    return torch.stack(done).to(images.device, images.dtype)


def rescale(images: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Images (B, H, W, C) resized to height x width by `method`; crop "center" first trims
    them to the target's aspect ratio. No antialiasing and no clamping, as in ComfyUI."""
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width} x {height}: both sides must be at least 1")
    x = images.movedim(-1, 1)
    if method == "lanczos":
        out = lanczos(centre_crop(x, width, height) if crop == "center" else x, width, height)
    else:
        out = common_upscale(x, width, height, method, crop)
    return out.movedim(1, -1)
