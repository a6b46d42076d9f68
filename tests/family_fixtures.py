"""Tiny random-weight Stable Diffusion models of every family, written the ways users have them.

`build_pipeline(family, seed)` makes a diffusers pipeline whose sizes are tiny but whose
STRUCTURE follows the real family (block types, cross-attention widths, the SDXL time
embeddings, 9-channel inpainting and 8-channel InstructPix2Pix inputs, v-prediction, 32-group
GroupNorm everywhere), so a loader that infers architectures from tensor shapes sees every
family as it would see the real checkpoint. Two ways of writing it:

- `write_diffusers(family, folder)`: a diffusers folder (`save_pretrained`, safetensors);
- `write_single_file(family, path)`: ONE `.safetensors` file in the original CompVis/Stability
  (LDM/SGM) key layout: `model.diffusion_model.*`, `first_stage_model.*`, and the text towers
  under `cond_stage_model.*` (SD 1/2) or `conditioner.embedders.N.*` (SDXL), OpenCLIP towers in
  OpenCLIP's own names. `original_state_dict(pipe, family)` is the diffusers-to-original
  converter behind it (written here; diffusers only ships the other direction).

Sizes (all families): 64-px pictures, 8x8x4 latents (a 4-level VAE, downscale 8). The text
towers keep CLIP's real vocabulary (49408, the real BPE tokenizer of `nodes.formats.tokenizer`)
and 77 positions; OpenCLIP towers get a tokenizer copy that pads with "!" (id 0), as the real
SD2 tokenizer and SDXL's tokenizer_2 do.

`diffusers_folder(family)` and `single_file(family)` are cached variants writing into one
temporary folder per process, for tests that only read the files.
"""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

VOCAB = 49408
POSITIONS = 77
SD_SCALING, SDXL_SCALING = 0.18215, 0.13025

# --------------------------------------------------------------------------- the families


@dataclass(frozen=True)
class Tower:
    """One text encoder: its pipeline component, style and place in the original file."""

    component: str  # "text_encoder" / "text_encoder_2"
    tokenizer: str  # its tokenizer's component
    style: str  # "clip_l" (HF names, quick_gelu) or "open_clip" (OpenCLIP names, gelu)
    prefix: str  # the original file's prefix of the tower
    width: int
    layers: int  # diffusers' layer count
    projection: bool = False  # CLIPTextModelWithProjection (SDXL's pooled tower)
    extra_layers: int = 0  # resblocks the original holds beyond diffusers' (SD2: one)

    @property
    def heads(self) -> int:
        return max(1, self.width // 64)


@dataclass(frozen=True)
class Family:
    name: str
    pipeline: str  # the diffusers pipeline class
    unet: dict[str, Any]  # UNet2DConditionModel kwargs beyond the shared ones
    towers: tuple[Tower, ...]
    scheduler: str  # the diffusers scheduler class
    scheduler_config: dict[str, Any]
    vae_scaling: float
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    prediction_type: str = "epsilon"
    image_size: int = 64
    clip_vision_prefix: str | None = None
    """Where the file holds a CLIP image encoder (tests.clip_vision_fixtures' tiny one)."""

    @property
    def in_channels(self) -> int:
        return self.unet.get("in_channels", 4)


VAE_CHANNELS = (32, 64, 64, 64)  # 4 levels: downscale 8, as the real VAE (128, 256, 512, 512)
LATENT_SIZE = 8

CLIP_L = dict(style="clip_l", width=32, layers=2)
OPEN_CLIP_H = dict(style="open_clip", width=64, layers=2)
OPEN_CLIP_G = dict(style="open_clip", width=64, layers=2, projection=True)

_SD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    prediction_type="epsilon",
)
_SDXL_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    interpolation_type="linear",
    timestep_spacing="leading",
    use_karras_sigmas=False,
    prediction_type="epsilon",
)

_SD1_UNET = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8,  # diffusers' legacy name: SD1 has 8 HEADS in every block
    use_linear_projection=False,
    cross_attention_dim=CLIP_L["width"],
)
_SD2_UNET = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(1, 1),  # heads per block = max(1, channels // 64), legacy naming
    use_linear_projection=True,
    cross_attention_dim=OPEN_CLIP_H["width"],
)
UNCLIP_EMBED = 24  # the tiny CLIP vision encoder's projection (tests.clip_vision_fixtures)
_UNCLIP_UNET = dict(
    **_SD2_UNET,
    class_embed_type="projection",  # the image embedding and its noise level's, as SD 2.1 unCLIP
    projection_class_embeddings_input_dim=2 * UNCLIP_EMBED,
)
TIME_DIM = 8  # SDXL's addition_time_embed_dim (real: 256)
_SDXL_UNET = dict(
    block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(1, 1, 2),
    transformer_layers_per_block=(1, 1, 2),  # real: (1, 2, 10)
    use_linear_projection=True,
    cross_attention_dim=CLIP_L["width"] + OPEN_CLIP_G["width"],
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=6 * TIME_DIM + OPEN_CLIP_G["width"],
)
_REFINER_UNET = dict(
    block_out_channels=(32, 64, 128, 128),  # real: (384, 768, 1536, 1536)
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(1, 1, 2, 2),
    transformer_layers_per_block=2,  # real: 4
    use_linear_projection=True,
    cross_attention_dim=OPEN_CLIP_G["width"],
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=5 * TIME_DIM + OPEN_CLIP_G["width"],
)

_SD1_TOWERS = (
    Tower("text_encoder", "tokenizer", prefix="cond_stage_model.transformer.", **CLIP_L),
)
_SD2_TOWERS = (
    Tower("text_encoder", "tokenizer", prefix="cond_stage_model.model.", extra_layers=1,
          **OPEN_CLIP_H),
)  # fmt: skip
_SDXL_TOWERS = (
    Tower("text_encoder", "tokenizer", prefix="conditioner.embedders.0.transformer.", **CLIP_L),
    Tower("text_encoder_2", "tokenizer_2", prefix="conditioner.embedders.1.model.", **OPEN_CLIP_G),
)
_REFINER_TOWERS = (
    Tower("text_encoder_2", "tokenizer_2", prefix="conditioner.embedders.0.model.", **OPEN_CLIP_G),
)
_SDXL_KWARGS = dict(force_zeros_for_empty_prompt=True, add_watermarker=False)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd1", "StableDiffusionPipeline", _SD1_UNET, _SD1_TOWERS, "PNDMScheduler",
               _SD_SCHEDULER, SD_SCALING),
        Family("sd1_inpaint", "StableDiffusionInpaintPipeline", {**_SD1_UNET, "in_channels": 9},
               _SD1_TOWERS, "PNDMScheduler", _SD_SCHEDULER, SD_SCALING),
        Family("sd1_ip2p", "StableDiffusionInstructPix2PixPipeline",
               {**_SD1_UNET, "in_channels": 8}, _SD1_TOWERS, "PNDMScheduler", _SD_SCHEDULER,
               SD_SCALING),
        Family("sd2", "StableDiffusionPipeline", _SD2_UNET, _SD2_TOWERS, "PNDMScheduler",
               _SD_SCHEDULER, SD_SCALING),
        Family("sd2_v", "StableDiffusionPipeline", _SD2_UNET, _SD2_TOWERS, "DDIMScheduler",
               {**_SD_SCHEDULER, "prediction_type": "v_prediction"}, SD_SCALING,
               prediction_type="v_prediction"),
        Family("sd2_unclip", "StableDiffusionPipeline", _UNCLIP_UNET, _SD2_TOWERS,
               "DDIMScheduler", {**_SD_SCHEDULER, "prediction_type": "v_prediction"},
               SD_SCALING, prediction_type="v_prediction",
               clip_vision_prefix="embedder.model.visual."),
        Family("sdxl", "StableDiffusionXLPipeline", _SDXL_UNET, _SDXL_TOWERS,
               "EulerDiscreteScheduler", _SDXL_SCHEDULER, SDXL_SCALING, _SDXL_KWARGS),
        Family("sdxl_refiner", "StableDiffusionXLImg2ImgPipeline", _REFINER_UNET,
               _REFINER_TOWERS, "EulerDiscreteScheduler", _SDXL_SCHEDULER, SDXL_SCALING,
               dict(requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
                    add_watermarker=False)),
        Family("sdxl_ip2p", "StableDiffusionXLInstructPix2PixPipeline",
               {**_SDXL_UNET, "in_channels": 8}, _SDXL_TOWERS, "EulerDiscreteScheduler",
               _SDXL_SCHEDULER, SDXL_SCALING, _SDXL_KWARGS),
        Family("sdxl_inpaint", "StableDiffusionXLInpaintPipeline",
               {**_SDXL_UNET, "in_channels": 9}, _SDXL_TOWERS, "EulerDiscreteScheduler",
               _SDXL_SCHEDULER, SDXL_SCALING,
               dict(requires_aesthetics_score=False, **_SDXL_KWARGS)),
    )
}  # fmt: skip

IMAGE_SIZE: dict[str, int] = {name: f.image_size for name, f in FAMILIES.items()}
"""The picture size (pixels, square) of each family: UNet sample_size * the VAE's downscale."""

# SD2 768-v vs 512-eps, as ComfyUI tells them apart: the population std of this norm bias of
# the LAST output block holding attention is > 0.09 for v-prediction, < 0.09 for epsilon.
V_STD, EPS_STD = 0.2, 0.01


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}") from None


# --------------------------------------------------------------------------- building


@functools.cache
def _tokenizer(pad: str) -> Any:
    """The real CLIP BPE tokenizer, padding with `pad` ("<|endoftext|>" or OpenCLIP's "!")."""
    from transformers import CLIPTokenizer

    from nodes.formats.tokenizer import TOKENIZER_DIR, clip_tokenizer

    if pad == "<|endoftext|>":
        return clip_tokenizer()
    clip_tokenizer()  # raises TokenizerMissing with its advice when not installed
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True, pad_token=pad)


def _text_tower(tower: Tower) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=tower.width,
        intermediate_size=4 * tower.width,
        num_hidden_layers=tower.layers,
        num_attention_heads=tower.heads,
        max_position_embeddings=POSITIONS,
        hidden_act="quick_gelu" if tower.style == "clip_l" else "gelu",
        projection_dim=tower.width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0 if tower.style == "open_clip" else 49407,
    )
    cls = CLIPTextModelWithProjection if tower.projection else CLIPTextModel
    return cls(config).eval()


def _last_attention_up_block(unet: Any) -> Any:
    """The attention module of the last output block holding one (the v/eps marker's home)."""
    for block in reversed(unet.up_blocks):
        if getattr(block, "attentions", None):
            return block.attentions[-1]
    raise ValueError("no up block holds attention")


def _build(name: str, seed: int) -> Any:
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    fam = family(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=LATENT_SIZE,
            out_channels=4,
            layers_per_block=1,
            norm_num_groups=32,
            **{"in_channels": 4, **fam.unet},
        ).eval()
        marker = _last_attention_up_block(unet).transformer_blocks[0].norm1.bias
        std = V_STD if fam.prediction_type == "v_prediction" else EPS_STD
        with torch.no_grad():
            marker.copy_(torch.randn_like(marker) * std)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
            up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
            block_out_channels=VAE_CHANNELS,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=fam.image_size,
            scaling_factor=fam.vae_scaling,
        ).eval()
        parts: dict[str, Any] = {"text_encoder": None, "tokenizer": None}
        for tower in fam.towers:
            parts[tower.component] = _text_tower(tower)
            pad = "!" if tower.style == "open_clip" else "<|endoftext|>"
            parts[tower.tokenizer] = _tokenizer(pad)
    scheduler = getattr(diffusers, fam.scheduler).from_config(fam.scheduler_config)
    cls = getattr(diffusers, fam.pipeline)
    if fam.pipeline == "StableDiffusionXLInstructPix2PixPipeline":
        extra = {}
    elif fam.pipeline.startswith("StableDiffusionXL"):
        extra = {"image_encoder": None, "feature_extractor": None}
    else:
        extra = {
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
    return cls(vae=vae, unet=unet, scheduler=scheduler, **parts, **extra, **fam.pipeline_kwargs)


@functools.cache
def _cached_pipeline(name: str, seed: int) -> Any:
    return _build(name, seed)


def build_pipeline(family: str, seed: int = 0) -> Any:
    """A fresh float32 pipeline of `family` with random weights, the same for the same seed.

    Each call builds anew (a few tenths of a second; quicker than copying a cached one), so the
    caller may change or move it; the tokenizers are shared, don't change them."""
    return _build(family, seed)


def write_diffusers(family: str, folder: Path, seed: int = 0) -> Path:
    """Save the family's pipeline as a diffusers folder (safetensors); returns `folder`."""
    folder = Path(folder)
    _cached_pipeline(family, seed).save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_single_file(
    family: str, path: Path, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Save the family's pipeline as ONE original-layout .safetensors file (floats as `dtype`)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = original_state_dict(_cached_pipeline(family, seed), family, seed=seed)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


_TMP: list[Path] = []


def _tmp_root() -> Path:
    if not _TMP:
        root = Path(tempfile.mkdtemp(prefix="family-fixtures-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _TMP.append(root)
    return _TMP[0]


@functools.cache
def diffusers_folder(family: str, seed: int = 0) -> Path:
    """The family's diffusers folder, written once per process (read it, don't change it)."""
    return write_diffusers(family, _tmp_root() / f"{family}-{seed}", seed)


@functools.cache
def single_file(family: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """The family's original-layout file, written once per process (read it, don't change it)."""
    suffix = str(dtype).removeprefix("torch.")
    return write_single_file(
        family, _tmp_root() / f"{family}-{seed}-{suffix}.safetensors", seed, dtype
    )


# --------------------------------------------------------------------------- diffusers -> original

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_DIRECT = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet_name(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET[head]}.{tail}"


def unet_to_original(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel weights -> ldm's openaimodel names (no `model.diffusion_model.`).

    ldm numbers its input blocks 0 (conv_in), then per level `layers` resnet(+attention) blocks
    and, but for the last level, one downsampler block; output blocks count `layers + 1` per
    level, the upsampler riding in the level's last block after its resnet (and attention).
    """
    n = len(config.block_out_channels)
    layers = config.layers_per_block
    layers = [layers] * n if isinstance(layers, int) else list(layers)
    down_start = [1 + sum(x + 1 for x in layers[:i]) for i in range(n)]
    up_layers = layers[::-1]
    up_start = [sum(x + 1 for x in up_layers[:i]) for i in range(n)]
    up_attention = {i: t.startswith("CrossAttn") for i, t in enumerate(config.up_block_types)}
    patterns = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda i, j, r: f"input_blocks.{down_start[i] + j}.0.{_resnet_name(r)}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda i, j, r: f"input_blocks.{down_start[i] + j}.1.{r}"),
        (r"down_blocks\.(\d+)\.downsamplers\.(0)\.conv\.(.+)",
         lambda i, _, r: f"input_blocks.{down_start[i] + layers[i]}.0.op.{r}"),
        (r"mid_block\.()resnets\.(\d+)\.(.+)",
         lambda _, j, r: f"middle_block.{2 * j}.{_resnet_name(r)}"),
        (r"mid_block\.()attentions\.(0)\.(.+)", lambda _, j, r: f"middle_block.1.{r}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda i, j, r: f"output_blocks.{up_start[i] + j}.0.{_resnet_name(r)}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda i, j, r: f"output_blocks.{up_start[i] + j}.1.{r}"),
        (r"up_blocks\.(\d+)\.upsamplers\.(0)\.conv\.(.+)",
         lambda i, _, r: f"output_blocks.{up_start[i] + up_layers[i]}."
                         f"{2 if up_attention[i] else 1}.conv.{r}"),
    ]  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in _UNET_DIRECT:
            new = f"{_UNET_DIRECT[module]}.{param}"
        else:
            for pattern, rename in patterns:
                m = re.fullmatch(pattern, key)
                if m:
                    i, j, rest = m.groups()
                    new = rename(int(i) if i else 0, int(j), rest)
                    break
            else:
                raise KeyError(f"no original-layout name for unet key {key}")
        if new in out:
            raise KeyError(f"two unet keys map to {new}")
        out[new] = value
    return out


_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def vae_to_original(state: dict[str, torch.Tensor], n_levels: int) -> dict[str, torch.Tensor]:
    """AutoencoderKL weights -> ldm's names (no `first_stage_model.`).

    The decoder's levels count from the lowest resolution in diffusers, from the highest in
    ldm; the mid-block attention's linear layers are 1x1 convolutions there (4-D weights)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key.replace(".conv_norm_out.", ".norm_out.")
        new = re.sub(
            r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", new
        )
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(
            r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new
        )
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.",
            lambda m: (
                f"decoder.up.{n_levels - 1 - int(m[1])}."
                f"{'block' if m[2] == 'resnets' else 'upsample'}."
            ),
            new,
        )
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", new)
        if m:
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        if "_blocks." in new or "mid_block" in new:
            raise KeyError(f"no original-layout name for vae key {key}")
        out[new] = value
    return out


def open_clip_to_original(
    state: dict[str, torch.Tensor], generator: torch.Generator | None = None, extra_layers: int = 0
) -> dict[str, torch.Tensor]:
    """A CLIPTextModel(WithProjection) -> OpenCLIP's text tower names (no prefix).

    `text_projection` is stored as OpenCLIP's [width, projection] matrix (the transposed Linear
    weight); a tower without one (SD2's) gets a random [width, width] one, as the real SD2 file
    has a projection its UNet never uses. `extra_layers` random resblocks follow the real ones
    (SD2: diffusers drops OpenCLIP-H's last resblock, which SD2 never reads)."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    width = out["token_embedding.weight"].shape[1]
    if "text_projection.weight" in state:
        out["text_projection"] = state.pop("text_projection.weight").T.contiguous()
    else:
        out["text_projection"] = torch.randn(width, width, generator=generator) * width**-0.5
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for n in layers:
        src, dst = f"encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            qkv = [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            for a, b in names.items():
                out[f"{dst}{b}.{kind}"] = state.pop(f"{src}{a}.{kind}")
    if state:
        raise KeyError(f"no OpenCLIP name for text keys {sorted(state)}")
    last = f"transformer.resblocks.{layers[-1]}."
    for n in range(len(layers), len(layers) + extra_layers):
        for key in [k for k in out if k.startswith(last)]:
            ref = out[key]
            if key.endswith(("ln_1.weight", "ln_2.weight")):
                value = 1 + 0.02 * torch.randn(ref.shape, generator=generator)
            else:
                value = 0.02 * torch.randn(ref.shape, generator=generator)
            out[f"transformer.resblocks.{n}." + key[len(last) :]] = value.to(ref.dtype)
    return out


def original_state_dict(pipe: Any, family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The pipeline's weights in the original single-file layout of `family`.

    `seed` only seeds what the original has and diffusers lacks (SD2's unused last OpenCLIP
    resblock and text projection)."""
    fam = FAMILIES[family]
    out: dict[str, torch.Tensor] = {}
    unet = unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    out.update({"model.diffusion_model." + k: v for k, v in unet.items()})
    vae = vae_to_original(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels))
    out.update({"first_stage_model." + k: v for k, v in vae.items()})
    generator = torch.Generator().manual_seed(10_007 + seed)
    for tower in fam.towers:
        state = getattr(pipe, tower.component).state_dict()
        if tower.style == "clip_l":  # HF names, nested under text_model. as in real files
            if any(k.startswith("text_projection") for k in state):
                raise ValueError("a CLIP-L tower of the SD families has no projection")
            text = {"text_model." + k.removeprefix("text_model."): v for k, v in state.items()}
        else:
            text = open_clip_to_original(state, generator, tower.extra_layers)
        out.update({tower.prefix + k: v for k, v in text.items()})
    if fam.clip_vision_prefix is not None:
        from tests.clip_vision_fixtures import tiny_state, to_openclip

        out.update(to_openclip(tiny_state(seed), fam.clip_vision_prefix))
    return {k: v.detach().clone() for k, v in out.items()}
