"""ControlNetLoader, ControlNetApply and ControlNetApplyAdvanced (ComfyUI's nodes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import torch

from nodegraph import InputField, Node, NodeContext, Outputs

from ..devices import compute_dtype, resolve_device
from ..formats.controlnet import build_controlnet
from ..loading.checkpoint_nodes import model_fingerprint
from ..loading.checkpoints import STORE, load_key, read_component
from ..loading.folders import find_model, model_names
from ..values import CONDITIONING, IMAGE, VAE, Conditioning
from .values import CONTROL_NET, AppliedControl, ControlNet

STRENGTH = dict(ge=0.0, le=10.0, step=0.01)
PERCENT = dict(ge=0.0, le=1.0, step=0.001)


def _place(net: Any, name: str, options: Mapping[str, Any]) -> ControlNet:
    device = resolve_device(options)
    dtype = compute_dtype(device, next(net.parameters()).dtype)
    net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return ControlNet(net, device, dtype, name)


def load_controlnet(name: str, options: Mapping[str, Any]) -> ControlNet:
    """The named ControlNet from the controlnet folders, loaded once and kept."""
    found = find_model("controlnet", name, options.get("models") or ())
    key = load_key(found, resolve_device(options), options)

    def load() -> ControlNet:
        net = read_component(found, options, "ControlNetModel", build_controlnet, "ControlNet")
        return _place(net, name, options)

    return STORE.get(key, load)


class ControlNetLoader(Node):
    """Load a ControlNet (a diffusers folder, or a single file of either layout)."""

    category = "loaders"
    display_name = "Load ControlNet Model"
    control_net_name: str = InputField(
        description="The ControlNet, among models/controlnet.",
        choices=partial(model_names, "controlnet"),
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint("controlnet", literals["control_net_name"], run)

    def invoke(self, ctx: NodeContext) -> CONTROL_NET:
        return load_controlnet(self.control_net_name, ctx.settings.options)


def _check_width(node: str, cond: Conditioning, control_net: ControlNet) -> None:
    """A ValueError naming the node and input when text and ControlNet widths disagree."""
    width = int(cond.embeds.shape[-1])
    if width != control_net.context_width:
        raise ValueError(
            f"{node}: control_net '{control_net.name}' takes text of width "
            f"{control_net.context_width}, but the conditioning's is {width}: it is a "
            "ControlNet of another family than the checkpoint"
        )


def attach(cond: Conditioning, control: AppliedControl, to_uncond: bool) -> Conditioning:
    """The conditioning with one more control (stacked after those it has)."""
    _check_width(control.node, cond, control.control_net)
    extras = {**cond.extras, "control": (*cond.extras.get("control", ()), control)}
    extras["control_apply_to_uncond"] = to_uncond
    return replace(cond, extras=extras)


def _hint(image: torch.Tensor) -> torch.Tensor:
    return image.movedim(-1, 1)


class ControlNetApply(Node):
    """Guide a prompt with a ControlNet and a hint image (also the negative prompt, as ComfyUI)."""

    category = "conditioning/controlnet"
    display_name = "Apply ControlNet (OLD)"
    conditioning: CONDITIONING = InputField(description="The prompt to guide.")
    control_net: CONTROL_NET = InputField(description="The ControlNet.")
    image: IMAGE = InputField(description="The hint image (edges, depth, pose, ...).")
    strength: float = InputField(1.0, description="How strongly it guides.", **STRENGTH)

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        if self.strength == 0:
            return self.conditioning
        control = AppliedControl(
            self.control_net, _hint(self.image), self.strength, node="ControlNetApply"
        )
        return attach(self.conditioning, control, to_uncond=True)


class Guided(Outputs):
    positive: CONDITIONING
    negative: CONDITIONING


class ControlNetApplyAdvanced(Node):
    """Guide both prompts with a ControlNet over part of the schedule."""

    category = "conditioning/controlnet"
    display_name = "Apply ControlNet"
    positive: CONDITIONING = InputField(description="The positive prompt.")
    negative: CONDITIONING = InputField(description="The negative prompt.")
    control_net: CONTROL_NET = InputField(description="The ControlNet.")
    image: IMAGE = InputField(description="The hint image (edges, depth, pose, ...).")
    strength: float = InputField(1.0, description="How strongly it guides.", **STRENGTH)
    start_percent: float = InputField(
        0.0, description="Where in the schedule it starts.", **PERCENT
    )
    end_percent: float = InputField(1.0, description="Where in the schedule it ends.", **PERCENT)
    vae: VAE | None = InputField(None, description="For ControlNets that take a latent hint.")

    def invoke(self, ctx: NodeContext) -> Guided:
        if self.strength == 0:
            return Guided(positive=self.positive, negative=self.negative)
        control = AppliedControl(
            self.control_net, _hint(self.image), self.strength,
            self.start_percent, self.end_percent,
        )  # fmt: skip
        return Guided(
            positive=attach(self.positive, control, to_uncond=False),
            negative=attach(self.negative, control, to_uncond=False),
        )
