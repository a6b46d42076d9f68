"""A tiny Stable Diffusion made in the test (random weights, a locally made tokenizer) and the
diffusion node registry. Tiny models of every family, as single files: tests.family_fixtures.

Import the fixtures into a test module by name: `from tests.diffusion_fixtures import tiny_sd`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nodes.loading.folders
from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodegraph.registry import Registry

TINY_NAME = "tiny-sd"
TINY_SIZE = 64
MAX_TOKENS = 24


def diffusion_registry() -> Registry:
    """Every node of the node library (nodes/ and its sub-packages)."""
    reg = Registry()
    reg.discover("nodes")
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
    nodes.loading.folders.use_model_dirs([root])
    return root


@pytest.fixture(scope="session")
def diffusion_executor(tiny_sd: Path) -> Executor:
    return Executor(diffusion_registry())


@pytest.fixture
def folder_settings(tmp_path: Path, models: Path) -> RunSettings:
    """Run settings on the CPU with the requesting module's `models` folder (its own fixture)."""
    opts = {"models": [str(models)], "device": "cpu"}
    return RunSettings(output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp", options=opts)


@pytest.fixture(scope="module")
def folder_executor(models: Path) -> Executor:
    """An executor of the node library, once the module's `models` folder is made."""
    return Executor(diffusion_registry())
