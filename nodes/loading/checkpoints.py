"""Loading checkpoints of every SD family, offline, and keeping the loaded ones.

Two storage formats, one result (a MODEL, a CLIP and a VAE):
- a single file in the original key layout (`.safetensors`; a pickle only with
  `options["allow_pickle"]`, then through `torch.load(weights_only=True)`): its family is read
  from its tensors and its modules built from their shapes (nodes.formats), nothing beside it;
- a diffusers folder (model_index.json): its own configs, tokenizers and scheduler.
"""

from __future__ import annotations

import gc
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..devices import compute_dtype, resolve_device
from ..formats import convert
from ..formats.detect import detect
from ..formats.families import FAMILIES, Family, TowerSpec, Variant
from ..formats.tensors import CheckpointError, Tensors, open_pickle, open_safetensors
from ..formats.tokenizer import clip_tokenizer
from ..sampling.comfy.model_sampling import ModelSampling
from ..sampling.preview import fit_latent_rgb
from ..values import Clip, Model, TextTower, Vae
from .folders import SHIPPED_DIR, ModelFile, find_model, modified
from .residency import RESIDENCY

STORE_SIZE = 3
TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")


class PickleRefused(CheckpointError):
    """A pickle-based checkpoint was asked for without the explicit opt-in."""


def shipped_size() -> int:
    """The shipped model's native picture size (its UNet's latent size x 8)."""
    unet = json.loads((SHIPPED_DIR / "unet" / "config.json").read_text())
    return int(unet["sample_size"]) * 8


@dataclass
class Parts:
    """A checkpoint's modules before they are placed on a device."""

    variant: Variant
    unet: Any
    vae: Any | None
    towers: list[tuple[TowerSpec, Any, Any, int, int]]
    """(spec, encoder, tokenizer, layer, pad id) per text tower the checkpoint has."""
    scheduler: dict[str, Any]


# --------------------------------------------------------------------------- single files


def tracked(build: Callable[[], Any], path: Path) -> Any:
    """`build()`'s module, noted as one that `build` makes again from `path` (nodes.loading.
    residency: on the CPU past the budget it lets its weights go and reads them again)."""
    module = build()
    if module is not None:
        RESIDENCY.track(module, build, path)
    return module


def read_component(
    found: ModelFile,
    options: Mapping[str, Any],
    diffusers_class: str,
    build: Callable[[Tensors], Any],
    what: str,
) -> Any:
    """One model part from a models folder: a diffusers folder through `diffusers_class`'s
    from_pretrained, a single file's tensors through `build` (tracked: see `tracked`)."""
    if found.format == "component":
        import diffusers

        cls = getattr(diffusers, diffusers_class)
        return tracked(partial(cls.from_pretrained, found.path, local_files_only=True), found.path)
    if found.format not in ("safetensors", "pickle"):
        raise CheckpointError(f"{found.name} is a {found.format} folder, not a {what}")
    return tracked(lambda: build(open_checkpoint(found.path, found.format, options)), found.path)


def open_checkpoint(path: Path, fmt: str, options: Mapping[str, Any]) -> Tensors:
    """A single file's tensors (a pickle only with the opt-in)."""
    if fmt != "pickle":
        return open_safetensors(path)
    if not options.get("allow_pickle"):
        raise PickleRefused(
            f"refusing to load {path.name}: pickle-based weights (.ckpt, .pt, .pth, .bin) can "
            "run arbitrary code when loaded. Convert it to .safetensors, or opt in "
            "(allow_pickle) to load it with torch.load(weights_only=True)."
        )
    return open_pickle(path)


def _single_file(path: Path, fmt: str, options: Mapping[str, Any]) -> Parts:
    tensors = open_checkpoint(path, fmt, options)
    variant = detect(tensors)

    def part(build: Callable[..., Any], *args: Any) -> Any:
        """A module built from the file's tensors, tracked as one read again from the file."""
        module = build(tensors, *args)
        if module is not None:
            rebuild = lambda: build(open_checkpoint(path, fmt, options), *args)  # noqa: E731
            RESIDENCY.track(module, rebuild, path)
        return module

    towers = []
    for spec in variant.family.towers:
        encoder = part(convert.build_tower, spec)
        if encoder is not None:
            towers.append((spec, encoder, clip_tokenizer(), spec.layer, spec.pad_id))
    unet = part(convert.build_unet, variant)
    vae = part(convert.build_vae, variant)
    return Parts(variant, unet, vae, towers, variant.scheduler_config())


# --------------------------------------------------------------------------- diffusers folders


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def folder_variant(path: Path) -> Variant:
    """A diffusers folder's family, from its configs."""
    index = _read_json(path / "model_index.json")
    unet = _read_json(path / "unet" / "config.json")
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
    prediction = scheduler.get("prediction_type", "epsilon")
    in_channels = int(unet.get("in_channels", 4))
    if unet.get("addition_embed_type") == "text_time":
        has_l = (index.get("text_encoder") or [None])[0] is not None
        family = FAMILIES["sdxl" if has_l else "sdxl_refiner"]
    else:
        text = _read_json(path / "text_encoder" / "config.json")
        family = FAMILIES["sd2" if text.get("hidden_act") == "gelu" else "sd1"]
    zero_snr = bool(scheduler.get("rescale_betas_zero_snr"))
    unclip = unet.get("class_embed_type") == "projection" and family.key == "sd2"
    variant = Variant(family, prediction, in_channels, zero_snr, unclip)
    reason = variant.unsupported()
    if reason is not None:
        raise CheckpointError(f"{path.name} is {reason}, which nodegraph does not support yet")
    return variant


def _folder(path: Path) -> Parts:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    variant = folder_variant(path)
    index = _read_json(path / "model_index.json")
    common = {"local_files_only": True}
    unet = tracked(partial(diffusers.UNet2DConditionModel.from_pretrained, path, subfolder="unet",
                           **common), path)  # fmt: skip
    vae = tracked(partial(diffusers.AutoencoderKL.from_pretrained, path, subfolder="vae",
                          **common), path)  # fmt: skip
    towers = []
    for spec in variant.family.towers:
        entry = index.get(spec.diffusers_component) or [None, None]
        if entry[0] is None:
            continue
        if entry[1] not in TEXT_ENCODERS:
            raise CheckpointError(
                f"{path.name}: {spec.diffusers_component} is a {entry[1]}, not a CLIP text "
                f"encoder ({', '.join(TEXT_ENCODERS)})"
            )
        cls = getattr(transformers, entry[1])
        read = partial(cls.from_pretrained, path, subfolder=spec.diffusers_component, **common)
        encoder = tracked(read, path)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(
            path / spec.tokenizer_component, **common
        )
        layer = None if spec.folder_drops_last else spec.layer
        towers.append((spec, encoder, tokenizer, layer, int(tokenizer.pad_token_id)))
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
    return Parts(variant, unet, vae, towers, scheduler)


# --------------------------------------------------------------------------- bundles


def _place(module: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A module in its compute dtype, on `device` (or on the CPU until first used, when its
    place is managed: nodes.loading.residency)."""
    place = RESIDENCY.load_device(device)
    return module.to(device=place, dtype=dtype).eval().requires_grad_(False)


def _weights_dtype(module: Any) -> torch.dtype:
    return next(module.parameters()).dtype


def make_vae(vae: Any, device: torch.device, name: str) -> Vae:
    """A VAE placed for computing: full precision when its config asks for upcasting."""
    dtype = compute_dtype(device, _weights_dtype(vae))
    if getattr(vae.config, "force_upcast", False):
        dtype = torch.float32
    return Vae(_place(vae, device, dtype), device, dtype, name)


def bundle(name: str, parts: Parts, device: torch.device) -> tuple[Model, Clip | None, Vae | None]:
    family: Family = parts.variant.family
    dtype = compute_dtype(device, _weights_dtype(parts.unet))
    vae = None if parts.vae is None else make_vae(parts.vae, device, name)
    towers = tuple(
        TextTower(spec.key, tokenizer, _place(encoder, device, dtype), layer, spec.final_norm, pad)
        for spec, encoder, tokenizer, layer, pad in parts.towers
    )
    clip = Clip(towers, device, dtype, name, family.key) if towers else None
    scale = float(parts.vae.config.scaling_factor) if parts.vae is not None else family.latent_scale
    shift = float(getattr(parts.vae.config, "shift_factor", None) or 0.0) if parts.vae else 0.0
    space: dict[str, Any] = {"latent_scale": scale, "latent_shift": shift}
    own = parts.variant.latent_format
    if own is not None:  # a per-channel latent space (Playground 2.5), whatever the VAE says
        channels = (1, len(own.mean), 1, 1)
        space = {"latent_scale": own.scale, "latent_shift": torch.tensor(own.mean).view(channels),
                 "latent_std": torch.tensor(own.std).view(channels)}  # fmt: skip
    model = Model(
        _place(parts.unet, device, dtype),
        parts.scheduler,
        device,
        dtype,
        name,
        family=family.key,
        sampling=_own_sampling(parts.variant),
        edm=parts.variant.edm is not None,
        **space,
    )
    if vae is not None:
        model.preview_factors = fit_latent_rgb(vae, model.latent_in)
    return model, clip, vae


def _own_sampling(variant: Variant) -> ModelSampling | None:
    """The sampling an EDM-trained file declares (ComfyUI's V_PREDICTION_EDM / EDM); None: its
    scheduler's."""
    edm = variant.edm
    if edm is None:
        return None
    line = (edm.prediction, edm.sigma_min, edm.sigma_max, edm.sigma_data)
    return ModelSampling.continuous_edm(*line)


def load_parts(found: ModelFile, options: Mapping[str, Any]) -> Parts:
    if found.format == "diffusers":
        return _folder(found.path)
    if found.format in ("safetensors", "pickle"):
        return _single_file(found.path, found.format, options)
    raise CheckpointError(f"{found.name} is a {found.format} folder, not a whole checkpoint")


class Store:
    """Loaded models by (path, modification time, device, kind), the last few kept."""

    every: ClassVar[weakref.WeakSet[Store]] = weakref.WeakSet()
    """Each store made (emptied together by `free_memory`)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0
        Store.every.add(self)

    def get(self, key: tuple, load: Any) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = load()
            self.loads += 1
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def files(self) -> list[str]:
        """File names of the models held (the key's path; a diffusers folder's name)."""
        with self._lock:
            return [Path(key[1]).name for key in self._items if len(key) > 1]


STORE = Store(STORE_SIZE)


def free_memory() -> None:
    """Registry.free_memory: every store of loaded models emptied (a model then lives on only
    while a cached result holds it)."""
    for store in list(Store.every):
        store.clear()
    gc.collect()


def stored_bytes(path: Path) -> int:
    """A model's size on disk (a folder's files together)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def load_key(found: ModelFile, device: torch.device, options: Mapping[str, Any]) -> tuple:
    """The store key (and cache fingerprint) of a model file loaded on a device."""
    pickle = found.format == "pickle" and bool(options.get("allow_pickle"))
    return (found.kind, str(found.path.resolve()), modified(found.path), str(device), pickle)


def load_checkpoint(name: str, options: Mapping[str, Any]) -> tuple[Model, Clip | None, Vae | None]:
    """The model, text encoder(s) and VAE of the named checkpoint, loaded once and kept."""
    found = find_model("checkpoints", name, options.get("models") or ())
    device = resolve_device(options)

    def load() -> tuple[Model, Clip | None, Vae | None]:
        RESIDENCY.reserve(device, stored_bytes(found.path))
        return bundle(name, load_parts(found, options), device)

    return STORE.get(load_key(found, device, options), load)


def describe(found: ModelFile) -> str:
    """The detected family of a listed model ('' when it cannot be told cheaply)."""
    try:
        if found.format == "diffusers":
            return folder_variant(found.path).name
        if found.format == "safetensors" and found.kind == "checkpoints":
            return detect(open_safetensors(found.path)).name
    except CheckpointError as exc:
        return f"unknown ({exc})"
    return ""
