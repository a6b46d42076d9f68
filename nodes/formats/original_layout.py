"""diffusers / transformers weights written back in the original (CompVis / Stability) layout.

The inverse of the loader's key maps (nodes.formats.convert): top-level names from diffusers'
own table (single_file_utils.DIFFUSERS_TO_LDM_MAPPING, read backwards for OpenCLIP's layers),
UNet blocks from nodes.formats.unet_names, VAE blocks from the table below, each part under
its family's prefix (nodes.formats.detect, nodes.formats.families). What ComfyUI's
CheckpointSave adds beside the weights (prediction markers, modelspec metadata) is here as data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from .detect import UNET_PREFIX, VAE_PREFIXES
from .families import FAMILIES, TowerSpec
from .tensors import CheckpointError
from .unet_names import original_unet_names

StateDict = Mapping[str, torch.Tensor]
Renames = Mapping[str, str]

VAE_PREFIX = VAE_PREFIXES[0]
VAE_RESNET: Renames = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION: Renames = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
"""The mid-block attention's layers; the original's are 1x1 convolutions (4-D weights)."""
VAE_MID_RESNETS = 2
OPEN_CLIP_QKV = re.compile(r"(?P<block>resblocks\.\d+\.attn)\.(?P<part>[qkv])_proj\.(?P<kind>\w+)")
"""transformers' separate q / k / v projections; OpenCLIP stacks them in `in_proj_*`."""

MODELSPEC_ARCHITECTURE = {
    "sdxl": "stable-diffusion-xl-v1-base",
    "sdxl_refiner": "stable-diffusion-xl-v1-refiner",
}
"""ComfyUI's modelspec.architecture by family (it writes none, nor the other modelspec keys,
for SD 1.x / 2.x)."""
MODELSPEC = {"modelspec.sai_model_spec": "1.0.0", "modelspec.implementation": "sgm"}
PREDICT_KEY = {"epsilon": "epsilon", "v_prediction": "v"}
"""ComfyUI's modelspec.predict_key by prediction type (written for every family)."""


def _ldm_mapping() -> Mapping[str, Any]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    return DIFFUSERS_TO_LDM_MAPPING


def _head(name: str, table: Mapping[str, Any]) -> tuple[str, str] | None:
    """(the longest dotted head of `name` that `table` has, the rest of `name`)."""
    parts = name.split(".")
    for n in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return head, ".".join(parts[n:])
    return None


def _unique(pairs: list[tuple[str, torch.Tensor]], what: str) -> dict[str, torch.Tensor]:
    """The pairs as a dict; a CheckpointError when two weights would share one name."""
    out: dict[str, torch.Tensor] = {}
    for key, value in pairs:
        if key in out:
            raise CheckpointError(f"{what}: two weights map to the original name {key}")
        out[key] = value
    return out


def unet_to_original(state: StateDict, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A UNet2DConditionModel's weights under their original names (`model.diffusion_model.`):
    the top-level layers by diffusers' table (time, class and addition embeddings), the blocks
    by nodes.formats.unet_names."""
    tables = _ldm_mapping()["unet"]
    top = {k: v for table in tables.values() for k, v in table.items() if k in state}
    names = {**original_unet_names(config, [k for k in state if k not in top]), **top}
    unknown = [k for k in state if k not in names]
    if unknown:
        raise CheckpointError(f"UNet: no original-layout name for {unknown[:3]}")
    return _unique([(UNET_PREFIX + names[k], v) for k, v in state.items()], "UNet")


def _vae_blocks(config: Mapping[str, Any]) -> dict[str, tuple[str, Renames]]:
    """diffusers VAE module prefix -> (original prefix, renames inside it), level by level
    (the decoder's levels count from the lowest resolution in diffusers, the highest there)."""
    levels = len(config["block_out_channels"])
    layers = int(config["layers_per_block"])
    blocks: dict[str, tuple[str, Renames]] = {}
    for coder in ("encoder", "decoder"):
        blocks[f"{coder}.mid_block.attentions.0"] = (f"{coder}.mid.attn_1", VAE_ATTENTION)
        for j in range(VAE_MID_RESNETS):
            blocks[f"{coder}.mid_block.resnets.{j}"] = (f"{coder}.mid.block_{j + 1}", VAE_RESNET)
    for i in range(levels):
        up = levels - 1 - i
        for j in range(layers):
            down = (f"encoder.down.{i}.block.{j}", VAE_RESNET)
            blocks[f"encoder.down_blocks.{i}.resnets.{j}"] = down
        for j in range(layers + 1):
            blocks[f"decoder.up_blocks.{i}.resnets.{j}"] = (
                f"decoder.up.{up}.block.{j}",
                VAE_RESNET,
            )
        blocks[f"encoder.down_blocks.{i}.downsamplers.0"] = (f"encoder.down.{i}.downsample", {})
        blocks[f"decoder.up_blocks.{i}.upsamplers.0"] = (f"decoder.up.{up}.upsample", {})
    return blocks


def vae_to_original(state: StateDict, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """An AutoencoderKL's weights under their original names (`first_stage_model.`)."""
    top = _ldm_mapping()["vae"]
    blocks = _vae_blocks(config)
    pairs = []
    for key, value in state.items():
        if key in top:
            pairs.append((VAE_PREFIX + top[key], value))
            continue
        found = _head(key, blocks)
        if found is None:
            raise CheckpointError(f"VAE: no original-layout name for {key}")
        (prefix, renames), rest = blocks[found[0]], found[1]
        inner = _head(rest, renames)
        if inner is not None:
            rest = f"{renames[inner[0]]}.{inner[1]}"
            if renames is VAE_ATTENTION and value.ndim == 2:
                value = value[:, :, None, None]
        pairs.append((f"{VAE_PREFIX}{prefix}.{rest}", value))
    return _unique(pairs, "VAE")


def _text_model(key: str) -> str:
    """A text encoder's weight as `CLIPTextModelWithProjection` spells it (`CLIPTextModel`'s
    state dict may leave out `text_model.`)."""
    return key if key.startswith(("text_model.", "text_projection")) else "text_model." + key


def _hf(state: StateDict) -> list[tuple[str, torch.Tensor]]:
    """A CLIP-L tower: transformers' own names (under `text_model.`), as the files have them."""
    return [(_text_model(k), v) for k, v in state.items()]


def _open_clip(state: StateDict) -> list[tuple[str, torch.Tensor]]:
    """An OpenCLIP tower: diffusers' name table read backwards, q / k / v stacked again and the
    projection stored as OpenCLIP's [width, projection] matrix."""
    table = _ldm_mapping()["openclip"]
    top, inner = table["layers"], list(table["transformer"].items())[::-1]
    pairs, stacked = [], {}
    for key, value in ((_text_model(k), v) for k, v in state.items()):
        if key in top:
            pairs.append((top[key], value.T if top[key] == "text_projection" else value))
            continue
        name = key
        for new, old in inner:
            name = name.replace(new, old)
        qkv = OPEN_CLIP_QKV.fullmatch(name)
        if qkv:
            stacked.setdefault((qkv["block"], qkv["kind"]), {})[qkv["part"]] = value
        elif name.startswith("resblocks."):
            pairs.append(("transformer." + name, value))
        else:
            raise CheckpointError(f"text encoder: no OpenCLIP name for {key}")
    for (block, kind), parts in stacked.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise CheckpointError(f"text encoder: {block} lacks some of q / k / v ({kind})")
        pairs.append((f"transformer.{block}.in_proj_{kind}", torch.cat([parts[p] for p in "qkv"])))
    return pairs


LAYOUTS = {"hf": _hf, "open_clip": _open_clip}
"""TowerSpec.layout -> how that layout names a tower's weights (without its prefix)."""


def tower_to_original(state: StateDict, spec: TowerSpec) -> dict[str, torch.Tensor]:
    """A CLIPTextModel(WithProjection)'s weights under the family's prefix for the tower."""
    pairs = LAYOUTS[spec.layout](state)
    return _unique([(spec.prefixes[0] + k, v) for k, v in pairs], f"text encoder {spec.key}")


def original_checkpoint(
    family: str,
    unet: tuple[StateDict, Mapping[str, Any]],
    vae: tuple[StateDict, Mapping[str, Any]] | None = None,
    towers: Mapping[str, StateDict] | None = None,
) -> dict[str, torch.Tensor]:
    """One file's tensors: the UNet (state, config), the VAE (state, config) and the text towers
    by their key ("l", "h", "g") in `family`'s original layout."""
    specs = {spec.key: spec for spec in FAMILIES[family].towers}
    foreign = sorted(set(towers or {}) - set(specs))
    if foreign:
        raise CheckpointError(
            f"{FAMILIES[family].label} has no text tower {', '.join(foreign)} "
            f"(it has {', '.join(specs)})"
        )
    out = unet_to_original(*unet)
    parts = [] if vae is None else [vae_to_original(*vae)]
    parts += [tower_to_original(state, specs[key]) for key, state in (towers or {}).items()]
    for part in parts:
        out.update(part)
    return out


def sampling_markers(
    prediction: str, zsnr: bool = False, edm: tuple[float, float] | None = None
) -> dict[str, torch.Tensor]:
    """The marker tensors ComfyUI saves beside the weights: `v_pred` (and `ztsnr`) for a
    v-prediction model, EDM v-prediction's `edm_vpred.sigma_max / sigma_min` (sigma_min, max)."""
    markers: dict[str, torch.Tensor] = {}
    if edm is not None:
        markers["edm_vpred.sigma_max"] = torch.tensor(edm[1]).float()
        markers["edm_vpred.sigma_min"] = torch.tensor(edm[0]).float()
    if prediction == "v_prediction":
        markers["v_pred"] = torch.tensor([])
        if zsnr:
            markers["ztsnr"] = torch.tensor([])
    return markers


def modelspec(family: str, prediction: str, title: str) -> dict[str, str]:
    """The modelspec metadata ComfyUI writes for a model of `family` (title: "<name> <n>")."""
    meta: dict[str, str] = {}
    if family in MODELSPEC_ARCHITECTURE:
        meta = {"modelspec.architecture": MODELSPEC_ARCHITECTURE[family], **MODELSPEC}
        meta["modelspec.title"] = title
    if prediction in PREDICT_KEY:
        meta["modelspec.predict_key"] = PREDICT_KEY[prediction]
    return meta
