"""The ControlNets' residuals for one batched UNet call (ComfyUI's get_control): the batch's
controls (a stack, applied one after another) each run on the UNet's own input, scaled by
strength, and are summed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..latents.scaling import common_upscale
from ..values import Model
from .values import AppliedControl

Residuals = dict[str, Any]
"""UNet2DConditionModel's keywords: down_block_additional_residuals, mid_block_..."""


def check_family(model: Model, control: AppliedControl) -> None:
    """A ValueError naming the node and input when the ControlNet is of another family."""
    net = control.control_net
    if net.is_adapter:
        levels = list(model.unet.config.block_out_channels)
        if list(net.net.config.channels) != levels:
            raise ValueError(
                f"{control.node}: control_net '{net.name}' is a T2I-Adapter for UNet levels of "
                f"{list(net.net.config.channels)} channels, but the model's are {levels}: it "
                "is an adapter of another family"
            )
        return
    want, got = int(model.unet.config.cross_attention_dim), net.context_width
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


def _features(model: Model, control: AppliedControl, x_in: torch.Tensor) -> list[torch.Tensor]:
    """A T2I-Adapter's features for the rows of x_in, times strength (ComfyUI's T2IAdapter:
    the hint at the latent's pixel size, nearest-exact, grey for a one-channel adapter)."""
    key = tuple(x_in.shape)
    if key not in control.features:
        net = control.control_net
        hint = hint_for(control, x_in, net.dtype)
        if net.net.config.in_channels == 1:
            hint = hint.mean(dim=1, keepdim=True)
        control.features[key] = net.net(hint.to(net.device))
    return [
        (f * control.strength).to(device=x_in.device, dtype=model.dtype)
        for f in control.features[key]
    ]


def _summed(total: list[torch.Tensor] | None, out: list[torch.Tensor]) -> list[torch.Tensor]:
    return out if total is None else [a + b for a, b in zip(total, out, strict=True)]


def residuals(
    model: Model,
    sampling: Any,
    sigma: torch.Tensor,
    x_in: torch.Tensor,
    t: torch.Tensor,
    inputs: Any,
    controls: tuple[AppliedControl, ...],
) -> Residuals | None:
    """The summed residuals of the controls active at sigma for a batch of the UNet's input:
    ControlNets' for the skip connections and the middle block, adapters' features for the
    down blocks (ADAPTER_FEATURES, applied by `adapter_added`)."""
    s = float(sigma.flatten()[0])
    total: list[torch.Tensor] | None = None
    features: list[torch.Tensor] | None = None
    for control in controls:
        check_family(model, control)
        if not active(control, s, sampling):
            continue
        if control.control_net.is_adapter:
            features = _summed(features, _features(model, control, x_in))
        else:
            total = _summed(total, _run(model, control, x_in, t, inputs.text, inputs.added))
    out: Residuals = {}
    if total is not None:
        out["down_block_additional_residuals"] = total[:-1]
        out["mid_block_additional_residual"] = total[-1]
    if features is not None:
        out[ADAPTER_FEATURES] = features
    return out or None


ADAPTER_FEATURES = "adapter_features"
"""The Residuals key of T2I-Adapter features, one per down block."""


def _last_layer(block: torch.nn.Module) -> torch.nn.Module:
    attentions = getattr(block, "attentions", None)
    return attentions[-1] if attentions else block.resnets[-1]


@contextmanager
def adapter_added(unet: Any, features: list[torch.Tensor] | None) -> Iterator[None]:
    """Run the UNet with each feature added to its down block's last layer's output, before
    the block's skip connection takes it (where ComfyUI adds a T2I-Adapter's input controls;
    diffusers' own down_intrablock_additional_residuals add the last block's after it)."""
    if not features:
        yield
        return

    def adding(feature: torch.Tensor) -> Any:
        def hook(module: Any, args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (output[0] + feature, *output[1:])
            if hasattr(output, "sample"):
                output.sample = output.sample + feature
                return output
            return output + feature

        return hook

    blocks = list(unet.down_blocks)[: len(features)]
    handles = [
        _last_layer(block).register_forward_hook(adding(feature))
        for block, feature in zip(blocks, features, strict=True)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
