"""ControlNetLoader, DiffControlNetLoader, ControlNetApply and ControlNetApplyAdvanced
(ComfyUI's nodes)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from nodegraph import InputField, Node, NodeContext, Outputs

from ..devices import compute_dtype, resolve_device
from ..formats.controlnet import build_controlnet
from ..loading.checkpoint_nodes import model_fingerprint
from ..loading.checkpoints import STORE, load_key, read_component
from ..loading.folders import find_model, model_names
from ..loading.patching import patched
from ..loading.residency import RESIDENCY
from ..values import CONDITIONING, IMAGE, MODEL, VAE, Cond, Conditioning, Model
from .values import CONTROL_NET, AppliedControl, ControlNet

STRENGTH = dict(ge=0.0, le=10.0, step=0.01)
PERCENT = dict(ge=0.0, le=1.0, step=0.001)


def _place(net: Any, name: str, options: Mapping[str, Any]) -> ControlNet:
    device = resolve_device(options)
    dtype = compute_dtype(device, next(net.parameters()).dtype)
    net = net.to(device=RESIDENCY.load_device(device), dtype=dtype).eval().requires_grad_(False)
    return ControlNet(net, device, dtype, name)


def _unet_weights(model: Model) -> dict[str, torch.Tensor]:
    """The model's UNet weights as it samples (its LoRA patches applied), in float32."""
    with RESIDENCY.present([model.unet]), patched(model.unet, model.patches) as unet:
        return {k: v.detach().float().clone() for k, v in unet.state_dict().items()}


def _folder_class(found: Any) -> str:
    """The diffusers class of a ControlNet folder: ControlNetModel, or a T2IAdapter's."""
    config = Path(found.path) / "config.json"
    is_folder = found.format == "component" and config.is_file()
    if is_folder and json.loads(config.read_text()).get("_class_name") == "T2IAdapter":
        return "T2IAdapter"
    return "ControlNetModel"


def load_controlnet(
    name: str, options: Mapping[str, Any], model: Model | None = None
) -> ControlNet:
    """The named ControlNet from the controlnet folders, loaded once and kept; a difference
    ControlNet made whole with `model`'s weights (DiffControlNetLoader)."""
    found = find_model("controlnet", name, options.get("models") or ())
    key: Any = load_key(found, resolve_device(options), options)
    if model is not None:
        key = (key, "difference", id(model.unet), tuple(id(p) for p in model.patches))

    def build(tensors: Any) -> Any:  # a difference ControlNet's base read anew each time
        return build_controlnet(tensors, base=None if model is None else _unet_weights(model))

    def load() -> ControlNet:
        net = read_component(found, options, _folder_class(found), build, "ControlNet")
        return _place(net, name, options)

    return STORE.get(key, load)


def _control_net_name() -> str:
    return InputField(
        description="The ControlNet, among models/controlnet.",
        choices=partial(model_names, "controlnet"),
    )


class ControlNetLoader(Node):
    """Load a ControlNet (a diffusers folder, or a single file of either layout)."""

    category = "loaders"
    display_name = "Load ControlNet Model"
    control_net_name: str = _control_net_name()

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint("controlnet", literals["control_net_name"], run)

    def invoke(self, ctx: NodeContext) -> CONTROL_NET:
        return load_controlnet(self.control_net_name, ctx.settings.options)


def _check_width(node: str, cond: Cond, control_net: ControlNet) -> None:
    """A ValueError naming the node and input when text and ControlNet widths disagree."""
    width = int(cond.embeds.shape[-1])
    if control_net.context_width is not None and width != control_net.context_width:
        raise ValueError(
            f"{node}: control_net '{control_net.name}' takes text of width "
            f"{control_net.context_width}, but the conditioning's is {width}: it is a "
            "ControlNet of another family than the checkpoint"
        )


def _attached(cond: Cond, control: AppliedControl, to_uncond: bool) -> Cond:
    _check_width(control.node, cond, control.control_net)
    stack = (*cond.extras.get("control", ()), control)
    return cond.with_options(control=stack, control_apply_to_uncond=to_uncond)


def attach(conditioning: Conditioning, control: AppliedControl, to_uncond: bool) -> Conditioning:
    """Each Cond with one more control (stacked after those it has; the same control object
    for all, so Conds that shared their stack still share it)."""
    return conditioning.map(lambda c: _attached(c, control, to_uncond))


def _hint(image: torch.Tensor) -> torch.Tensor:
    return image.movedim(-1, 1)


class DiffControlNetLoader(Node):
    """Load a ControlNet stored as differences from a model's weights, adding the model's."""

    category = "loaders"
    display_name = "Load ControlNet Model (diff)"
    model: MODEL = InputField(description="The model the ControlNet's differences are from.")
    control_net_name: str = _control_net_name()

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint("controlnet", literals["control_net_name"], run)

    def invoke(self, ctx: NodeContext) -> CONTROL_NET:
        return load_controlnet(self.control_net_name, ctx.settings.options, self.model)


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
    shown_names = True  # ComfyUI's RETURN_NAMES
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
