"""The ControlNets' residuals for one guidance-batched UNet call (ComfyUI's get_control):
each prompt's controls run on the UNet's own input, scaled by strength and summed; a prompt
without an active control gets zeros."""

from __future__ import annotations

from typing import Any

import torch

from ..latents.scaling import common_upscale
from ..values import Conditioning, Model
from .values import AppliedControl

Residuals = dict[str, Any]
"""UNet2DConditionModel's keywords: down_block_additional_residuals, mid_block_..."""


def controls(cond: Conditioning) -> tuple[AppliedControl, ...]:
    return cond.extras.get("control", ())


def prompt_controls(
    conds: list[tuple[str, Conditioning]], positive: Conditioning | None
) -> list[tuple[AppliedControl, ...]]:
    """Each prompt's controls; a non-positive prompt with none takes the positive prompt's when
    that was applied to both (ControlNetApply: ComfyUI's control_apply_to_uncond)."""
    shared = ()
    if positive is not None and positive.extras.get("control_apply_to_uncond"):
        shared = controls(positive)
    return [controls(c) or (() if role == "positive" else shared) for role, c in conds]


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


def _distinct(per_prompt: list[tuple[AppliedControl, ...]]) -> list[AppliedControl]:
    seen: dict[int, AppliedControl] = {}
    for prompt in per_prompt:
        for control in prompt:
            seen.setdefault(id(control), control)
    return list(seen.values())


def residuals(
    model: Model,
    sampling: Any,
    sigma: torch.Tensor,
    x_in: torch.Tensor,
    t: torch.Tensor,
    inputs: Any,
    per_prompt: list[tuple[AppliedControl, ...]],
) -> Residuals | None:
    """The summed residuals for x_in (k prompts of n rows each, as `inputs` batches them);
    a control shared by several prompts runs once on their rows together, as in ComfyUI."""
    s, n = float(sigma.flatten()[0]), x_in.shape[0] // len(per_prompt)
    total: list[torch.Tensor] | None = None
    for control in _distinct(per_prompt):
        check_family(model, control)
        if not active(control, s, sampling):
            continue
        prompts = [i for i, p in enumerate(per_prompt) if any(c is control for c in p)]
        rows = torch.cat([torch.arange(i * n, (i + 1) * n) for i in prompts]).to(x_in.device)
        added = None if inputs.added is None else {a: v[rows] for a, v in inputs.added.items()}
        out = _run(model, control, x_in[rows], t[rows], inputs.text[rows], added)
        if total is None:
            total = [x_in.new_zeros((x_in.shape[0], *r.shape[1:])) for r in out]
        for whole, part in zip(total, out, strict=True):
            whole[rows] += part
    if total is None:
        return None
    return {
        "down_block_additional_residuals": total[:-1],
        "mid_block_additional_residual": total[-1],
    }
