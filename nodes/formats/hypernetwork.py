"""A1111 hypernetwork files (`models/hypernetworks/*.pt`), read as ComfyUI reads them.

The file is a torch pickle (read with the weights-only unpickler) holding, for each attention
width it serves (an int key: 320, 640, 768, 1280, ...), a pair of state dicts: the MLP applied
to the attention's key input and the one applied to its value input. Settings beside them:
`activation_func` (default "linear"), `is_layer_norm`, `use_dropout`, `activate_output` and
`last_layer_dropout` (default False).

Each MLP is rebuilt as ComfyUI's load_hypernetwork_patch builds it, walking the state dict's
`*.weight` entries in file order: a Linear, then the activation unless it is "linear" or the
entry is the last one (kept there with `activate_output`), then with `is_layer_norm` the next
entry as a LayerNorm, then with `use_dropout` a Dropout(0.3) unless the entry is the last one,
or the one before the last without `last_layer_dropout`. ("Last" counts the LayerNorm entries
too, as ComfyUI does, so with layer norms the final Linear still gets its activation.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .tensors import CheckpointError

ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "linear": torch.nn.Identity,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "softsign": torch.nn.Softsign,
    "mish": torch.nn.Mish,
}
"""The activation names ComfyUI accepts (A1111's "swish" is its Hardswish)."""
DROPOUT = 0.3
"""The dropout ComfyUI uses whatever the file's dropout structure says."""


class UnsupportedHypernetwork(CheckpointError):
    """A hypernetwork whose activation ComfyUI does not know (it then leaves the model as is)."""


@dataclass(frozen=True)
class Settings:
    activation: str = "linear"
    layer_norm: bool = False
    dropout: bool = False
    activate_output: bool = False
    last_layer_dropout: bool = False

    @classmethod
    def of(cls, content: Mapping[Any, Any]) -> Settings:
        return cls(
            content.get("activation_func", "linear"),
            bool(content.get("is_layer_norm", False)),
            bool(content.get("use_dropout", False)),
            bool(content.get("activate_output", False)),
            bool(content.get("last_layer_dropout", False)),
        )


Hypernetwork = dict[int, tuple[torch.nn.Sequential, torch.nn.Sequential]]
"""Attention width -> (the MLP on the key input, the MLP on the value input), float32, CPU."""


def read_hypernetwork_file(path: Path) -> Mapping[Any, Any]:
    """The file's content: safetensors, or a torch file through the weights-only unpickler."""
    try:
        if path.suffix.lower() in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            return load_file(str(path))
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the file holds, say which file it was
        raise CheckpointError(f"hypernetwork {path.name} cannot be read: {exc}") from exc
    if not isinstance(content, Mapping):
        raise CheckpointError(f"hypernetwork {path.name} holds a {type(content).__name__}")
    return content


def _pair(weights: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {"weight": weights[f"{name}.weight"], "bias": weights[f"{name}.bias"]}


def build_mlp(weights: Mapping[str, torch.Tensor], settings: Settings) -> torch.nn.Sequential:
    """One MLP (a key or value state dict) as ComfyUI builds it (see the module's docstring)."""
    entries = [k[: -len(".weight")] for k in weights if k.endswith(".weight")]
    layers: list[torch.nn.Module] = []
    i = 0
    while i < len(entries):
        last, penultimate = i == len(entries) - 1, i == len(entries) - 2
        tensors = _pair(weights, entries[i])
        linear = torch.nn.Linear(tensors["weight"].shape[1], tensors["weight"].shape[0])
        linear.load_state_dict(tensors)
        layers.append(linear)
        if settings.activation != "linear" and (not last or settings.activate_output):
            layers.append(ACTIVATIONS[settings.activation]())
        if settings.layer_norm:
            i += 1
            tensors = _pair(weights, entries[i])
            norm = torch.nn.LayerNorm(tensors["weight"].shape[0])
            norm.load_state_dict(tensors)
            layers.append(norm)
        if settings.dropout and not last and (not penultimate or settings.last_layer_dropout):
            layers.append(torch.nn.Dropout(p=DROPOUT))
        i += 1
    return torch.nn.Sequential(*layers).requires_grad_(False)


def parse_hypernetwork(content: Mapping[Any, Any], name: str = "hypernetwork") -> Hypernetwork:
    """The MLPs of every width the file holds (keys that are not ints are its settings)."""
    settings = Settings.of(content)
    if settings.activation not in ACTIVATIONS:
        raise UnsupportedHypernetwork(
            f"{name}: unsupported hypernetwork activation {settings.activation!r} "
            f"(known: {', '.join(ACTIVATIONS)})"
        )
    nets: Hypernetwork = {}
    for key in content:
        try:
            width = int(key)
        except (TypeError, ValueError):
            continue
        try:
            k_weights, v_weights = content[width][0], content[width][1]
            nets[width] = (build_mlp(k_weights, settings), build_mlp(v_weights, settings))
        except (KeyError, IndexError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{name}: its width-{key} layers cannot be read: {exc}") from exc
    return nets
