"""ComfyUI's CLIPVisionLoader: a CLIP image encoder from the clip_vision folders, kept once loaded.

The file's layout (transformers' or OpenCLIP's) and its architecture are read from its tensors
(nodes.formats.clip_vision). Precision is ComfyUI's: it holds CLIP vision weights in float16
(on every device; the two outer layer norms and the projection excepted, see FULL) and
computes in float32 (its manual cast to the float32 pixels), so those weights are rounded to
float16 once here and kept, and run, as float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from nodegraph import InputField, Node, NodeContext

from ..devices import resolve_device
from ..formats.clip_vision import CLIP_MEAN, CLIP_STD, build_clip_vision
from ..formats.tensors import CheckpointError, Tensors
from ..values import CLIP_VISION, ClipVision
from .checkpoint_nodes import model_fingerprint
from .checkpoints import Store, load_key, open_checkpoint, tracked
from .folders import find_model, model_names
from .residency import RESIDENCY

KIND = "clip_vision"
STORE = Store(2)
HELD = torch.float16
"""The precision ComfyUI holds CLIP vision weights in (comfy.model_management)..."""
FULL = ("vision_model.pre_layrnorm.", "vision_model.post_layernorm.", "visual_projection.")
"""...but for these, which its model builds without a dtype: float32, as the file has them."""


def loaded_models() -> list[str]:
    return STORE.files()


def _held(model: Any) -> Any:
    """The encoder in float32 with ComfyUI's held precision (float16 values but for FULL)."""
    model = model.to(dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith(FULL):
                param.copy_(param.to(HELD))
    return model


def make_clip_vision(build: Callable[[], Any], path: Path, device: torch.device,
                     name: str) -> ClipVision:  # fmt: skip
    """The encoder `build()` makes (from the file at `path`), placed for computing on `device`."""
    model = tracked(lambda: _held(build()), path)
    model = model.to(device=RESIDENCY.load_device(device)).eval().requires_grad_(False)
    size = int(model.config.image_size)
    return ClipVision(model, device, torch.float32, name, size, CLIP_MEAN, CLIP_STD)


def clip_vision_from(tensors: Callable[[], Tensors], path: Path, device: torch.device,
                     name: str) -> ClipVision:  # fmt: skip
    """The CLIP vision tower of a file's tensors (its own file, or a checkpoint holding one)."""
    return make_clip_vision(lambda: build_clip_vision(tensors(), name), path, device, name)


def load_clip_vision(name: str, options: Mapping[str, Any]) -> ClipVision:
    """The named clip_vision file, loaded once and kept."""
    found = find_model(KIND, name, options.get("models") or ())
    if found.format not in ("safetensors", "pickle"):
        raise CheckpointError(f"{name} is a {found.format} folder, not a CLIP vision file")
    device = resolve_device(options)
    tensors = partial(open_checkpoint, found.path, found.format, options)
    return STORE.get(
        load_key(found, device, options),
        lambda: clip_vision_from(tensors, found.path, device, name),
    )


class CLIPVisionLoader(Node):
    """Load a CLIP vision encoder (ViT-L, ViT-H, bigG: told from the file's tensors)."""

    category = "loaders"
    display_name = "Load CLIP Vision"
    clip_name: str = InputField(
        description="The encoder, among models/clip_vision.", choices=partial(model_names, KIND)
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint(KIND, literals["clip_name"], run)

    def invoke(self, ctx: NodeContext) -> CLIP_VISION:
        return load_clip_vision(self.clip_name, ctx.settings.options)
