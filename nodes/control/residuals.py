"""The ControlNets' residuals for one batched UNet call (ComfyUI's get_control): the batch's
controls (a stack, applied one after another) each run on the UNet's own input, scaled by
strength, and are summed."""

from __future__ import annotations

from typing import Any

import torch

from ..latents.scaling import common_upscale
from ..values import Model
from .values import AppliedControl

Residuals = dict[str, Any]
"""UNet2DConditionModel's keywords: down_block_additional_residuals, mid_block_..."""


def check_family(model: Model, control: AppliedControl) -> None:
    """A ValueError naming the node and input when the ControlNet is of another family."""
    want, got = int(model.unet.config.cross_attention_dim), control.control_net.context_width
    if want != got:
        raise ValueError(
            f"{control.node}: control_net '{control.control_net.name}' takes text of width "
            f"{got}, but the model's is {want}: it is a ControlNet of another family"
        )


def hint_for(control: AppliedControl, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The hint at the latent's pixel size (nearest-exact, centre crop), batched like it."""
    h, w = latents.shape[-2] * 8, latents.shape[-1] * 8
    hint = control.hint
    if hint.shape[-2:] != (h, w):
        hint = common_upscale(hint.float(), w, h, "nearest-exact", "center")
    n = latents.shape[0]
    if hint.shape[0] not in (1, n):
        hint = hint[:n] if hint.shape[0] > n else hint.repeat(-(-n // hint.shape[0]), 1, 1, 1)[:n]
    return hint.to(device=latents.device, dtype=dtype).expand(n, -1, -1, -1)


def active(control: AppliedControl, sigma: float, sampling: Any) -> bool:
    """Whether sigma lies within the control's part of the schedule (ComfyUI's test)."""
    high, low = sampling.percent_to_sigma(control.start), sampling.percent_to_sigma(control.end)
    return control.strength != 0 and low <= sigma <= high


def _run(
    model: Model,
    control: AppliedControl,
    x_in: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    added: dict[str, torch.Tensor] | None,
) -> list[torch.Tensor]:
    """One ControlNet's down residuals and mid residual (last) for some rows, times strength."""
    cn = control.control_net
    down, mid = cn.net(
        x_in.to(device=cn.device, dtype=cn.dtype),
        t.to(cn.device),
        encoder_hidden_states=text.to(device=cn.device, dtype=cn.dtype),
        controlnet_cond=hint_for(control, x_in, cn.dtype),
        conditioning_scale=float(control.strength),
        added_cond_kwargs=None if added is None else {k: v.to(cn.dtype) for k, v in added.items()},
        return_dict=False,
    )
    return [r.to(device=x_in.device, dtype=model.dtype) for r in (*down, mid)]


def residuals(
    model: Model,
    sampling: Any,
    sigma: torch.Tensor,
    x_in: torch.Tensor,
    t: torch.Tensor,
    inputs: Any,
    controls: tuple[AppliedControl, ...],
) -> Residuals | None:
    """The summed residuals of the controls active at sigma for a batch of the UNet's input."""
    s = float(sigma.flatten()[0])
    total: list[torch.Tensor] | None = None
    for control in controls:
        check_family(model, control)
        if not active(control, s, sampling):
            continue
        out = _run(model, control, x_in, t, inputs.text, inputs.added)
        total = out if total is None else [a + b for a, b in zip(total, out, strict=True)]
    if total is None:
        return None
    return {
        "down_block_additional_residuals": total[:-1],
        "mid_block_additional_residual": total[-1],
    }
