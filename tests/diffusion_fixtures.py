"""A tiny Stable Diffusion made in the test (random weights, a locally made tokenizer), the
diffusion node registry, and a writer of single-file checkpoints in the original SD key layout.

Import the fixtures into a test module by name: `from tests.diffusion_fixtures import tiny_sd`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import nodes.comfy
import nodes.conditioning
import nodes.images
import nodes.latents
import nodes.models
import nodes.resize
import nodes.sampling
import nodes.utility
from nodegraph.executor import Executor
from nodegraph.registry import Registry

TINY_NAME = "tiny-sd"
TINY_SIZE = 64
MAX_TOKENS = 24
DIFFUSION_MODULES = (
    nodes.models,
    nodes.conditioning,
    nodes.latents,
    nodes.sampling,
    nodes.images,
    nodes.resize,
    nodes.comfy,
    nodes.utility,
)


def diffusion_registry() -> Registry:
    reg = Registry()
    for module in DIFFUSION_MODULES:
        reg.register_module(module)
    return reg


def _byte_chars() -> list[str]:
    """The 256 printable characters CLIP's tokenizer maps bytes to."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tokenizer(folder: Path) -> None:
    """A character-level CLIP tokenizer: every byte alone and word-final, no merges."""
    letters = _byte_chars()
    vocab = [*letters, *(c + "</w>" for c in letters), "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_TOKENS,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def build_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random StableDiffusionPipeline (64x64 pictures, 8x8x4 latents) to `folder`."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    write_tokenizer(folder / "tokenizer_src")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_src"), local_files_only=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_SIZE,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder / TINY_NAME), safe_serialization=True)
    shutil.rmtree(folder / "tokenizer_src")
    return folder / TINY_NAME


def write_picture(path: Path, size: int = TINY_SIZE) -> Path:
    """A test picture: a red disc on blue, with a soft gradient."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.2 + 0.3 * x, 0.3 * y, 0.8 - 0.2 * x], -1)
    disc = (x - 0.5) ** 2 + (y - 0.45) ** 2 < 0.07
    img[disc] = (0.85, 0.15, 0.1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def one_thread() -> None:
    """Torch on one thread: these small models gain nothing from two, and on a busy 2-core
    machine two threads spin against each other (tens of times slower)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding the tiny model (as a models folder); the model is named TINY_NAME.

    Torch runs on one thread from here on (see `one_thread`)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    build_tiny_sd(root)
    nodes.models.use_model_dirs([root])
    return root


@pytest.fixture(scope="session")
def diffusion_executor(tiny_sd: Path) -> Executor:
    return Executor(diffusion_registry())


# --------------------------------------------------------------------------- single files


def _unet_to_ldm(sd: dict[str, torch.Tensor], layers: int, n_blocks: int) -> dict[str, Any]:
    """diffusers UNet2DConditionModel keys -> the original SD (ldm) layout."""
    resnet = {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "time_emb_proj": "emb_layers.1",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "conv_shortcut": "skip_connection",
    }
    renames = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for i in range(n_blocks):
        for j in range(layers):
            idx = i * (layers + 1) + j + 1
            renames[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{idx}.0"
            renames[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{idx}.1"
        renames[f"down_blocks.{i}.downsamplers.0.conv"] = (
            f"input_blocks.{(i + 1) * (layers + 1)}.0.op"
        )
        for j in range(layers + 1):
            idx = i * (layers + 1) + j
            renames[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{idx}.0"
            renames[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{idx}.1"
    renames["mid_block.resnets.0"] = "middle_block.0"
    renames["mid_block.attentions.0"] = "middle_block.1"
    renames["mid_block.resnets.1"] = "middle_block.2"
    out = {}
    for key, value in sd.items():
        new = None
        for i in range(n_blocks):  # the upsampler sits after the block's last resnet/attention
            prefix = f"up_blocks.{i}.upsamplers.0.conv"
            if key.startswith(prefix):
                idx = i * (layers + 1) + layers
                pos = 2 if any(k.startswith(f"up_blocks.{i}.attentions") for k in sd) else 1
                new = f"output_blocks.{idx}.{pos}.conv" + key[len(prefix) :]
        if new is None:
            for src in sorted(renames, key=len, reverse=True):
                if key.startswith(src + "."):
                    rest = key[len(src) + 1 :]
                    if ".resnets." in src or src.startswith("mid_block.resnets"):
                        name, _, tail = rest.partition(".")
                        rest = f"{resnet[name]}.{tail}"
                    new = f"{renames[src]}.{rest}"
                    break
        if new is None:
            raise KeyError(f"no original-layout name for unet key {key}")
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_ldm(sd: dict[str, torch.Tensor], n_blocks: int) -> dict[str, Any]:
    """diffusers AutoencoderKL keys -> the original SD (ldm) layout."""
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in sd.items():
        new = key
        for part in ("encoder", "decoder"):
            new = new.replace(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.")
            new = new.replace(f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.")
            new = new.replace(f"{part}.conv_norm_out.", f"{part}.norm_out.")
        if ".mid_block.attentions.0." in new:
            head, tail = new.split(".mid_block.attentions.0.")
            for src, dst in attn.items():
                if tail.startswith(src + "."):
                    tail = dst + tail[len(src) :]
            new = f"{head}.mid.attn_1.{tail}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        for i in range(n_blocks):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(
                f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."
            )
            j = n_blocks - 1 - i
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{j}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{j}.upsample.")
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        out["first_stage_model." + new] = value
    return out


def write_single_file(model_dir: Path, target: Path) -> Path:
    """Save the diffusers model in `model_dir` as one original-layout .safetensors `target`,
    with its local configuration folder `<stem>.config/` (no weights) beside it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", local_files_only=True)
    state: dict[str, torch.Tensor] = {}
    state.update(
        _unet_to_ldm(
            unet.state_dict(), unet.config.layers_per_block, len(unet.config.block_out_channels)
        )
    )
    state.update(_vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)))
    text = load_file(str(model_dir / "text_encoder" / "model.safetensors"))
    for key, value in text.items():  # the original layout nests them under text_model.
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    config = target.with_name(target.stem + ".config")
    for path in model_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".txt"):
            dest = config / path.relative_to(model_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
    return target
