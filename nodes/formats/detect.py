"""A single file's family, read from its tensors as ComfyUI reads it (no file names, no YAML).

The UNet's structure decides: a 4-D convolution `proj_in` is SD 1.x, a linear one SD 2.x or
SDXL; a `label_emb` (the pooled-text and size embedding) is SDXL, the base when it has two
text towers, the refiner when it has bigG only, unless the towers are SD 2.x's: then it is the
image embedding of an SD 2.x unCLIP model (ComfyUI's SD21UnclipL / H, told by the width there).
Input channels give inpainting (9) and InstructPix2Pix (8, SD 1.x as ComfyUI's
SD15_instructpix2pix); SD 2.x's v-prediction is told by ComfyUI's weight heuristic; SDXL's by
its `v_pred` / `ztsnr` markers.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .families import (
    EDM_FAMILIES,
    EDM_SIGMA_DATA,
    EDM_SIGMA_MIN,
    FAMILIES,
    PLAYGROUND_2_5,
    PLAYGROUND_SAMPLING,
    UNCLIP_IMAGE_PREFIX,
    UNCLIP_TOWER_PREFIX,
    V_MARKER_STD,
    EdmSampling,
    Family,
    TowerSpec,
    Variant,
)
from .tensors import CheckpointError, Tensors

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
_MIN_UNET_KEYS = 5

UNSUPPORTED_MARKERS: dict[str, str] = {}
"""Marker tensors of checkpoints nodegraph refuses, and what they are."""
EDM_MAX, EDM_MIN = "edm_vpred.sigma_max", "edm_vpred.sigma_min"
PLAYGROUND_MARKERS = ("edm_mean", "edm_std")


def tower_prefix(tensors: Tensors, spec: TowerSpec) -> str | None:
    """Where the tower's tensors are in this file (None: the file has no such tower)."""
    return next((p for p in spec.prefixes if tensors.count(p) > 0), None)


def vae_prefix(tensors: Tensors) -> str | None:
    return next((p for p in VAE_PREFIXES if tensors.count(p + "decoder.") > 0), None)


def _first(tensors: Tensors, suffix: str) -> str | None:
    return next((k for k in tensors if k.startswith(UNET_PREFIX) and k.endswith(suffix)), None)


def _sdxl_family(tensors: Tensors) -> Family:
    """Base (CLIP-L and bigG) or refiner (bigG only): by the towers, else by context width."""
    for key in ("sdxl", "sdxl_refiner"):
        family = FAMILIES[key]
        if all(tower_prefix(tensors, t) for t in family.towers):
            return family
    context = _first(tensors, "attn2.to_k.weight")
    width = tensors.shape(context)[1] if context else 0
    by_width = {2048: "sdxl", 1280: "sdxl_refiner"}
    if width in by_width:
        return FAMILIES[by_width[width]]
    raise CheckpointError(
        f"{tensors.path.name}: an SDXL-like UNet (it has label_emb) with neither SDXL's text "
        "encoders (conditioner.embedders.*) nor a standard context width (2048 / 1280)"
    )


def _sd2_prediction(tensors: Tensors) -> str:
    """ComfyUI's heuristic: v when the last attention block's norm1 bias spreads wide."""
    blocks = sorted(
        {
            int(k[len(UNET_PREFIX) :].split(".")[1])
            for k in tensors.with_prefix(UNET_PREFIX + "output_blocks.")
            if k.endswith(".1.transformer_blocks.0.norm1.bias")
        }
    )
    if not blocks:
        return "epsilon"
    bias = tensors[f"{UNET_PREFIX}output_blocks.{blocks[-1]}.1.transformer_blocks.0.norm1.bias"]
    std = torch.std(bias.float(), unbiased=False)
    return "v_prediction" if float(std) > V_MARKER_STD else "epsilon"


def detect(tensors: Tensors) -> Variant:
    """The family and variant of an original-layout file (a CheckpointError saying why not)."""
    name = tensors.path.name
    if tensors.count(UNET_PREFIX) <= _MIN_UNET_KEYS:
        found = ", ".join(sorted({k.split(".")[0] for k in tensors})[:6]) or "no tensors"
        raise CheckpointError(
            f"{name}: not a Stable Diffusion checkpoint in the original layout: expected the "
            f"UNet under '{UNET_PREFIX}', the VAE under 'first_stage_model.' and the text "
            f"encoder(s) under 'cond_stage_model.' or 'conditioner.'; found {found}"
        )
    for marker, what in UNSUPPORTED_MARKERS.items():
        if marker in tensors:
            raise CheckpointError(f"{name} is {what}, which nodegraph does not support yet")
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    if conv_in not in tensors:
        raise CheckpointError(f"{name}: the UNet has no input convolution ({conv_in})")
    in_channels = tensors.shape(conv_in)[1]
    proj_in = _first(tensors, "proj_in.weight")
    if proj_in is None:
        raise CheckpointError(f"{name}: the UNet has no attention blocks (no proj_in weights)")
    variant = _edm(tensors, _variant(tensors, in_channels, proj_in))
    reason = variant.unsupported()
    if reason is not None:
        raise CheckpointError(f"{name} is {reason}, which nodegraph does not support yet")
    return variant


def _edm(tensors: Tensors, variant: Variant) -> Variant:
    """The variant with its EDM sampling when the file marks one, as ComfyUI's SDXL.model_type:
    Playground 2.5 (`edm_mean` and `edm_std`: EDM, its own latent format) before CosXL
    (`edm_vpred.sigma_max`, optional `sigma_min`: v-prediction, sigma_data 1)."""
    playground = all(m in tensors for m in PLAYGROUND_MARKERS)
    if not playground and EDM_MAX not in tensors:
        return variant
    if variant.family.key not in EDM_FAMILIES:
        raise CheckpointError(
            f"{tensors.path.name} is an EDM {variant.family.label} checkpoint, which nodegraph "
            "does not support yet (only SDXL ones)"
        )
    if playground:
        return replace(variant, prediction="edm", edm=PLAYGROUND_SAMPLING,
                       latent_format=PLAYGROUND_2_5)  # fmt: skip
    sigma_min = float(tensors[EDM_MIN]) if EDM_MIN in tensors else EDM_SIGMA_MIN
    edm = EdmSampling("v_prediction", sigma_min, float(tensors[EDM_MAX]), EDM_SIGMA_DATA)
    return replace(variant, prediction="v_prediction", edm=edm)


def _unclip(tensors: Tensors) -> bool:
    """An SD 2.x unCLIP file: a class-label embedding with SD 2.x's text or image towers."""
    return any(tensors.count(p) > 0 for p in (UNCLIP_TOWER_PREFIX, UNCLIP_IMAGE_PREFIX))


def _variant(tensors: Tensors, in_channels: int, proj_in: str) -> Variant:
    has_label_emb = UNET_PREFIX + "label_emb.0.0.weight" in tensors
    if has_label_emb and len(tensors.shape(proj_in)) == 2 and _unclip(tensors):
        return Variant(FAMILIES["sd2"], _sd2_prediction(tensors), in_channels, unclip=True)
    if has_label_emb:
        family = _sdxl_family(tensors)
        prediction = "v_prediction" if "v_pred" in tensors else "epsilon"
        return Variant(family, prediction, in_channels, zero_snr="ztsnr" in tensors)
    if len(tensors.shape(proj_in)) == 2:
        family = FAMILIES["sd2"]
        prediction = _sd2_prediction(tensors) if in_channels == 4 else "epsilon"
        return Variant(family, prediction, in_channels)
    return Variant(FAMILIES["sd1"], "epsilon", in_channels)
