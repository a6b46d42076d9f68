"""ComfyUI's GLIGENLoader: a GLIGEN model from the gligen folders, kept once loaded."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from nodegraph import InputField, Node, NodeContext

from ..devices import resolve_device
from ..formats.gligen import build_fuser, build_position_net, parse_gligen
from ..formats.tensors import CheckpointError
from ..values import GLIGEN, Gligen
from .checkpoint_nodes import model_fingerprint
from .checkpoints import Store, load_key, open_checkpoint
from .folders import find_model, model_names

KIND = "gligen"
STORE = Store(2)


def _read(path: Any, fmt: str, options: Mapping[str, Any], name: str) -> Gligen:
    tensors = open_checkpoint(path, fmt, options)
    weights = parse_gligen(tensors.read(list(tensors)), name)
    try:
        position_net = build_position_net(weights)
        for fuser in weights.fusers:  # its names and shapes, checked now rather than mid-run
            build_fuser(fuser, 1)
    except RuntimeError as exc:
        raise CheckpointError(f"{name}: not the GLIGEN layout ComfyUI loads: {exc}") from exc
    return Gligen(weights, position_net, name)


def load_gligen(name: str, options: Mapping[str, Any]) -> Gligen:
    """The named GLIGEN model, read once and kept."""
    found = find_model(KIND, name, options.get("models") or ())
    if found.format not in ("safetensors", "pickle"):
        raise CheckpointError(f"{name} is a {found.format} folder, not a GLIGEN file")
    key = load_key(found, resolve_device(options), options)
    return STORE.get(key, lambda: _read(found.path, found.format, options, name))


class GLIGENLoader(Node):
    """Load a GLIGEN model (boxes for phrases: GLIGENTextBoxApply)."""

    category = "loaders"
    gligen_name: str = InputField(
        description="The GLIGEN model, among models/gligen.", choices=partial(model_names, KIND)
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint(KIND, literals["gligen_name"], run)

    def invoke(self, ctx: NodeContext) -> GLIGEN:
        return load_gligen(self.gligen_name, ctx.settings.options)
