#!/usr/bin/env python
"""Train nodegraph's own small text-to-image latent diffusion model on generated shapes data.

Stages, each seeded, checkpointed (with optimizer state) under ``--run-dir`` and resumed from
its latest checkpoint when the script is run again:

1. ``vae``: an ``AutoencoderKL`` with Stable Diffusion's geometry (8x downsampling, 4 latent
   channels), trained on freshly drawn pictures; then ``scaling_factor`` = 1 / std of latents.
2. ``latents``: a fixed data set of drawn pictures is encoded once (mean and std of each
   latent), so the diffusion stage never runs the VAE; so are their recoloured twins (same
   shape and place, another foreground colour).
3. ``unet``: a ``CLIPTextModel`` (tiny) and a ``UNet2DConditionModel`` trained together
   (epsilon prediction, scaled-linear betas 0.0005 .. 0.007, min-SNR weighting, 10% caption
   dropout, wrong captions at low noise and recoloured-twin inputs at mid to high noise for
   img2img).
   After each checkpoint the weights are exported as a diffusers folder (default
   ``nodes/shipped_model``) and quickly evaluated with the analytic checker.
   ``tune`` (recolour tuning) then continues from the last UNet checkpoint for a few minutes
   with more recoloured twins, most of them blended with the picture, for img2img, and
   offset noise, so that text-to-image from pure noise takes its colours from the caption.
4. ``decoder``: the VAE decoder alone is fine-tuned on whole pictures (edge-weighted loss),
   the latent space left as it is; then the final export.

Usage::

    .venv/bin/python tools/train_model.py --budget-minutes 72 --tune-minutes 15 --decoder-minutes 30
    .venv/bin/python tools/train_model.py --resume-from-shipped  # continue from shipped weights
    .venv/bin/python tools/train_model.py --smoke --run-dir /tmp/x --export-dir /tmp/x/model
    .venv/bin/python tools/train_model.py --resolution 64 --run-dir runs/shapes64  # 8x8 latents
    .venv/bin/python tools/train_model.py --evaluate nodes/shipped_model
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import shapes  # noqa: E402

SHIPPED_DIR = ROOT / "nodes" / "shipped_model"
DEFAULT_RUN_DIR = ROOT / "runs" / "shapes128"
VAE_CROP = 32  # the VAE trains mostly on crops this size, whatever the resolution
MAX_TOKENS = 16  # the text encoder's context; captions take 9 with start / end tokens
TEXT_WIDTH = 64
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

PREDICTIONS = ("epsilon", "v_prediction")
SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


@dataclass
class Recolour:
    """When the noisy input is made from the picture's recoloured twin.

    For t in ``t_from .. t_until``, with probability ``probability``, the noisy input is made
    from the picture's recoloured twin (same shape and place, another foreground colour) while
    the target stays the picture: at those noise levels the model learns that the foreground
    colour it sees is unreliable and the layout is not, so img2img towards another colour
    recolours the shape where it is instead of drawing it anew elsewhere.
    """

    probability: float = 0.3
    t_from: int = 535
    t_until: int = 999
    # Share of the twin inputs that are a blend of twin and picture (weight of the twin uniform
    # in 0..1) rather than the whole twin. `bench/img2img_trace.py` shows why: the first img2img
    # step keeps the shape in place, but on 8x8 latents the way from one colour to another
    # passes through an almost invisible shape (red to green over blue fades out half way), and
    # the next steps, seeing a faint blob in the noise, redraw it elsewhere.
    blend: float = 0.0
    # Whether a twin may come with the empty caption (caption dropout). Without a caption there
    # is no colour to recolour towards; kept out, the unconditional branch learns to keep the
    # input as it is, so classifier-free guidance pushes further towards the caption's colour.
    uncaptioned: bool = True


@dataclass
class Tuning:
    """Recolour tuning: after the UNet stage, ``steps`` more with more twins (most blended) and
    offset noise.

    Its own checkpoints under ``tune/``, a fresh optimizer, lr with warm-up and cosine decay.
    The shipped model had 732 steps in its 15 minutes, and its quick evaluation (all three
    right) rose from 77 to 96 %; centroid shift 0.010 / 0.025 / 0.033 at strength 0.4 / 0.5 /
    0.6 after it. On the earlier 64x64 model it took the shift from 0.060 / 0.069 / 0.086 to
    0.047 / 0.055 / 0.073.
    """

    steps: int = 1100
    lr: float = 3e-4
    warmup: int = 50
    recolour: Recolour = field(
        default_factory=lambda: Recolour(0.5, 473, 999, blend=0.75, uncaptioned=False)
    )
    # Offset noise (Guttenberg 2023): std of a per-sample, per-channel constant added to the
    # noise, so the noise's mean colour no longer tells the picture's colours, as pure noise at
    # strength 1 does not. Without it (s128) the last timestep's 21 % of signal taught the
    # model to read colours from the noise: txt2img drew "a green circle on a blue background"
    # dark in 6 of 16 seeds. 0.2 gave 31 of 32 of the bench's strength-1 pictures the prompt's
    # colour, 0.3 all 32.
    noise_offset: float = 0.3


@dataclass
class Plan:
    """Sizes and step counts of one run."""

    seed: int = 0
    # Pictures are this square size, the latents 1/8 of it. 64 (8x8 latents, a UNet level
    # less) learns captions about twice as fast, but img2img shapes move by up to half a
    # latent cell: centroid shift 0.073 at strength 0.6, against 0.033 at 128.
    resolution: int = 128
    vae_steps: int = 1100
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_ckpt_every: int = 500
    vae_full_fraction: float = 0.15  # the last part of the VAE steps sees whole pictures
    # Latent channels 0-2 are pulled towards `vae_align_gain` x the 8x8-pooled colours, so the
    # latent space keeps the picture's colour geometry: two foreground colours then differ
    # from the background in the same direction, and img2img can recolour a shape in place
    # instead of finding a shifted shape closer in latent distance. Off by default: at 0.5 it
    # raised the recolour geometry from 0.76 to 0.98 but the UNet then drew lobed shapes
    # (shape accuracy 0.61 against 0.86 at step 3000) and img2img shapes moved about as much.
    vae_align: float = 0.0
    vae_align_gain: float = 2.0
    latent_images: int = 168 * 360
    decoder_steps: int = 3000  # decoder fine-tuning on whole pictures, encoder frozen
    decoder_batch: int = 16
    decoder_lr: float = 5e-4
    decoder_ckpt_every: int = 250
    unet_steps: int = 6000
    unet_batch: int = 128
    unet_lr: float = 1e-3
    unet_warmup: int = 300
    unet_ckpt_every: int = 600
    caption_dropout: float = 0.1
    # At low noise a wrong caption replaces the right one with probability
    # mismatch_max * (1 - t / mismatch_until): the model learns to trust a clear picture over
    # the text, so img2img at low strength keeps the picture even with CFG.
    mismatch_max: float = 0.5
    mismatch_until: int = 658
    # Recoloured twins in the main UNet stage (see Recolour). On the 64x64 model, 0.3 over t
    # 400-850 (the same signal-to-noise ratios as 535-999 here) gave centroid shift 0.060 /
    # 0.069 / 0.086 at strength 0.4 / 0.5 / 0.6 (without it 0.059 / 0.127 / 0.144) and better
    # txt2img shapes; 0.5 broke strong strengths (prompt colour in about half the outputs at
    # 0.8), both from scratch over t 400-850 and as a continuation over t 300-900.
    recolour: Recolour = field(default_factory=Recolour)
    tune: Tuning = field(default_factory=Tuning)
    min_snr_gamma: float = 5.0
    # The noise schedule: scaled-linear betas, 2.7x the signal-to-noise ratio of Stable
    # Diffusion's 0.00085 .. 0.012 at t 599, where strength 0.6 starts (the twins' and caption
    # mismatch's timesteps sit at the ratios SD's betas had at 400-850 and 500). At 128, in
    # the same time budget (4177 steps against 3853 on a slower day), txt2img came out better
    # than with SD's betas (colour 93.5 % against 88.5 %, background 93 % against 86.5 %) and
    # shapes moved less (shift 0.027 against 0.061 at strength 0.6). At 64 it only moved the
    # colour's flip from strength 0.4 to 0.5: shift 0.018 / 0.072 / 0.073 at 0.4 / 0.5 / 0.6.
    beta_start: float = 0.0005
    beta_end: float = 0.007
    # Lin et al. 2023: betas rescaled so the last timestep holds none of the picture (its
    # alpha_bar is set to 2**-24, as diffusers' Euler does, so sigmas stay finite), with
    # "v_prediction", which that needs. Written into the scheduler config as trained_betas, so
    # every sampler (Heun too, which has no rescale option) runs it. Measured at 128 in the
    # shipped model's budget (runs/z128): strength 1 took the prompt's colour in 32 of 32, but
    # txt2img shapes were 77.5 % right (blobby, centred) and the shift at 0.6 was 0.062, so
    # offset noise in the tuning fixed strength 1 instead.
    zero_terminal_snr: bool = False
    prediction: str = "epsilon"  # one of PREDICTIONS
    eval_captions: int = 56  # quick evaluations spread over every shape and colour

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            vae_steps=4, vae_batch=4, vae_ckpt_every=2, latent_images=168, decoder_steps=2,
            decoder_batch=2, decoder_ckpt_every=1, unet_steps=4,
            unet_batch=8, unet_warmup=2, unet_ckpt_every=2, tune=Tuning(steps=2, warmup=1),
            eval_captions=4,
        )


def scheduler_config(plan: Plan) -> dict:
    """The model's scheduler config: SCHEDULER_CONFIG with the plan's noise schedule."""
    config = {**SCHEDULER_CONFIG, "beta_start": plan.beta_start, "beta_end": plan.beta_end,
              "prediction_type": plan.prediction}
    if plan.zero_terminal_snr:
        config["trained_betas"] = zero_terminal_snr_betas(plan.beta_start, plan.beta_end)
    return config


def zero_terminal_snr_betas(beta_start: float, beta_end: float, steps: int = 1000) -> list[float]:
    """Scaled-linear betas rescaled to a zero terminal SNR, the last alpha_bar kept at 2**-24."""
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    betas = rescale_zero_terminal_snr(betas)
    alpha_bar = torch.cumprod(1 - betas, 0)
    betas[-1] = 1 - 2.0**-24 / alpha_bar[-2]
    return betas.tolist()


def set_plan_field(plan: Plan, setting: str) -> None:
    """Apply one ``FIELD=VALUE`` (nested with dots: ``tune.lr=5e-4``), typed as the field is."""
    path, sep, value = setting.partition("=")
    if not sep:
        raise SystemExit(f"--plan {setting!r}: expected FIELD=VALUE")
    target, parts = plan, path.split(".")
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target)]
        if part not in names:
            raise SystemExit(f"--plan {setting!r}: {part!r} is not one of {', '.join(names)}")
        if depth < len(parts) - 1:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise SystemExit(f"--plan {setting!r}: {part} has no fields of its own")
    name = parts[-1]
    current = getattr(target, name)
    if dataclasses.is_dataclass(current):
        raise SystemExit(f"--plan {setting!r}: {path} has fields of its own; set one of them")
    kind = type(current)
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise SystemExit(f"--plan {setting!r}: {value!r} is not true or false")
        setattr(target, name, value.lower() in ("true", "1"))
        return
    try:
        setattr(target, name, kind(value))
    except ValueError:
        raise SystemExit(f"--plan {setting!r}: {value!r} is not a valid {kind.__name__}") from None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- tokenizer


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one word (characters, the last one with ``</w>``), greedy by merge rank."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((parts[i], parts[i + 1]), math.inf), i) for i in range(len(parts) - 1)]
        rank, i = min(pairs)
        if rank == math.inf:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _byte_characters() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255 (GPT-2 / CLIP)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def build_tokenizer(folder: Path, words: list[str] | None = None) -> Path:
    """Write a word-level tokenizer in CLIP's vocab.json / merges.txt format to ``folder``.

    The vocabulary holds CLIP's 256 byte characters (alone and word-final, so any text still
    tokenizes, unknown words letter by letter), one token per known word, and the merges that
    build each known word from its letters; the two CLIP special tokens come last.
    """
    words = words or shapes.caption_words()
    letters = _byte_characters()
    vocab: list[str] = [*letters, *(c + "</w>" for c in letters)]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        parts = _bpe(word, ranks)  # what the merges so far make of it
        while len(parts) > 1:  # join left to right with new merges, ranked after all others
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            joined = parts[0] + parts[1]
            if joined not in vocab:
                vocab.append(joined)
            parts = [joined, *parts[2:]]
    vocab += [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, indent=1))
    lines = ["#version: 0.2 - word-level merges for nodegraph's shapes model"]
    lines += [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_TOKENS,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return folder


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids exactly as StableDiffusionPipeline makes them (padded to the max length)."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids


# --------------------------------------------------------------------------- models


def make_vae(resolution: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=resolution,
    )


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=TEXT_WIDTH * 2,
        projection_dim=TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def make_unet(resolution: int):
    """Cross-attention at the 8x8 and 4x4 latent levels; each doubling of the latents above
    8x8 adds a plain level in front with half the channels."""
    from diffusers import UNet2DConditionModel

    extra = int(math.log2(resolution // 64))
    return UNet2DConditionModel(
        sample_size=resolution // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D",) * extra + ("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",) * extra,
        block_out_channels=tuple(64 >> k for k in range(extra, 0, -1)) + (64, 128),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,  # diffusers reads this as the number of heads
        norm_num_groups=32,
    )


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- export


def _replace_tree(src: Path, dst: Path) -> None:
    """Copy every file of ``src`` over ``dst``, each one replaced atomically."""
    for path in sorted(src.rglob("*")):
        if path.is_dir():
            continue
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)


def export_pipeline(
    folder: Path, vae, text_encoder, unet, tokenizer_dir: Path, state: dict, scheduler: dict,
    fp16: bool = True,
) -> Path:
    """Write a StableDiffusionPipeline folder (no safety checker) with the given components."""
    import copy

    folder = Path(folder)
    with tempfile.TemporaryDirectory(dir=folder.parent if folder.parent.exists() else None) as td:
        tmp = Path(td)
        dtype = torch.float16 if fp16 else torch.float32
        for name, model in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet)):
            # transformers loads weights in their saved dtype (diffusers upcasts to float32), so
            # the 0.1 M-param text encoder stays float32 to keep a plain from_pretrained working.
            clone = copy.deepcopy(model).to(torch.float32 if name == "text_encoder" else dtype)
            clone.save_pretrained(tmp / name, safe_serialization=True)
            del clone
        shutil.copytree(tokenizer_dir, tmp / "tokenizer", dirs_exist_ok=True)
        (tmp / "scheduler").mkdir()
        sched = dict(scheduler)
        sched["_diffusers_version"] = _diffusers_version()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2) + "\n")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": _diffusers_version(),
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", scheduler["_class_name"]],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "training_state.json").write_text(json.dumps(state, indent=2) + "\n")
        folder.mkdir(parents=True, exist_ok=True)
        _replace_tree(tmp, folder)
    return folder


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def load_pipeline(folder: Path, scheduler: str = "euler"):
    """The exported folder as a float32 StableDiffusionPipeline with the named sampler."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder), local_files_only=True, torch_dtype=torch.float32
    )
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_scheduler(name: str, config):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
    )

    classes = {
        "euler": EulerDiscreteScheduler,
        "euler_ancestral": EulerAncestralDiscreteScheduler,
        "ddim": DDIMScheduler,
        "dpmpp_2m": DPMSolverMultistepScheduler,
        "heun": HeunDiscreteScheduler,
    }
    return classes[name].from_config(config)


# --------------------------------------------------------------------------- evaluation


def to_model_images(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in -1..1."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in -1..1 -> (N, H, W, 3) uint8."""
    x = (images.clamp(-1, 1) + 1) * 127.5
    return x.round().byte().permute(0, 2, 3, 1).cpu().numpy()


def grade(images: list[np.ndarray] | np.ndarray, captions: list[str]) -> dict[str, float]:
    """Accuracies of colour, background, shape and all three together over pictures."""
    hits = {"colour": 0, "background": 0, "shape": 0, "all": 0}
    for image, caption in zip(images, captions, strict=True):
        got = shapes.check_caption(image, caption)
        for key in ("colour", "background", "shape"):
            hits[key] += got[key]
        hits["all"] += all(got.values())
    return {k: v / len(captions) for k, v in hits.items()}


def eval_captions(n: int, offset: int = 0) -> list[str]:
    """``n`` captions spread evenly over the combinations (every shape and colour even when
    ``n`` is under 168), shifted by ``offset`` so that successive evaluations vary."""
    combos = shapes.all_captions()
    stride = max(1, len(combos) // n)
    return [combos[(offset + i * stride) % len(combos)] for i in range(n)]


@torch.no_grad()
def evaluate_txt2img(
    pipe, captions: list[str], steps: int = 20, cfg: float = 7.5, seed: int = 1234,
    batch: int = 84,
) -> tuple[dict[str, float], list[np.ndarray]]:
    images: list[np.ndarray] = []
    for i in range(0, len(captions), batch):
        chunk = captions[i : i + batch]
        gen = torch.Generator().manual_seed(seed + i)
        out = pipe(
            chunk, num_inference_steps=steps, guidance_scale=cfg, generator=gen,
            output_type="np",
        ).images
        images += list((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))
    return grade(images, captions), images


@torch.no_grad()
def evaluate_img2img(
    pipe, n: int = 32, strengths=(0.2, 0.4, 0.6, 0.8), steps: int = 20, cfg: float = 7.5,
    seed: int = 99,
) -> dict[str, dict[str, float]]:
    """Re-prompt drawn pictures with another foreground colour at several strengths."""
    from diffusers import StableDiffusionImg2ImgPipeline

    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(seed)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    inputs, prompts, truths = [], [], []
    for k in range(n):
        sample = shapes.generate_sample(int(rng.integers(0, 10**6)), 777, resolution)
        options = [c for c in shapes.COLOURS if c not in (sample.colour, sample.background)]
        new = options[int(rng.integers(0, len(options)))]
        inputs.append(Image.fromarray(sample.image))
        prompts.append(shapes.make_caption(sample.shape, new, sample.background))
        truths.append((sample, new))
        del k
    results = {}
    for strength in strengths:
        gen = torch.Generator().manual_seed(seed)
        out = i2i(
            prompts, image=inputs, strength=strength, num_inference_steps=steps,
            guidance_scale=cfg, generator=gen, output_type="np",
        ).images
        follow = kept_shape = moved = distance = 0.0
        for image, (sample, new) in zip(out, truths, strict=True):
            pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
            distance += float(np.abs(pixels.astype(np.float32) - sample.image).mean() / 255.0)
            res = shapes.check_image(pixels)
            follow += res.colour == new
            kept_shape += res.shape == sample.shape
            if res.centroid is not None:
                src = shapes.check_image(sample.image).centroid
                moved += math.dist(res.centroid, src)
            else:
                moved += 0.5
        results[f"{strength:.1f}"] = {
            "colour_follows_prompt": follow / n,
            "shape_kept": kept_shape / n,
            "centroid_shift": moved / n,
            "pixel_distance": distance / n,
        }
    return results


def image_grid(images: list[np.ndarray], cols: int = 8) -> Image.Image:
    h, w = images[0].shape[:2]
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * w, rows * h), (128, 128, 128))
    for i, im in enumerate(images):
        grid.paste(Image.fromarray(im), ((i % cols) * w, (i // cols) * h))
    return grid


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("ckpt_*.pt"))
    return found[-1] if found else None


def save_checkpoint(folder: Path, step: int, payload: dict, keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt_{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    payload = {
        **payload, "step": step, "torch_rng": torch.get_rng_state(),
    }
    torch.save(payload, tmp)
    os.replace(tmp, path)
    for old in sorted(folder.glob("ckpt_*.pt"))[:-keep]:
        old.unlink()
    return path


def lr_at(
    step: int, base: float, warmup: int, total: int, floor: float = 0.05, progress: float = 0.0
) -> float:
    """Linear warm-up, then cosine decay to ``floor * base``.

    The decay follows the larger of ``step / total`` and ``progress`` (the fraction of a
    time budget used), so a run on a busy machine still ends with a decayed learning rate.
    """
    if step < warmup:
        return base * (step + 1) / warmup
    progress = max(progress, (step - warmup) / max(1, total - warmup))
    progress = min(1.0, progress)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------- stage 1: VAE


def train_vae(plan: Plan, run_dir: Path):
    vae = make_vae(plan.resolution)
    folder = run_dir / "vae"
    final = folder / "final.pt"
    if final.exists():
        payload = torch.load(final, weights_only=False)
        vae.load_state_dict(payload["model"])
        vae.config.scaling_factor = payload["scaling_factor"]
        vae.register_to_config(scaling_factor=payload["scaling_factor"])
        log(f"vae: done earlier (psnr {payload['psnr']:.2f} dB, "
            f"scaling_factor {payload['scaling_factor']:.4f})")
        return vae
    opt = torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, weight_decay=0.0)
    start = 0
    ckpt = latest_checkpoint(folder)
    if ckpt is not None:
        payload = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["torch_rng"])
        start = payload["step"]
        log(f"vae: resumed from {ckpt} at step {start}")
    log(f"vae: {n_params(vae) / 1e6:.3f} M params, {plan.vae_steps} steps of {plan.vae_batch}")
    vae.train()
    t0, seen, loss_avg = time.time(), 0, None
    for step in range(start, plan.vae_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, plan.vae_lr, 100, plan.vae_steps)
        res = plan.resolution
        cropped = step < plan.vae_steps * (1 - plan.vae_full_fraction)  # cheap crops first
        # whole pictures cost as much per step as at 64x64: fewer of them at larger sizes
        batch = plan.vae_batch if cropped else max(1, plan.vae_batch * 64**2 // res**2)
        images, _ = shapes.generate_batch(step * plan.vae_batch, batch, plan.seed + 1, res)
        x = to_model_images(images)
        if cropped:
            ox, oy = (int(v) for v in torch.randint(0, res - VAE_CROP + 1, (2,)))
            x = x[:, :, oy : oy + VAE_CROP, ox : ox + VAE_CROP]
        post = vae.encode(x).latent_dist
        z = post.sample()
        rec = vae.decode(z).sample
        rec_loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        kl = post.kl().mean() / z[0].numel()
        loss = rec_loss + 1e-4 * kl
        if plan.vae_align:
            target = plan.vae_align_gain * F.avg_pool2d(x, 8)
            loss = loss + plan.vae_align * F.mse_loss(post.mean[:, :3], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        seen += len(x)
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        done = step + 1
        if done % 50 == 0 or done == plan.vae_steps:
            rate = seen / (time.time() - t0)
            log(f"vae step {done}/{plan.vae_steps} loss {loss_avg:.4f} kl {kl.item():.3f} "
                f"{rate:.0f} img/s")
        if done % plan.vae_ckpt_every == 0 and done < plan.vae_steps:
            payload = {"model": vae.state_dict(), "optimizer": opt.state_dict()}
            save_checkpoint(folder, done, payload)
            log(f"vae step {done}: recolour geometry {recolour_geometry(vae, plan.resolution):.3f}")
    vae.eval()
    psnr, std, mean = measure_vae(vae, plan, n=32 if plan.vae_steps < 10 else 512)
    vae.register_to_config(scaling_factor=float(1.0 / std))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": vae.state_dict(), "scaling_factor": float(1.0 / std), "psnr": psnr,
         "latent_mean": mean},
        final,
    )
    geometry = recolour_geometry(vae, plan.resolution)
    log(f"vae: psnr {psnr:.2f} dB on held-out pictures; latent std {std:.4f} mean {mean:.4f} "
        f"-> scaling_factor {1.0 / std:.4f}; recolour geometry {geometry:.3f}")
    return vae


@torch.no_grad()
def measure_vae(vae, plan: Plan, n: int = 512) -> tuple[float, float, float]:
    """PSNR on held-out pictures and the std / mean of their latents."""
    n = min(n, plan.latent_images)
    images, _ = shapes.generate_batch(0, n, plan.seed + 999, plan.resolution)
    x = to_model_images(images)
    zs, mse = [], 0.0
    for i in range(0, n, 128):
        z = vae.encode(x[i : i + 128]).latent_dist.sample()
        rec = vae.decode(z).sample.clamp(-1, 1)
        mse += F.mse_loss((rec + 1) / 2, (x[i : i + 128] + 1) / 2, reduction="sum").item()
        zs.append(z)
    z = torch.cat(zs)
    psnr = 10 * math.log10(1.0 / (mse / x.numel()))
    return psnr, float(z.std()), float(z.mean())


def _recolour_choices(codes: torch.Tensor) -> torch.Tensor:
    """For codes indexed (background, foreground colour, place: centred or shifted, features):
    for each background and pair of colours a != b, whether a centred lies closer to b centred
    than to b shifted."""
    kept = []
    n_bg, n_fg = codes.shape[:2]
    for b in range(n_bg):
        for i in range(n_fg):
            for j in range(n_fg):
                if i != j:
                    same = (codes[b, i, 0] - codes[b, j, 0]).norm()
                    moved = (codes[b, i, 0] - codes[b, j, 1]).norm()
                    kept.append(bool(same < moved))
    return torch.tensor(kept)


@torch.no_grad()
def recolour_geometry(vae, resolution: int, shift: float = 0.15) -> float:
    """Of the (background, colour a, colour b) triples where a circle of colour a is closer in
    pixels to a circle of colour b at the same place than to one shifted by ``shift`` of the
    width, the share where that also holds between their latents.

    Below 1, the ideal denoiser prefers moving a shape to recolouring it in place where pixels
    would not (img2img drifts); the VAE stage's latent-colour alignment (`vae_align`) raises it.
    """
    colours = list(shapes.PALETTE)
    pictures = [
        shapes.draw_shape("circle", fg, bg, resolution, centre, size=0.4, colour_jitter=0)
        for bg in colours for fg in colours if fg != bg
        for centre in ((0.5, 0.5), (0.5 + shift, 0.5))
    ]
    x = to_model_images(np.stack(pictures))
    shape = (len(colours), len(colours) - 1, 2, -1)
    in_pixels = _recolour_choices(x.flatten(1).view(shape))
    in_latents = _recolour_choices(vae.encode(x).latent_dist.mean.flatten(1).view(shape))
    return float(in_latents[in_pixels].float().mean())


# --------------------------------------------------------------------------- stage 2: latents


def _cached(path: Path, count: int, what: str) -> dict | None:
    """A latent cache saved earlier, if it holds `count` pictures."""
    if path.exists():
        data = torch.load(path, weights_only=False)
        if len(data["mean"]) == count:
            log(f"{what}: {count} cached")
            return data
    return None


@torch.no_grad()
def cache_latents(vae, plan: Plan, run_dir: Path, tokenizer) -> dict:
    path = run_dir / "latents.pt"
    cached = _cached(path, plan.latent_images, "latents")
    if cached is not None:
        return cached
    t0 = time.time()
    means, stds, combo = [], [], []
    for i in range(0, plan.latent_images, 256):
        count = min(256, plan.latent_images - i)
        images, _ = shapes.generate_batch(i, count, plan.seed + 2, plan.resolution)
        post = vae.encode(to_model_images(images)).latent_dist
        means.append(post.mean.half())
        stds.append(post.std.half())
        combo += [(i + k) % shapes.NUM_COMBINATIONS for k in range(count)]
    data = {
        "mean": torch.cat(means),
        "std": torch.cat(stds),
        "combo": torch.tensor(combo),
        "input_ids": tokenize(tokenizer, shapes.all_captions()),
        "empty_ids": tokenize(tokenizer, [""])[0],
    }
    torch.save(data, path)
    log(f"latents: encoded {plan.latent_images} pictures in {time.time() - t0:.0f} s")
    return data


@torch.no_grad()
def cache_twins(vae, plan: Plan, run_dir: Path) -> dict:
    """Latents of each cached picture's recoloured twin (another foreground colour, seeded)."""
    path = run_dir / "twins.pt"
    cached = _cached(path, plan.latent_images, "twins")
    if cached is not None:
        return cached
    t0 = time.time()
    rng = np.random.default_rng(plan.seed + 7)
    means, stds = [], []
    for i in range(0, plan.latent_images, 256):
        pictures = []
        for index in range(i, min(i + 256, plan.latent_images)):
            _, colour, background = shapes.combination(index)
            others = [c for c in shapes.PALETTE if c not in (colour, background)]
            twin = shapes.generate_sample(
                index, plan.seed + 2, plan.resolution, colour=str(rng.choice(others))
            )
            pictures.append(twin.image)
        post = vae.encode(to_model_images(np.stack(pictures))).latent_dist
        means.append(post.mean.half())
        stds.append(post.std.half())
    data = {"mean": torch.cat(means), "std": torch.cat(stds)}
    torch.save(data, path)
    log(f"twins: encoded {plan.latent_images} recoloured pictures in {time.time() - t0:.0f} s")
    return data


# --------------------------------------------------------------------------- stage 2b: decoder


def finetune_decoder(
    plan: Plan, run_dir: Path, vae, data: dict, budget_minutes: float | None
) -> bool:
    """Sharpen the VAE decoder on whole pictures with the encoder (so the latent space) frozen.

    It reads the cached latents and redraws their pictures, so it never runs the encoder, and
    it can run before, during or after the UNet stage: the UNet never sees the decoder.
    Returns whether it trained now (False: it had finished earlier).
    """
    folder = run_dir / "decoder"
    final = folder / "final.pt"
    if final.exists():
        payload = torch.load(final, weights_only=False)
        vae.decoder.load_state_dict(payload["decoder"])
        vae.post_quant_conv.load_state_dict(payload["post_quant_conv"])
        log(f"decoder: done earlier (psnr {payload['psnr']:.2f} dB)")
        return False
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(params, lr=plan.decoder_lr, weight_decay=0.0)
    start, spent = 0, 0.0
    ckpt = latest_checkpoint(folder)
    if ckpt is not None:
        payload = torch.load(ckpt, weights_only=False)
        vae.decoder.load_state_dict(payload["decoder"])
        vae.post_quant_conv.load_state_dict(payload["post_quant_conv"])
        opt.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["torch_rng"])
        start, spent = payload["step"], float(payload.get("train_seconds", 0.0))
        log(f"decoder: resumed from {ckpt} at step {start}")
    else:
        torch.manual_seed(plan.seed + 5)
    budget = budget_minutes * 60 if budget_minutes else None
    log(f"decoder: {plan.decoder_steps} steps of {plan.decoder_batch}"
        + (f", time budget {budget_minutes} min" if budget else ""))
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    n = len(data["mean"])
    t0 = t_last = time.time()
    loss_avg = None
    for step in range(start, plan.decoder_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, plan.decoder_lr, 50, plan.decoder_steps,
                                progress=spent / budget if budget else 0.0)
        idx = torch.randint(0, n, (plan.decoder_batch,))
        images = np.stack([
            shapes.generate_sample(int(i), plan.seed + 2, plan.resolution).image for i in idx
        ])
        x = to_model_images(images)
        mean, std = data["mean"][idx].float(), data["std"][idx].float()
        rec = vae.decode(mean + std * torch.randn_like(mean)).sample
        # Edges (where the picture changes within 2 pixels) weigh 5x: they carry the shape.
        spread = F.max_pool2d(x, 5, 1, 2) + F.max_pool2d(-x, 5, 1, 2)
        weight = 1.0 + 4.0 * (spread.amax(dim=1, keepdim=True) > 0.2).float()
        err = (rec - x).abs() + (rec - x).square()
        loss = (err * weight).mean() / weight.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        now = time.time()
        spent, t_last = spent + now - t_last, now
        done = step + 1
        if done % 50 == 0:
            log(f"decoder step {done}/{plan.decoder_steps} loss {loss_avg:.4f} "
                f"{(done - start) * plan.decoder_batch / (now - t0):.0f} img/s")
        out_of_time = budget is not None and spent >= budget
        if done % plan.decoder_ckpt_every == 0 or out_of_time:
            payload = {"decoder": vae.decoder.state_dict(),
                       "post_quant_conv": vae.post_quant_conv.state_dict(),
                       "optimizer": opt.state_dict(), "train_seconds": spent}
            save_checkpoint(folder, done, payload)
        if out_of_time:
            log(f"decoder: time budget used up at step {done}")
            break
    vae.eval()
    vae.requires_grad_(False)
    psnr, _, _ = measure_vae(vae, plan, n=32 if plan.vae_steps < 10 else 512)
    torch.save({"decoder": vae.decoder.state_dict(),
                "post_quant_conv": vae.post_quant_conv.state_dict(), "psnr": psnr}, final)
    log(f"decoder: psnr {psnr:.2f} dB on held-out pictures")
    return True


def use_finished_decoder(vae, run_dir: Path) -> None:
    """Put the fine-tuned decoder into ``vae`` once the decoder stage has finished."""
    dec = run_dir / "decoder" / "final.pt"
    if dec.exists() and getattr(vae, "_decoder_from", None) != dec:
        payload = torch.load(dec, weights_only=False)
        vae.decoder.load_state_dict(payload["decoder"])
        vae.post_quant_conv.load_state_dict(payload["post_quant_conv"])
        vae._decoder_from = dec
        log(f"vae: using the fine-tuned decoder from {dec}")


def load_finished_vae(run_dir: Path, resolution: int):
    """The VAE of a run: trained weights, measured scaling factor, fine-tuned decoder if any."""
    vae = make_vae(resolution)
    payload = torch.load(run_dir / "vae" / "final.pt", weights_only=False)
    vae.load_state_dict(payload["model"])
    vae.register_to_config(scaling_factor=payload["scaling_factor"])
    use_finished_decoder(vae, run_dir)
    vae.eval()
    vae.requires_grad_(False)
    return vae


def export_latest(plan: Plan, run_dir: Path, export_dir: Path, tokenizer_dir: Path, command: str):
    """Export the latest UNet checkpoint with the finished VAE (and evaluate it quickly)."""
    tokenizer = load_tokenizer(tokenizer_dir)
    vae = load_finished_vae(run_dir, plan.resolution)
    ckpt = latest_unet_checkpoint(run_dir)
    if ckpt is None:
        raise SystemExit(f"no UNet checkpoint under {run_dir / 'unet'}")
    payload = torch.load(ckpt, weights_only=False)
    text_encoder, unet = make_text_encoder(tokenizer), make_unet(plan.resolution)
    unet.load_state_dict(payload["unet"])
    text_encoder.load_state_dict(payload["text_encoder"])
    log(f"export: {ckpt}")
    checkpoint_export(plan, run_dir, export_dir, vae, text_encoder, unet, tokenizer_dir,
                      command, float("nan"))


# --------------------------------------------------------------------------- stage 3: UNet


@dataclass
class Phase:
    """One stretch of UNet training: the main stage, or the recolour tuning that follows it."""

    name: str  # its checkpoint folder under the run dir
    steps: int
    lr: float
    warmup: int
    recolour: Recolour
    budget_minutes: float | None
    noise_offset: float = 0.0

    @classmethod
    def main(cls, plan: Plan, budget_minutes: float | None) -> Phase:
        return cls("unet", plan.unet_steps, plan.unet_lr, plan.unet_warmup, plan.recolour,
                   budget_minutes)

    @classmethod
    def tuning(cls, plan: Plan, budget_minutes: float | None) -> Phase:
        t = plan.tune
        return cls("tune", t.steps, t.lr, t.warmup, t.recolour, budget_minutes, t.noise_offset)


def training_noise(latents: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise shaped as ``latents``, plus a per-sample, per-channel constant of std
    ``offset`` (offset noise)."""
    noise = torch.randn_like(latents)
    if offset:
        noise += offset * torch.randn(*latents.shape[:2], 1, 1)
    return noise


def noisy_input_and_target(
    alpha_bar: torch.Tensor,
    latents: torch.Tensor,
    seen_latents: torch.Tensor,
    noise: torch.Tensor,
    prediction: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's input and its target (epsilon or v), per sample at its ``alpha_bar``.

    The input is ``seen_latents`` (the picture or its recoloured twin) noised; the target is
    the one that takes that input back to ``latents``, the picture its caption describes.
    """
    a = alpha_bar.float()[:, None, None, None]
    noisy = a.sqrt() * seen_latents + (1 - a).sqrt() * noise
    epsilon = noise + (a / (1 - a)).sqrt() * (seen_latents - latents)
    if prediction == "v_prediction":
        return noisy, a.sqrt() * epsilon - (1 - a).sqrt() * latents
    return noisy, epsilon


def latest_unet_checkpoint(run_dir: Path) -> Path | None:
    """The newest UNet weights of a run: the recolour tuning's if it has begun."""
    return latest_checkpoint(run_dir / "tune") or latest_checkpoint(run_dir / "unet")


def optimise(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    opt: torch.optim.Optimizer,
    params: Iterable[torch.nn.Parameter],
) -> torch.Tensor:
    """One optimiser step on the per-sample weighted MSE, gradients clipped to norm 1; the loss."""
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    loss = (per_sample * weight).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss


def train_unet(
    plan: Plan, phase: Phase, run_dir: Path, vae, tokenizer, tokenizer_dir: Path,
    export_dir: Path, resume_from_shipped: bool, command: str,
):
    from diffusers import DDPMScheduler

    folder = run_dir / phase.name
    spent = 0.0  # seconds of training in this phase so far, over all resumes
    text_encoder, unet = make_text_encoder(tokenizer), make_unet(plan.resolution)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.01)
    start = 0
    ckpt = latest_checkpoint(folder)
    if ckpt is not None:
        payload = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(payload["unet"])
        text_encoder.load_state_dict(payload["text_encoder"])
        opt.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["torch_rng"])
        start = payload["step"]
        spent = float(payload.get("train_seconds", 0.0))
        log(f"{phase.name}: resumed from {ckpt} at step {start} ({spent:.0f} s trained)")
    elif phase.name == "tune":
        base = latest_checkpoint(run_dir / "unet")
        if base is None:
            raise SystemExit(f"recolour tuning needs a UNet checkpoint under {run_dir / 'unet'}")
        payload = torch.load(base, weights_only=False)
        unet.load_state_dict(payload["unet"])
        text_encoder.load_state_dict(payload["text_encoder"])
        torch.manual_seed(plan.seed + 1)
        log(f"tune: starting from {base} (fresh optimizer state)")
    elif resume_from_shipped:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        state = json.loads((export_dir / "training_state.json").read_text())
        unet = UNet2DConditionModel.from_pretrained(
            str(export_dir / "unet"), torch_dtype=torch.float32
        )
        text_encoder = CLIPTextModel.from_pretrained(
            str(export_dir / "text_encoder"), dtype=torch.float32
        )
        params = list(unet.parameters()) + list(text_encoder.parameters())
        opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.01)
        start = int(state["unet_step"])
        spent = float(state.get("train_seconds", 0.0))
        torch.manual_seed(plan.seed * 1000 + start)
        log(f"unet: resumed from the shipped weights in {export_dir} at step {start} "
            "(fresh optimizer state)")
    else:
        torch.manual_seed(plan.seed)
    budget = phase.budget_minutes * 60 if phase.budget_minutes else None
    if start >= phase.steps or (budget is not None and spent >= budget):
        log(f"{phase.name}: done earlier (step {start}, {spent / 60:.1f} min trained)")
        return text_encoder, unet
    log(f"{phase.name}: {n_params(unet) / 1e6:.3f} M params, text encoder "
        f"{n_params(text_encoder) / 1e6:.3f} M, {phase.steps} steps of {plan.unet_batch}")

    data = cache_latents(vae, plan, run_dir, tokenizer)
    recolour = phase.recolour
    twins = cache_twins(vae, plan, run_dir) if recolour.probability > 0 else None
    sched = DDPMScheduler.from_config(scheduler_config(plan))
    alphas = sched.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    if plan.prediction == "v_prediction":  # min-SNR, never under plain v's weight at low SNR
        weights = snr.clamp(1.0, plan.min_snr_gamma) / (snr + 1)
    else:  # min-SNR for epsilon prediction
        weights = torch.clamp(snr, max=plan.min_snr_gamma) / snr
    scale = vae.config.scaling_factor
    n = len(data["mean"])
    batch = plan.unet_batch

    unet.train()
    text_encoder.train()
    t0, seen, loss_avg = time.time(), 0, None
    if budget:
        log(f"{phase.name}: time budget {phase.budget_minutes} min; the learning rate decays "
            "with the larger of step and time progress and training stops when either runs out")
    t_last = time.time()
    for step in range(start, phase.steps):
        time_progress = spent / budget if budget else 0.0
        for group in opt.param_groups:
            group["lr"] = lr_at(step, phase.lr, phase.warmup, phase.steps, progress=time_progress)
        idx = torch.randint(0, n, (batch,))
        mean, std = data["mean"][idx].float(), data["std"][idx].float()
        latents = (mean + std * torch.randn_like(mean)) * scale
        ids = data["input_ids"][data["combo"][idx]].clone()
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        wrong = torch.zeros(batch, dtype=torch.bool)
        if plan.mismatch_max > 0:
            p_wrong = plan.mismatch_max * (1 - t.float() / plan.mismatch_until).clamp(0, 1)
            wrong = torch.rand(batch) < p_wrong
            others = torch.randint(0, len(data["input_ids"]), (batch,))
            ids[wrong] = data["input_ids"][others[wrong]]
        drop = torch.rand(batch) < plan.caption_dropout
        ids[drop] = data["empty_ids"]
        noise = training_noise(latents, phase.noise_offset)
        seen_latents = latents
        if twins is not None:
            in_range = (t >= recolour.t_from) & (t <= recolour.t_until)
            swap = in_range & ~wrong & (torch.rand(batch) < recolour.probability)
            if not recolour.uncaptioned:
                swap &= ~drop
            twin = (twins["mean"][idx].float() + twins["std"][idx].float()
                    * torch.randn_like(mean)) * scale
            if recolour.blend > 0:  # part of the way from the picture to its twin
                weight = torch.where(torch.rand(batch) < recolour.blend,
                                     torch.rand(batch), torch.ones(batch))
                twin = latents + weight[:, None, None, None] * (twin - latents)
            seen_latents = torch.where(swap[:, None, None, None], twin, latents)
        noisy, target = noisy_input_and_target(
            alphas[t], latents, seen_latents, noise, plan.prediction
        )
        cond = text_encoder(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = optimise(pred, target, weights[t], opt, params)
        seen += batch
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        done = step + 1
        now = time.time()
        spent += now - t_last  # evaluation and export time is not counted
        t_last = now
        elapsed = now - t0
        if done % 50 == 0 or done == phase.steps:
            log(f"{phase.name} step {done}/{phase.steps} loss {loss_avg:.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e} {seen / elapsed:.0f} samples/s, "
                f"{spent / 60:.1f} min trained")
        out_of_time = budget is not None and spent >= budget
        if done % plan.unet_ckpt_every == 0 or done == phase.steps or out_of_time:
            save_checkpoint(
                folder, done,
                {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                 "optimizer": opt.state_dict(), "train_seconds": spent},
            )
            checkpoint_export(
                plan, run_dir, export_dir, vae, text_encoder, unet, tokenizer_dir, command,
                seen / elapsed,
            )
            unet.train()
            text_encoder.train()
            t_last = time.time()
        if out_of_time:
            log(f"{phase.name}: time budget used up at step {done} ({spent / 60:.1f} min trained)")
            break
    return text_encoder, unet


def training_progress(run_dir: Path) -> dict:
    """Steps and training seconds of the run's latest UNet (and recolour tuning) checkpoints."""
    progress = {}
    for phase, steps, seconds in (("unet", "unet_step", "train_seconds"),
                                  ("tune", "tune_step", "tune_seconds")):
        ckpt = latest_checkpoint(run_dir / phase)
        if ckpt is not None:
            payload = torch.load(ckpt, weights_only=False, map_location="cpu")
            progress[steps] = int(payload["step"])
            progress[seconds] = round(float(payload.get("train_seconds", 0.0)), 1)
    return progress


def checkpoint_export(
    plan: Plan, run_dir: Path, export_dir: Path, vae, text_encoder, unet, tokenizer_dir: Path,
    command: str, rate: float,
) -> None:
    from diffusers import StableDiffusionPipeline

    unet.eval()
    text_encoder.eval()
    use_finished_decoder(vae, run_dir)
    progress = training_progress(run_dir)
    step = progress["unet_step"] + progress.get("tune_step", 0)
    state = {
        **progress,
        "unet_steps_planned": plan.unet_steps,
        "samples_seen": step * plan.unet_batch,
        "plan": asdict(plan),
        "command": command,
        "samples_per_second": round(rate, 1),
    }
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=load_tokenizer(tokenizer_dir), unet=unet,
        scheduler=make_scheduler("euler", scheduler_config(plan)), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    t0 = time.time()
    captions = eval_captions(plan.eval_captions, offset=step)
    acc, images = evaluate_txt2img(pipe, captions)
    state["quick_eval"] = {"captions": len(captions), "steps": 20, "cfg": 7.5, **acc}
    log(f"eval @ {step}: colour {acc['colour']:.3f} background {acc['background']:.3f} "
        f"shape {acc['shape']:.3f} all {acc['all']:.3f} ({len(captions)} captions, "
        f"{time.time() - t0:.0f} s)")
    samples = run_dir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    image_grid(images[:64]).save(samples / f"unet_{step:07d}.png")
    export_pipeline(export_dir, vae, text_encoder, unet, tokenizer_dir, state,
                    scheduler_config(plan))
    log(f"exported step {step} to {export_dir}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    ap.add_argument("--export-dir", type=Path, default=SHIPPED_DIR)
    ap.add_argument("--smoke", action="store_true", help="a few steps of each stage, in seconds")
    ap.add_argument("--resume-from-shipped", action="store_true",
                    help="start the UNet stage from the exported weights when run-dir has none")
    ap.add_argument("--resolution", type=int, choices=(64, 128),
                    help="picture size (default 128, 16x16 latents); 64: 8x8 latents, a UNet level "
                    "less")
    ap.add_argument("--unet-steps", type=int, help="override the planned number of UNet steps")
    ap.add_argument("--vae-steps", type=int, help="override the planned number of VAE steps")
    ap.add_argument("--vae-align", type=float, help="weight of the latent-colour alignment")
    ap.add_argument("--recolour", type=float,
                    help="probability of the recoloured-twin input at mid to high noise levels")
    ap.add_argument("--recolour-range", type=int, nargs=2, metavar=("FROM", "UNTIL"),
                    help="the timesteps where the recoloured twin may be used (default 535 999)")
    ap.add_argument("--recolour-blend", type=float,
                    help="share of the twin inputs blended with the picture (default 0)")
    ap.add_argument("--tune-steps", type=int,
                    help="steps of recolour tuning after the UNet stage (0: none)")
    ap.add_argument("--tune-minutes", type=float, help="time budget of the recolour tuning")
    ap.add_argument("--plan", action="append", default=[], metavar="FIELD=VALUE",
                    help="set any field of the plan, nested with dots, e.g. --plan tune.lr=5e-4 "
                    "(repeatable)")
    ap.add_argument("--budget-minutes", type=float,
                    help="UNet training time budget (over all resumes): the learning rate decays "
                    "with time as well as steps, and training stops when it is used up")
    ap.add_argument("--decoder-minutes", type=float,
                    help="time budget of the decoder fine-tuning stage")
    ap.add_argument("--only", choices=["decoder", "export"],
                    help="run just the decoder fine-tuning stage (needs the VAE and latents), "
                    "or just export the latest UNet checkpoint with the finished VAE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--evaluate", type=Path, metavar="FOLDER",
                    help="only evaluate an exported folder (txt2img, img2img, samplers, speed)")
    ap.add_argument("--eval-captions", type=int, default=168)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(
        ["train_model.py", *argv]
    )
    if args.evaluate:
        return evaluate_folder(args.evaluate, args.eval_captions)

    plan = Plan.smoke() if args.smoke else Plan()
    if args.resolution:
        plan.resolution = args.resolution
    if args.unet_steps:
        plan.unet_steps = args.unet_steps
    if args.vae_steps:
        plan.vae_steps = args.vae_steps
    if args.vae_align is not None:
        plan.vae_align = args.vae_align
    if args.recolour is not None:
        plan.recolour.probability = args.recolour
    if args.recolour_range:
        plan.recolour.t_from, plan.recolour.t_until = args.recolour_range
    if args.recolour_blend is not None:
        plan.recolour.blend = args.recolour_blend
    if args.tune_steps is not None:
        plan.tune.steps = args.tune_steps
    for setting in args.plan:
        set_plan_field(plan, setting)
    if plan.prediction not in PREDICTIONS:
        raise SystemExit(f"--plan prediction={plan.prediction}: one of {', '.join(PREDICTIONS)}")
    run_dir = args.run_dir
    if args.smoke and args.run_dir == DEFAULT_RUN_DIR:
        run_dir = Path(tempfile.mkdtemp(prefix="nodegraph-smoke-"))
    export_dir = args.export_dir
    if args.smoke and args.export_dir == SHIPPED_DIR:
        export_dir = run_dir / "model"
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"command: {command}")
    log(f"run dir {run_dir}, export dir {export_dir}, plan {asdict(plan)}")
    t_start = time.time()
    torch.manual_seed(plan.seed)
    tokenizer_dir = build_tokenizer(run_dir / "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    vae = None
    if args.resume_from_shipped and not (run_dir / "vae" / "final.pt").exists():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(export_dir / "vae"), torch_dtype=torch.float32)
        (run_dir / "vae").mkdir(parents=True, exist_ok=True)
        payload = {"model": vae.state_dict(), "scaling_factor": vae.config.scaling_factor,
                   "psnr": float("nan"), "latent_mean": float("nan")}
        torch.save(payload, run_dir / "vae" / "final.pt")
        log(f"vae: taken from {export_dir}")
    t_vae = time.time()
    if args.only == "export":
        export_latest(plan, run_dir, export_dir, tokenizer_dir, command)
        return 0
    vae = train_vae(plan, run_dir) if vae is None else vae
    vae.eval()
    vae.requires_grad_(False)
    log(f"vae stage wall time {time.time() - t_vae:.0f} s")
    if args.only != "decoder":
        t_unet = time.time()
        train_unet(plan, Phase.main(plan, args.budget_minutes), run_dir, vae, tokenizer,
                   tokenizer_dir, export_dir, args.resume_from_shipped, command)
        log(f"unet stage wall time {time.time() - t_unet:.0f} s")
        if plan.tune.steps > 0:
            t_tune = time.time()
            train_unet(plan, Phase.tuning(plan, args.tune_minutes), run_dir, vae, tokenizer,
                       tokenizer_dir, export_dir, False, command)
            log(f"tune stage wall time {time.time() - t_tune:.0f} s")
    t_dec = time.time()
    trained = finetune_decoder(plan, run_dir, vae, cache_latents(vae, plan, run_dir, tokenizer),
                               args.decoder_minutes)
    log(f"decoder stage wall time {time.time() - t_dec:.0f} s")
    if args.only != "decoder" and trained:  # the last export still has the old decoder
        export_latest(plan, run_dir, export_dir, tokenizer_dir, command)
    log(f"done: total wall time {time.time() - t_start:.0f} s; command: {command}")
    return 0


def evaluate_folder(folder: Path, n_captions: int) -> int:
    """Full quality report of an exported folder, printed as JSON."""
    report: dict = {"folder": str(folder)}
    pipe = load_pipeline(folder, "euler")
    captions = eval_captions(n_captions)
    for cfg in (7.5, 5.0):
        t0 = time.time()
        acc, images = evaluate_txt2img(pipe, captions, cfg=cfg)
        report[f"txt2img_cfg{cfg}"] = acc
        log(f"txt2img cfg {cfg}: {acc} ({time.time() - t0:.0f} s)")
    image_grid(images[:64]).save(Path(tempfile.gettempdir()) / "nodegraph_eval_grid.png")
    for name in ("euler_ancestral", "ddim", "dpmpp_2m", "heun"):
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
        acc, _ = evaluate_txt2img(pipe, eval_captions(56))
        report[f"sampler_{name}"] = acc
        log(f"sampler {name}: {acc}")
    pipe.scheduler = make_scheduler("euler", pipe.scheduler.config)
    report["img2img"] = evaluate_img2img(pipe, n=48)
    log(f"img2img: {json.dumps(report['img2img'])}")
    times = []
    for k in range(4):
        t0 = time.time()
        pipe(captions[k], num_inference_steps=20, guidance_scale=7.5,
             generator=torch.Generator().manual_seed(k), output_type="np")
        times.append(time.time() - t0)
    report["seconds_per_image_20_steps_cfg"] = round(min(times[1:]), 3)
    log(f"one image, 20 steps with CFG: {min(times[1:]):.3f} s")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
