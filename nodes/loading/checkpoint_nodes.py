"""Loader nodes: checkpoints (native and ComfyUI's names) and stand-alone VAEs."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from nodegraph import InputField, Node, NodeContext, Outputs

from ..devices import resolve_device
from ..formats.convert import build_vae_file
from ..values import CLIP, MODEL, VAE, Vae
from .checkpoints import STORE, load_checkpoint, load_key, make_vae, read_component
from .folders import SHIPPED_NAME, find_model, model_names


def loaded_models() -> list[str]:
    """The model files this process holds loaded (checkpoints, VAEs, ControlNets, LoRAs)."""
    return STORE.files()


class Checkpoint(Outputs):
    model: MODEL
    clip: CLIP
    vae: VAE


def model_fingerprint(kind: str, name: str, run: Any) -> Any:
    """A loader's cache identity: which file (and its modification time), on which device."""
    options = run.settings.options
    try:
        found = find_model(kind, name, options.get("models") or ())
    except FileNotFoundError:
        return None
    return load_key(found, resolve_device(options), options)


def checkpoint_outputs(name: str, ctx: NodeContext) -> Checkpoint:
    model, clip, vae = load_checkpoint(name, ctx.settings.options)
    if clip is None:
        ctx.warn(f"{name} has no text encoder: its CLIP output is empty")
    if vae is None:
        ctx.warn(f"{name} has no VAE: load one with VAELoader")
    # an empty output is None, as ComfyUI's (validation would refuse it)
    return Checkpoint.model_construct(model=model, clip=clip, vae=vae)


class CheckpointLoader(Node):
    """Load a Stable Diffusion checkpoint of any family (a single file or a diffusers folder)."""

    category = "loaders"
    display_name = "Load Checkpoint"
    name: str = InputField(
        SHIPPED_NAME, description="The model, among those found.", choices=model_names
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint("checkpoints", literals["name"], run)

    def invoke(self, ctx: NodeContext) -> Checkpoint:
        return checkpoint_outputs(self.name, ctx)


class CheckpointLoaderSimple(Node):
    """Load a checkpoint: its family is read from its tensors (ComfyUI's loader)."""

    category = "loaders"
    display_name = "Load Checkpoint"
    ckpt_name: str = InputField(
        SHIPPED_NAME, description="The checkpoint, among models/checkpoints.", choices=model_names
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint("checkpoints", literals["ckpt_name"], run)

    def invoke(self, ctx: NodeContext) -> Checkpoint:
        return checkpoint_outputs(self.ckpt_name, ctx)


def load_vae(name: str, options: Mapping[str, Any]) -> Vae:
    """The named VAE from the vae folders, loaded once and kept."""
    found = find_model("vae", name, options.get("models") or ())
    device = resolve_device(options)
    return STORE.get(
        load_key(found, device, options),
        lambda: make_vae(
            read_component(found, options, "AutoencoderKL", build_vae_file, "VAE"), device, name
        ),
    )


class VAELoader(Node):
    """Load a VAE file (original or diffusers layout, or a diffusers VAE folder)."""

    category = "loaders"
    display_name = "Load VAE"
    vae_name: str = InputField(
        description="The VAE, among models/vae.", choices=partial(model_names, "vae")
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint("vae", literals["vae_name"], run)

    def invoke(self, ctx: NodeContext) -> VAE:
        return load_vae(self.vae_name, ctx.settings.options)
