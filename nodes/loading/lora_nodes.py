"""LoRA loaders (ComfyUI's LoraLoader and LoraLoaderModelOnly) as weight patches.

A LoRA never changes the loaded checkpoint: it returns a MODEL / CLIP carrying one more patch,
applied to the weights in place only while that model samples or that CLIP encodes
(nodes.loading.patching), so the same checkpoint serves every LoRA and strength at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import Any

from nodegraph import InputField, Node, NodeContext, Outputs

from ..devices import resolve_device
from ..formats.lora import Adapter, LoraShapeError, lora_aliases, match_lora, parse_lora
from ..formats.unet_names import original_unet_names
from ..values import CLIP, MODEL, Clip, Model, TextTower
from .checkpoint_nodes import model_fingerprint
from .checkpoints import Store, load_key, open_checkpoint
from .folders import find_model, model_names
from .patching import Patch

LORA_STORE = Store(8)
STRENGTH = {"ge": -100.0, "le": 100.0, "step": 0.01}
UNET_PREFIXES = ("lora_unet",)
TOWER_PREFIXES = {
    1: {"l": ("lora_te",), "h": ("lora_te",), "g": ("lora_te", "lora_te2")},
    2: {"l": ("lora_te1",), "g": ("lora_te2",)},
}
"""kohya's text-encoder prefixes by the CLIP's tower count and tower (SDXL: te1 = CLIP-L,
te2 = bigG; the refiner's lone bigG is written either way)."""
TEXT_MODULE_PREFIXES = ("lora_te", "text_encoder", "te.", "te1.", "te2.")


def load_lora(name: str, options: Mapping[str, Any]) -> tuple[Any, dict[str, Adapter]]:
    """(the file's identity, its adapters by module name), read once and kept."""
    found = find_model("loras", name, options.get("models") or ())
    key = load_key(found, resolve_device(options), options)

    def read() -> dict[str, Adapter]:
        tensors = open_checkpoint(found.path, found.format, options)
        return parse_lora(tensors.read(list(tensors)))

    return key, LORA_STORE.get(key, read)


def unet_aliases(model: Model) -> dict[str, str]:
    names = [n for n, _ in model.unet.named_parameters()]
    return lora_aliases(names, UNET_PREFIXES, original_unet_names(model.unet.config, names))


def tower_aliases(tower: TextTower, towers: int) -> dict[str, str]:
    names = [n for n, _ in tower.encoder.named_parameters()]
    prefixes = TOWER_PREFIXES[towers]
    spelled = {n: n if n.startswith("text_model.") else "text_model." + n for n in names}
    return lora_aliases(names, prefixes[tower.key], spelled)


def _unmatched_warning(unmatched: set[str]) -> str:
    sample = ", ".join(sorted(unmatched)[:3])
    return f"{len(unmatched)} of the LoRA's modules match no weight of this model (e.g. {sample})"


def fitting(
    adapters: Mapping[str, Adapter], aliases: Mapping[str, str], module: Any
) -> tuple[dict[str, Adapter], set[str]]:
    """(weight name -> adapter, LoRA modules used) for the adapters that match a weight of the
    module by name and fit it by shape (checked on the meta device: nothing is computed)."""
    by_weight, _ = match_lora(adapters, aliases)
    weights = dict(module.named_parameters())
    fits = {}
    for name, adapter in by_weight.items():
        try:
            adapter.delta(weights[name].shape, device="meta")
        except (LoraShapeError, KeyError):
            continue
        fits[name] = adapter
    module_of = {id(a): m for m, a in adapters.items()}
    used = {module_of[id(a)] for a in fits.values()}
    return fits, used


class LoraOutputs(Outputs):
    model: MODEL
    clip: CLIP


def apply_lora(
    ctx: NodeContext,
    name: str,
    model: Model,
    clip: Clip | None,
    strength_model: float,
    strength_clip: float,
) -> tuple[Model, Clip | None]:
    """The model and clip with the LoRA's patches added (inputs untouched at strength 0)."""
    if strength_model == 0 and strength_clip == 0:
        return model, clip
    key, adapters = load_lora(name, ctx.settings.options)
    matched_modules: set[str] = set()
    if strength_model != 0:
        patch_adapters, matched = fitting(adapters, unet_aliases(model), model.unet)
        matched_modules |= matched
        patch = Patch(patch_adapters, strength_model, (key, "unet", strength_model))
        model = dataclasses.replace(model, patches=(*model.patches, patch))
    if clip is not None and strength_clip != 0:
        added = []
        for tower in clip.towers:
            aliases = tower_aliases(tower, len(clip.towers))
            patch_adapters, matched = fitting(adapters, aliases, tower.encoder)
            matched_modules |= matched
            added.append((tower.key, Patch(patch_adapters, strength_clip, (key, tower.key))))
        clip = dataclasses.replace(clip, patches=(*clip.patches, *added))
    text_patched = clip is not None and strength_clip != 0
    unmatched = {
        m
        for m in set(adapters) - matched_modules
        if (text_patched if _is_text(m) else strength_model != 0)
    }
    if adapters and not matched_modules:
        raise ValueError(
            f"LoRA {name} matches none of this model's weights ({len(adapters)} modules, e.g. "
            f"{sorted(adapters)[0]}): it was made for another model family ({model.family} here)"
        )
    if unmatched:
        ctx.warn(_unmatched_warning(unmatched))
    return model, clip


def _is_text(module: str) -> bool:
    """Whether a LoRA module is meant for a text encoder (by its prefix)."""
    return module.startswith(TEXT_MODULE_PREFIXES)


class LoraLoader(Node):
    """Apply a LoRA to the model and the text encoder, each at its own strength."""

    category = "loaders"
    display_name = "Load LoRA"
    model: MODEL = InputField(description="The diffusion model the LoRA will be applied to.")
    clip: CLIP = InputField(description="The CLIP model the LoRA will be applied to.")
    lora_name: str = InputField(
        description="The LoRA, among models/loras.", choices=partial(model_names, "loras")
    )
    strength_model: float = InputField(
        1.0, description="How strongly to modify the diffusion model.", **STRENGTH
    )
    strength_clip: float = InputField(
        1.0, description="How strongly to modify the CLIP model.", **STRENGTH
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint("loras", literals["lora_name"], run)

    def invoke(self, ctx: NodeContext) -> LoraOutputs:
        model, clip = apply_lora(
            ctx, self.lora_name, self.model, self.clip, self.strength_model, self.strength_clip
        )
        return LoraOutputs(model=model, clip=clip)


class LoraLoaderModelOnly(Node):
    """Apply a LoRA to the diffusion model only."""

    category = "loaders"
    display_name = "LoraLoaderModelOnly"
    model: MODEL = InputField(description="The diffusion model the LoRA will be applied to.")
    lora_name: str = InputField(
        description="The LoRA, among models/loras.", choices=partial(model_names, "loras")
    )
    strength_model: float = InputField(
        1.0, description="How strongly to modify the diffusion model.", **STRENGTH
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint("loras", literals["lora_name"], run)

    def invoke(self, ctx: NodeContext) -> MODEL:
        model, _ = apply_lora(ctx, self.lora_name, self.model, None, self.strength_model, 0.0)
        return model
