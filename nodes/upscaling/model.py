"""UPSCALE_MODEL: an upscale model file read safely and built by spandrel, kept once loaded.

A `.safetensors` file is read as it is; any other (`.pth`, `.pt`, `.ckpt`, ...) only through
`torch.load(weights_only=True)`, so a file that needs more than tensors and plain containers is
refused rather than unpickled. spandrel tells the architecture (ESRGAN, Real-ESRGAN, SwinIR,
...) and its hyper-parameters from the tensors' names and shapes, as in ComfyUI.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.types import socket

from ..devices import resolve_device
from ..formats.tensors import CheckpointError, open_safetensors
from ..loading.checkpoints import Store, load_key
from ..loading.folders import ModelFile, find_model
from ..loading.residency import CPU, RESIDENCY
from .library import spandrel, usable

KIND = "upscale_models"
STORE = Store(2)


@dataclass(eq=False)
class UpscaleModel:
    """A spandrel image-to-image model (an ImageModelDescriptor), its file's name and device."""

    descriptor: Any
    name: str
    device: torch.device

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.id)

    def cache_nbytes(self) -> int:
        return 0  # the weights belong to the model store, not to the run cache


UPSCALE_MODEL = socket("UPSCALE_MODEL", UpscaleModel)


class UpscaleModelError(CheckpointError):
    """An upscale model file that cannot be loaded; the message names the node, input and file."""


def _where(name: str) -> str:
    return f"UpscaleModelLoader: model_name '{name}'"


def read_weights(path: Path, name: str) -> dict[str, Any]:
    """A file's state dict: safetensors as is, anything else through a weights-only unpickle."""
    if path.suffix.lower() in (".safetensors", ".sft"):
        try:
            tensors = open_safetensors(path)
            return tensors.read(list(tensors))
        except CheckpointError as exc:
            raise UpscaleModelError(f"{_where(name)}: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise UpscaleModelError(
            f"{_where(name)}: refusing to unpickle {path.name}: it holds Python objects beyond "
            f"tensors{what}, and loading those can run arbitrary code. Upscale models are read "
            "with torch.load(weights_only=True) only; convert the file to .safetensors."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise UpscaleModelError(f"{_where(name)}: {path.name} cannot be read: {exc!r}") from exc
    if not isinstance(state, Mapping):
        raise UpscaleModelError(f"{_where(name)}: {path.name} holds no state dict")
    return dict(state)


def build(state: dict[str, Any], name: str, device: torch.device) -> UpscaleModel:
    """The spandrel model of a state dict, on `device`, or an error naming the file."""
    library = spandrel()
    try:
        descriptor = library.ModelLoader().load_from_state_dict(state)
    except library.UnsupportedModelError as exc:
        keys = ", ".join(list(state)[:3]) or "none"
        raise UpscaleModelError(
            f"{_where(name)}: spandrel recognises no upscale model architecture in this file "
            f"({len(state)} entries: {keys}, ...). Is it an ESRGAN / Real-ESRGAN / SwinIR / ... "
            "model (not a checkpoint, LoRA or VAE)?"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - detected, but the tensors do not fit together
        raise UpscaleModelError(f"{_where(name)}: spandrel cannot build it: {exc!r}") from exc
    arch = str(descriptor.architecture.id)
    if not isinstance(descriptor, library.ImageModelDescriptor):
        raise UpscaleModelError(
            f"{_where(name)}: a {arch} model ({descriptor.purpose}) takes more than one "
            "picture; an upscale model must be a single-image model"
        )
    if not usable(arch):
        raise UpscaleModelError(
            f"{_where(name)}: spandrel's {arch} architecture needs torchvision, which cannot be "
            "imported with this torch (see pyproject.toml's `upscale` extra)"
        )
    return UpscaleModel(descriptor.eval().to(RESIDENCY.load_device(device)), name, device)


def _load(found: ModelFile, device: torch.device) -> UpscaleModel:
    if found.format not in ("safetensors", "pickle"):
        raise UpscaleModelError(f"{_where(found.name)}: a {found.format} folder, not a file")
    model = build(read_weights(found.path, found.name), found.name, device)

    def rebuild() -> torch.nn.Module:
        return build(read_weights(found.path, found.name), found.name, CPU).descriptor.model

    RESIDENCY.track(model.descriptor.model, rebuild, found.path)
    return model


def load_upscale_model(name: str, options: Mapping[str, Any]) -> UpscaleModel:
    """The named model of the upscale_models folders, loaded once and kept."""
    found = find_model(KIND, name, options.get("models") or ())
    device = resolve_device(options)
    return STORE.get(load_key(found, device, options), lambda: _load(found, device))
