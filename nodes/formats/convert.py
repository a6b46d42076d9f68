"""Original-layout tensors into diffusers / transformers modules, built without random init.

Keys are renamed by diffusers' own single-file converters; the modules are created on the meta
device from the configs nodes.formats.configs infers and take the file's tensors as they are
(`assign`), so loading costs one read of the weights and no initialisation.
"""

from __future__ import annotations

from typing import Any

import torch

from .configs import _hf_root, text_config, unet_config, vae_config
from .detect import UNET_PREFIX, tower_prefix, vae_prefix
from .families import TowerSpec, Variant
from .tensors import CheckpointError, Tensors

POSITION_IDS = "embeddings.position_ids"
_OPEN_CLIP_PREFIX = "open_clip."  # any prefix but SD 2's: its converter drops layer 23 there


def _quiet() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Give a meta-device module its tensors; a CheckpointError when names or shapes disagree."""
    expected = module.state_dict().keys()
    state = {_spelled(k, expected): v for k, v in state.items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: the tensors do not fit the inferred model ({len(missing)} missing, e.g. "
            f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{what}: {str(exc).splitlines()[0]}") from exc
    embeddings = getattr(getattr(module, "text_model", module), "embeddings", None)
    if embeddings is not None and getattr(embeddings, "position_ids", None) is not None:
        positions = embeddings.position_embedding.weight.shape[0]
        embeddings.position_ids = torch.arange(positions).expand((1, -1))
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{what}: no weights for {left[:3]}")


def _spelled(key: str, expected: Any) -> str:
    """A text encoder key as the module spells it (with or without `text_model.`)."""
    for candidate in (key, "text_model." + key, key.removeprefix("text_model.")):
        if candidate in expected:
            return candidate
    return key


def build_unet(tensors: Tensors, variant: Variant) -> Any:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    _quiet()
    config = unet_config(tensors, variant)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    state = convert_ldm_unet_checkpoint(tensors.read(tensors.with_prefix(UNET_PREFIX)), unet.config)
    load_into(unet, state, f"{tensors.path.name} (UNet)")
    return unet


def build_vae(tensors: Tensors, variant: Variant | None, prefix: str | None = None) -> Any | None:
    """The file's VAE in the original layout under `prefix` (found when None; None if absent)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    prefix = vae_prefix(tensors) if prefix is None else prefix
    if prefix is None:
        return None
    _quiet()
    config = vae_config(tensors, prefix, variant)
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    checkpoint = tensors.read(tensors.with_prefix(prefix))
    if prefix != "first_stage_model.":
        checkpoint = {"first_stage_model." + k[len(prefix) :]: v for k, v in checkpoint.items()}
    state = convert_ldm_vae_checkpoint(checkpoint, vae.config)
    load_into(vae, state, f"{tensors.path.name} (VAE)")
    return vae


def build_tower(tensors: Tensors, spec: TowerSpec) -> Any | None:
    """The file's text encoder for one tower (None when the file lacks it)."""
    import transformers
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    prefix = tower_prefix(tensors, spec)
    if prefix is None:
        return None
    _quiet()
    config = transformers.CLIPTextConfig(**text_config(tensors, prefix, spec))
    cls = (
        transformers.CLIPTextModelWithProjection if spec.projection else transformers.CLIPTextModel
    )
    with torch.device("meta"):
        encoder = cls(config)
    raw = tensors.read(tensors.with_prefix(prefix))
    if spec.layout == "hf":
        root = _hf_root(tensors, prefix)
        state = {  # most files keep CLIP's position ids (0..76): not a weight, dropped
            k[len(root) :]: v
            for k, v in raw.items()
            if k.startswith(root) and not k.endswith(POSITION_IDS)
        }
        if spec.projection and prefix + "text_projection.weight" in raw:
            state["text_projection.weight"] = raw[prefix + "text_projection.weight"]
    else:
        renamed = {_OPEN_CLIP_PREFIX + k[len(prefix) :]: v for k, v in raw.items()}
        state = convert_open_clip_checkpoint(encoder, renamed, prefix=_OPEN_CLIP_PREFIX)
        if not spec.projection:
            state.pop("text_projection.weight", None)
    load_into(encoder, state, f"{tensors.path.name} (text encoder {spec.key.upper()})")
    return encoder


DIFFUSERS_VAE_MARKER = "decoder.up_blocks.0.resnets.0.norm1.weight"


def build_diffusers_vae(tensors: Tensors) -> Any:
    """A VAE file saved in diffusers' own key layout (AutoencoderKL's state dict)."""
    from diffusers import AutoencoderKL

    from .configs import diffusers_vae_config

    _quiet()
    with torch.device("meta"):
        vae = AutoencoderKL(**diffusers_vae_config(tensors))
    load_into(vae, tensors.read(list(tensors)), f"{tensors.path.name} (VAE)")
    return vae


def build_vae_file(tensors: Tensors) -> Any:
    """A stand-alone VAE file in any of the layouts users have (a CheckpointError if none)."""
    if DIFFUSERS_VAE_MARKER in tensors:
        return build_diffusers_vae(tensors)
    for prefix in ("", "first_stage_model.", "vae."):
        if prefix + "decoder.conv_in.weight" in tensors:
            return build_vae(tensors, None, prefix)
    raise CheckpointError(
        f"{tensors.path.name}: not a VAE: expected 'encoder.' and 'decoder.' tensors (original "
        "layout, optionally under 'first_stage_model.') or diffusers' AutoencoderKL layout"
    )
