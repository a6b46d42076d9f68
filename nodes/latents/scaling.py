"""ComfyUI's common_upscale for (batch, channels, height, width) tensors: optional centre crop
to the new aspect, then nearest-exact / bilinear / area / bicubic interpolation or bislerp (a
bilinear resize that interpolates each pixel's channel vector spherically)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812

LatentUpscaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
Crop = Literal["disabled", "center"]


def centre_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The centred part of samples with the aspect of width x height."""
    old_h, old_w = samples.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)


def common_upscale(
    samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled"
) -> torch.Tensor:
    """Samples resized to height x width as ComfyUI resizes latents and masks."""
    if crop == "center":
        samples = centre_crop(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    return F.interpolate(samples, size=(height, width), mode=method)


def _slerp(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Rows of a and b (N x C) interpolated on the sphere by r (N x 1), norms linearly."""
    channels = a.shape[-1]
    a_norm, b_norm = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    a_unit, b_unit = a / a_norm, b / b_norm
    a_unit[a_norm.expand(-1, channels) == 0.0] = 0.0
    b_unit[b_norm.expand(-1, channels) == 0.0] = 0.0
    dot = (a_unit * b_unit).sum(1)
    omega = torch.acos(dot)
    sine = torch.sin(omega)
    out = (torch.sin((1.0 - r.squeeze(1)) * omega) / sine).unsqueeze(1) * a_unit + (
        torch.sin(r.squeeze(1) * omega) / sine
    ).unsqueeze(1) * b_unit
    out *= (a_norm * (1.0 - r) + b_norm * r).expand(-1, channels)
    same, opposite = dot > 1 - 1e-5, dot < 1e-5 - 1
    out[same] = a[same]
    out[opposite] = (a * (1.0 - r) + b * r)[opposite]
    return out


def _neighbours(old: int, new: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """For each new position along an axis: (ratio to the right neighbour, left, right index)."""
    left = torch.arange(old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1))
    left = F.interpolate(left, size=(1, new), mode="bilinear")
    ratios = left - left.floor()
    right = torch.arange(old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1)) + 1
    right[:, :, :, -1] -= 1
    right = F.interpolate(right, size=(1, new), mode="bilinear")
    return ratios, left.to(torch.int64), right.to(torch.int64)


def _slerp_axis(samples: torch.Tensor, new: int) -> torch.Tensor:
    """Resize the last axis of (n, c, h, w) to `new` by slerping neighbouring pixels."""
    n, c, h, w = samples.shape
    ratios, left, right = _neighbours(w, new, samples.device)
    left, right = left.expand((n, c, h, -1)), right.expand((n, c, h, -1))
    ratios = ratios.expand((n, 1, h, -1)).movedim(1, -1).reshape((-1, 1))
    a = samples.gather(-1, left).movedim(1, -1).reshape((-1, c))
    b = samples.gather(-1, right).movedim(1, -1).reshape((-1, c))
    return _slerp(a, b, ratios).reshape(n, h, new, c).movedim(-1, 1)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's bislerp: slerp along the width, then along the height."""
    dtype = samples.dtype
    wide = _slerp_axis(samples.float(), width)
    tall = _slerp_axis(wide.movedim(-1, -2), height).movedim(-1, -2)
    return tall.to(dtype)
