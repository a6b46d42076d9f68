"""ComfyUI's HypernetworkLoader: an A1111 hypernetwork on the model's attention, as a patch.

As ComfyUI's attn1 and attn2 patches, every attention of the UNet's transformer blocks (self-
and cross-attention) gets, when the file has MLPs for the width of its key / value input, that
input replaced by `x + mlp(x) * strength` (the key MLP before `to_k`, the value MLP before
`to_v`; the query is left alone). Here that is a forward pre-hook on `to_k` and `to_v`, attached
only while the patched model runs (nodes.loading.patching), so the loaded checkpoint serves
other workflows unchanged.

ComfyUI leaves its MLPs in training mode, so a file with `use_dropout` gets active Dropout(0.3)
at sampling time; so does this one, its masks drawn from a generator seeded afresh each run (a
re-run gives the same picture; the masks are not ComfyUI's draws from its global generator).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from nodegraph import InputField, Node, NodeContext

from ..devices import resolve_device
from ..formats.hypernetwork import (
    Hypernetwork,
    UnsupportedHypernetwork,
    parse_hypernetwork,
    read_hypernetwork_file,
)
from ..values import MODEL, Model
from .checkpoint_nodes import model_fingerprint
from .checkpoints import PickleRefused, Store, load_key
from .folders import find_model, model_names
from .patching import HookPatch

HYPERNETWORK_STORE = Store(4)
ATTENTIONS = ("attn1", "attn2")
DROPOUT_SEED = 0


def _run_mlp(mlp: torch.nn.Sequential, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The MLP in training mode as ComfyUI runs it, dropout masks drawn from `generator`."""
    for layer in mlp:
        if isinstance(layer, torch.nn.Dropout):
            keep = torch.rand(x.shape, generator=generator, device=x.device) >= layer.p
            x = x * keep / (1.0 - layer.p)
        else:
            x = layer(x)
    return x


@dataclass(frozen=True)
class HypernetworkPatch(HookPatch):
    """The hypernetwork's MLPs on every attention's key and value inputs of their width."""

    nets: Hypernetwork = field(default_factory=dict, compare=False, repr=False)
    _placed: dict[str, Hypernetwork] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def on(self, device: torch.device) -> Hypernetwork:
        """The MLPs on `device` (float32, copied there once; read on the CPU)."""
        if torch.device(device).type == "cpu":
            return self.nets
        with self._lock:
            placed = self._placed.get(str(device))
            if placed is None:
                placed = self._placed[str(device)] = {
                    width: (copy.deepcopy(k).to(device), copy.deepcopy(v).to(device))
                    for width, (k, v) in self.nets.items()
                }
            return placed

    def attach(self, module: torch.nn.Module) -> list[RemovableHandle]:
        if self.strength == 0 or not self.nets:  # x + mlp(x) * 0 is x
            return []
        device = next(module.parameters()).device
        nets = self.on(device)
        generator = torch.Generator(device).manual_seed(DROPOUT_SEED)
        handles = []
        for name, attention in module.named_modules():
            if name.rpartition(".")[2] not in ATTENTIONS or not hasattr(attention, "to_k"):
                continue
            for index, projection in enumerate((attention.to_k, attention.to_v)):
                shift = partial(self._shift, nets, index, generator)
                handles.append(projection.register_forward_pre_hook(shift))
        return handles

    def _shift(
        self,
        nets: Hypernetwork,
        index: int,
        generator: torch.Generator,
        projection: torch.nn.Module,
        args: tuple[Any, ...],
    ) -> tuple[Any, ...] | None:
        x = args[0]
        pair = nets.get(int(x.shape[-1]))
        if pair is None:
            return None
        wide = x.float()
        shifted = wide + _run_mlp(pair[index], wide, generator) * self.strength
        return (shifted.to(x.dtype), *args[1:])


def load_hypernetwork(name: str, options: Mapping[str, Any]) -> tuple[Any, Hypernetwork]:
    """(the file's identity, its MLPs by width), read once and kept."""
    found = find_model("hypernetworks", name, options.get("models") or ())
    if found.format == "pickle" and not options.get("allow_pickle"):
        raise PickleRefused(
            f"refusing to load {found.path.name}: pickle-based files (.pt, .ckpt, .pth) can "
            "run arbitrary code when loaded. Opt in (allow_pickle) to load it with "
            "torch.load(weights_only=True)."
        )
    if found.format not in ("pickle", "safetensors"):
        raise ValueError(f"hypernetwork {name} is a {found.format} folder, not a file")
    key = load_key(found, resolve_device(options), options)

    def read() -> Hypernetwork:
        return parse_hypernetwork(read_hypernetwork_file(found.path), found.path.name)

    return key, HYPERNETWORK_STORE.get(key, read)


def apply_hypernetwork(ctx: NodeContext, name: str, model: Model, strength: float) -> Model:
    """The model with the hypernetwork's patch added after its own patches."""
    try:
        key, nets = load_hypernetwork(name, ctx.settings.options)
    except UnsupportedHypernetwork as exc:  # ComfyUI logs it and returns the model as it was
        ctx.warn(f"{exc}; the model is left without it")
        return model
    if not nets:
        ctx.warn(f"hypernetwork {name} holds no layers: the model is unchanged")
    patch = HypernetworkPatch(strength=strength, key=(key, "hypernetwork", strength), nets=nets)
    return dataclasses.replace(model, patches=(*model.patches, patch))


class HypernetworkLoader(Node):
    """Apply an A1111 hypernetwork to the model's attention key and value inputs."""

    category = "loaders"
    model: MODEL = InputField(description="The diffusion model the hypernetwork patches.")
    hypernetwork_name: str = InputField(
        description="The hypernetwork, among models/hypernetworks.",
        choices=partial(model_names, "hypernetworks"),
    )
    strength: float = InputField(
        1.0, description="How strongly the hypernetwork shifts keys and values.",
        ge=-10.0, le=10.0, step=0.01,
    )  # fmt: skip

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint("hypernetworks", literals["hypernetwork_name"], run)

    def invoke(self, ctx: NodeContext) -> MODEL:
        return apply_hypernetwork(ctx, self.hypernetwork_name, self.model, self.strength)
