"""ComfyUI's unCLIPCheckpointLoader: a checkpoint with the CLIP image encoder it holds."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from nodegraph import NodeContext, Outputs

from ..devices import resolve_device
from ..formats.clip_vision import has_clip_vision
from ..values import CLIP, CLIP_VISION, MODEL, VAE, ClipVision
from . import clip_vision_nodes
from .checkpoint_nodes import CheckpointLoaderSimple, checkpoint_outputs
from .checkpoints import load_key, open_checkpoint
from .folders import find_model

IMAGE_ENCODER = "image_encoder"
"""The diffusers folder component of an unCLIP pipeline's CLIP image encoder."""


class UnclipCheckpoint(Outputs):
    model: MODEL
    clip: CLIP
    vae: VAE
    clip_vision: CLIP_VISION


def _load_image_encoder(found: Any, options: Mapping[str, Any], name: str) -> ClipVision | None:
    device = resolve_device(options)
    if found.format == "diffusers":
        folder = found.path / IMAGE_ENCODER
        if not (folder / "config.json").is_file():
            return None
        from transformers import CLIPVisionModelWithProjection

        build = partial(CLIPVisionModelWithProjection.from_pretrained, folder,
                        local_files_only=True)  # fmt: skip
        return clip_vision_nodes.make_clip_vision(build, found.path, device, name)
    tensors = partial(open_checkpoint, found.path, found.format, options)
    if not has_clip_vision(tensors()):
        return None
    return clip_vision_nodes.clip_vision_from(tensors, found.path, device, name)


def load_image_encoder(name: str, options: Mapping[str, Any]) -> ClipVision | None:
    """The CLIP image encoder inside the named checkpoint (None: it holds none), kept once
    loaded."""
    found = find_model("checkpoints", name, options.get("models") or ())
    key = (*load_key(found, resolve_device(options), options), "image_encoder")
    return clip_vision_nodes.STORE.get(key, lambda: _load_image_encoder(found, options, name))


class UnclipCheckpointLoader(CheckpointLoaderSimple):
    """Load an unCLIP checkpoint: model, text encoder, VAE and its CLIP image encoder."""

    node_type = "unCLIPCheckpointLoader"
    display_name = None

    def invoke(self, ctx: NodeContext) -> UnclipCheckpoint:
        loaded = checkpoint_outputs(self.ckpt_name, ctx)
        encoder = load_image_encoder(self.ckpt_name, ctx.settings.options)
        if encoder is None:
            ctx.warn(f"{self.ckpt_name} holds no CLIP image encoder: its CLIP_VISION is empty")
        parts = {"model": loaded.model, "clip": loaded.clip, "vae": loaded.vae}
        # an empty CLIP_VISION is None, as ComfyUI's (validation would refuse it)
        return UnclipCheckpoint.model_construct(**parts, clip_vision=encoder)
