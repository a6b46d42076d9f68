#!/usr/bin/env python
"""Train a scribble ControlNet for the shipped shapes model (nodegraph-shapes-scribble).

A ``diffusers.ControlNetModel`` made with ``ControlNetModel.from_unet`` from the shipped UNet
(its encoder copied, zero convolutions as diffusers initialises them) learns to steer the
frozen shipped UNet, VAE and text encoder with a *scribble*: white lines 2-3 px wide on black,
3 channels, 128x128, the outline of the shape, wobbled and offset a little so that a hand
scribble works too (:func:`scribble`).

Data: ``--pictures`` drawn by ``tools/shapes.py`` (seed 4242, not the shipped model's), each
encoded once by the shipped VAE (posterior mean and std, cached in the run folder); each
training step draws a fresh scribble of each picture's shape geometry. Captions: the picture's
caption, empty in 20 % (classifier-free guidance, and it makes the control carry the layout
on its own), and in 25 % of the rest the shape word is another shape's, so that the
scribble, not the text, decides the shape. Noise as the shipped UNet's last training stage
saw it (offset noise 0.3), epsilon prediction, weighted as min-SNR (gamma 5) above SNR 1 and
as the clean latent's loss below it (``loss_weights``); half of the timesteps from 500-999,
where the layout is decided, the other half uniform. The hint embedding starts He-initialised
(``make_controlnet``), its last convolution and the zero convolutions at zero.

Resumable: ``--run-dir`` holds the cached latents, checkpoints every ``--ckpt-minutes``
(ControlNet, optimizer, step, time spent, torch and numpy RNG states), ``train.log`` (loss,
samples/s) and sample sheets; ``--resume`` continues from the latest checkpoint. Training stops
when ``--budget-minutes`` of wall time (over all resumes, quick evaluations included) are
spent or after ``--steps``. Every checkpoint is quickly evaluated (``--eval`` generations
through the diffusers ControlNet pipeline, graded by ``shapes.check_image``) and exported to
``--export-dir`` as a diffusers ControlNetModel folder (fp16) with ``training_state.json``.

Usage::

    nice -n 10 .venv/bin/python tools/train_controlnet.py --budget-minutes 90
    nice -n 10 .venv/bin/python tools/train_controlnet.py --budget-minutes 90 --resume
    .venv/bin/python tools/train_controlnet.py --smoke          # a minute, in a temporary folder
    .venv/bin/python tools/train_controlnet.py --evaluate nodes/shipped_model/controlnet
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import shapes  # noqa: E402
from tools.train_model import (  # noqa: E402
    image_grid,
    latest_checkpoint,
    lr_at,
    noisy_input_and_target,
    optimise,
    to_model_images,
    tokenize,
    training_noise,
)

SHIPPED_DIR = ROOT / "nodes" / "shipped_model"
DEFAULT_RUN_DIR = ROOT / "runs" / "controlnet"
DEFAULT_EXPORT_DIR = SHIPPED_DIR / "controlnet"
RESOLUTION = 128
DATA_SEED = 4242  # the pictures' seed (the shipped model's own data used 0 and 1)
EVAL_SEED = 9090  # quick evaluation layouts and noise
# The conditioning embedding (128x128 hint -> 16x16 features): diffusers' default
# (16, 32, 96, 256) costs more multiply-adds than this whole UNet; a scribble needs far less.
CONDITIONING_CHANNELS = (8, 16, 32, 64)
CENTROID_TOLERANCE = 0.03  # of the width


def log(msg: str, log_file: Path | None = None) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(line + "\n")


# --------------------------------------------------------------------------- scribbles


def outline(shape: str, centre: tuple[float, float], size: float) -> list[tuple[float, float]]:
    """The shape's outline as a closed list of points in fractions of the width (x, y).

    ``centre`` is the bounding-box centre and ``size`` its side, as in ``shapes.draw_shape``
    (the triangle upright and isosceles, as wide as tall).
    """
    cx, cy = centre
    h = size / 2
    if shape == "circle":
        return [(cx + h * math.cos(a), cy + h * math.sin(a))
                for a in np.linspace(0, 2 * math.pi, 49)]
    if shape == "square":
        corners = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif shape == "triangle":
        corners = [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    points = []
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
        for f in np.linspace(0, 1, 12, endpoint=False):
            points.append((x0 + f * (x1 - x0), y0 + f * (y1 - y0)))
    return [*points, points[0]]


def scribble(
    shape: str,
    centre: tuple[float, float],
    size: float,
    rng: np.random.Generator | None = None,
    resolution: int = RESOLUTION,
    width: float | None = None,
    jitter: float = 1.0,
) -> np.ndarray:
    """A scribble of a shape: white lines on black, (H, W, 3) uint8.

    The outline is wobbled (smooth, up to about 2 % of the shape's size times ``jitter``), its
    corners moved by up to 1.5 px, and the whole offset by up to 1 px; lines are 2-3 px wide
    (``width`` fixes it). ``jitter=0`` draws the exact outline.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    points = np.asarray(outline(shape, centre, size), dtype=np.float64) * resolution
    if jitter > 0:
        n = len(points)
        phase = np.linspace(0, 2 * math.pi, n)
        wobble = np.zeros((n, 2))
        for k in (2, 3, 5):  # low-frequency wobble, closed (the same at both ends)
            amp = rng.uniform(0, 0.012) * size * resolution * jitter
            wobble[:, 0] += amp * np.sin(k * phase + rng.uniform(0, 2 * math.pi))
            wobble[:, 1] += amp * np.cos(k * phase + rng.uniform(0, 2 * math.pi))
        points = points + wobble + rng.uniform(-1, 1, size=2) * jitter
        if shape != "circle":  # move each corner a little, dragging its neighbours along
            corner_every = 12
            for c in range(0, n - 1, corner_every):
                shift = rng.uniform(-1.5, 1.5, size=2) * jitter
                for j in range(-corner_every // 2, corner_every // 2 + 1):
                    weight = 1 - abs(j) / (corner_every / 2 + 1)
                    points[(c + j) % (n - 1)] += weight * shift
            points[-1] = points[0]
    width = width if width is not None else float(rng.uniform(2.0, 3.0))
    ss = 4
    img = Image.new("L", (resolution * ss, resolution * ss), 0)
    draw = ImageDraw.Draw(img)
    draw.line([tuple(p * ss) for p in points], fill=255, width=max(1, round(width * ss)),
              joint="curve")
    r = width * ss / 2  # round line ends and joints
    for x, y in points[:: max(1, len(points) // 8)]:
        draw.ellipse((x * ss - r, y * ss - r, x * ss + r, y * ss + r), fill=255)
    img = img.resize((resolution, resolution), Image.Resampling.BOX)
    grey = np.asarray(img, dtype=np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2).copy()


def box_centre(sample: shapes.Sample) -> tuple[float, float]:
    """The bounding-box centre of a drawn sample (``Sample.centre`` is the centroid)."""
    cx, cy = sample.centre
    return (cx, cy - sample.size / 6) if sample.shape == "triangle" else (cx, cy)


def hint_tensor(hints: list[np.ndarray]) -> torch.Tensor:
    """(N, H, W, 3) uint8 scribbles -> (N, 3, H, W) float in 0..1, as ControlNet pipelines pass."""
    return torch.from_numpy(np.stack(hints)).permute(0, 3, 1, 2).float().div(255.0)


def random_layout(rng: np.random.Generator) -> tuple[str, str, str, tuple[float, float], float]:
    """A random (shape, colour, background, box centre, size), as the data draws them."""
    shape = shapes.SHAPES[int(rng.integers(0, 3))]
    colour = shapes.COLOURS[int(rng.integers(0, 8))]
    background = [c for c in shapes.COLOURS if c != colour][int(rng.integers(0, 7))]
    centre, size = shapes.sample_geometry(rng)
    return shape, colour, background, centre, size


# --------------------------------------------------------------------------- models and data


def load_frozen(model_dir: Path = SHIPPED_DIR):
    """The shipped VAE, text encoder, tokenizer and UNet (float32, frozen, eval)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(str(model_dir / "vae"), torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet"), torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(str(model_dir / "text_encoder"),
                                                 torch_dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer"), local_files_only=True)
    for m in (vae, unet, text_encoder):
        m.eval().requires_grad_(False)
    return vae, text_encoder, tokenizer, unet


def make_controlnet(unet):
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS
    )
    # The hint embedding's convolutions start He-initialised (biases zero): with PyTorch's
    # default init the difference between two scribbles shrank ~700x over its 7 layers (2e-5
    # at its end against biases of 0.1), and a first run's ControlNet had learnt no use of the
    # scribble at step 1316. Its last convolution stays zero, as diffusers makes it.
    emb = net.controlnet_cond_embedding
    for conv in (emb.conv_in, *emb.blocks):
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        torch.nn.init.zeros_(conv.bias)
    return net


@torch.no_grad()
def caption_embeddings(text_encoder, tokenizer) -> torch.Tensor:
    """(169, 16, 64): the 168 captions' text embeddings in combination order, then the empty one."""
    ids = tokenize(tokenizer, [*shapes.all_captions(), ""])
    return text_encoder(ids)[0]


def combo_index(shape: str, colour: str, background: str) -> int:
    s, c = shapes.SHAPES.index(shape), shapes.COLOURS.index(colour)
    b = shapes.COLOURS.index(background)
    return s * 56 + c * 7 + (b if b < c else b - 1)


@torch.no_grad()
def build_data(vae, count: int, path: Path, log_file: Path | None) -> dict:
    """``count`` pictures of seed DATA_SEED encoded by the VAE, with their geometry; cached."""
    if path.exists():
        data = torch.load(path, weights_only=False)
        if len(data["mean"]) == count:
            return data
    t0 = time.time()
    means, stds, geometry = [], [], []
    chunk = 64
    for start in range(0, count, chunk):
        samples = [shapes.generate_sample(i, DATA_SEED, RESOLUTION)
                   for i in range(start, min(count, start + chunk))]
        post = vae.encode(to_model_images(np.stack([s.image for s in samples]))).latent_dist
        means.append(post.mean.half())
        stds.append(post.std.half())
        for s in samples:
            geometry.append((shapes.SHAPES.index(s.shape), shapes.COLOURS.index(s.colour),
                             shapes.COLOURS.index(s.background), *box_centre(s), s.size))
        if (start // chunk) % 25 == 0:
            log(f"data: {start + len(samples)}/{count} pictures encoded "
                f"({time.time() - t0:.0f} s)", log_file)
    data = {"mean": torch.cat(means), "std": torch.cat(stds),
            "geometry": np.asarray(geometry, dtype=np.float64)}
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    log(f"data: {count} pictures in {time.time() - t0:.0f} s", log_file)
    return data


# --------------------------------------------------------------------------- evaluation


def control_pipeline(vae, text_encoder, tokenizer, unet, controlnet, model_dir: Path = SHIPPED_DIR):
    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline

    sched = EulerDiscreteScheduler.from_pretrained(str(model_dir / "scheduler"))
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=sched, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def eval_cases(n: int, seed: int = EVAL_SEED) -> list[dict]:
    """``n`` seeded (caption, scribble, truth) cases: random shapes at random places."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        shape, colour, background, centre, size = random_layout(rng)
        hint = scribble(shape, centre, size, rng)
        cases.append({"caption": shapes.make_caption(shape, colour, background), "hint": hint,
                      "shape": shape, "colour": colour, "background": background,
                      "centroid": shapes.check_image(hint_as_picture(hint)).centroid})
    return cases


def hint_as_picture(hint: np.ndarray) -> np.ndarray:
    """The scribble filled in (white shape on black) so that check_image reads its centroid."""
    from scipy import ndimage

    lines = hint[..., 0] > 64
    filled = ndimage.binary_fill_holes(lines)
    return np.repeat((filled * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def grade_controlled(images: list[np.ndarray], cases: list[dict]) -> dict[str, float]:
    hits = {"centroid": 0, "shape": 0, "colour": 0, "background": 0, "all": 0}
    dist = 0.0
    for image, case in zip(images, cases, strict=True):
        got = shapes.check_image(image)
        d = math.dist(got.centroid, case["centroid"]) if got.centroid else 0.5
        dist += d
        ok = {"centroid": d <= CENTROID_TOLERANCE, "shape": got.shape == case["shape"],
              "colour": got.colour == case["colour"],
              "background": got.background == case["background"]}
        for k, v in ok.items():
            hits[k] += v
        hits["all"] += all(ok.values())
    n = len(cases)
    return {**{k: v / n for k, v in hits.items()}, "mean_centroid_distance": dist / n}


@torch.no_grad()
def evaluate(pipe, cases: list[dict], steps: int = 20, cfg: float = 7.5, batch: int = 8,
             seed: int = EVAL_SEED) -> tuple[dict, list[np.ndarray]]:
    images = []
    for i in range(0, len(cases), batch):
        chunk = cases[i : i + batch]
        out = pipe([c["caption"] for c in chunk], image=hint_tensor([c["hint"] for c in chunk]),
                   num_inference_steps=steps, guidance_scale=cfg,
                   generator=torch.Generator().manual_seed(seed + i), output_type="np").images
        images += list((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))
    return grade_controlled(images, cases), images


# --------------------------------------------------------------------------- export


def export_controlnet(controlnet, folder: Path, state: dict, fp16: bool = True) -> int:
    """Write a diffusers ControlNetModel folder (+ training_state.json); returns its byte size."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as td:
        tmp = Path(td) / "controlnet"
        clone = copy.deepcopy(controlnet).to(torch.float16 if fp16 else torch.float32)
        clone.save_pretrained(tmp, safe_serialization=True)
        (tmp / "training_state.json").write_text(json.dumps(state, indent=2) + "\n")
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(tmp.iterdir()):
            part = folder / (path.name + ".tmp")
            shutil.copyfile(path, part)
            os.replace(part, folder / path.name)
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


# --------------------------------------------------------------------------- training


WEIGHTINGS = ("x0-high", "min-snr")


def loss_weights(snr: torch.Tensor, weighting: str, gamma: float = 5.0, cap: float = 25.0):
    """Per-timestep weights of the epsilon loss.

    ``min-snr``: min(SNR, gamma) / SNR, the UNet's own (weight 1 wherever SNR < gamma).
    ``x0-high``: the same above SNR 1, but below it 1 / SNR (capped at ``cap``), i.e. the loss
    of the predicted clean latent. At high noise the epsilon error hardly depends on where the
    shape is (the target is nearly the input: at t 999 an x0 error counts 1/22 in epsilon
    space), and layout is what the scribble is for.
    """
    base = torch.clamp(snr, max=gamma) / snr
    if weighting == "min-snr":
        return base
    if weighting != "x0-high":
        raise ValueError(f"weighting: one of {WEIGHTINGS}")
    return torch.where(snr < 1, (1 / snr).clamp(max=cap), base)


def save_checkpoint(folder: Path, step: int, payload: dict, keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt_{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    for old in sorted(folder.glob("ckpt_*.pt"))[:-keep]:
        old.unlink()
    return path


def _shown(path: Path) -> str:
    """A path as recorded: relative to the repository when inside it."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(ROOT))
    return str(path)


def train(args: argparse.Namespace, command: str) -> int:
    run_dir: Path = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = run_dir / "train.log"
    ckpt_dir = run_dir / "checkpoints"
    found = latest_checkpoint(ckpt_dir)
    if found is not None and not args.resume:
        raise SystemExit(f"{run_dir} has checkpoints ({found.name}): pass --resume, or another "
                         "--run-dir")
    log(f"command: {command}", log_file)
    torch.manual_seed(args.seed)
    vae, text_encoder, tokenizer, unet = load_frozen()
    controlnet = make_controlnet(unet)
    controlnet.train()
    n_params = sum(p.numel() for p in controlnet.parameters())
    log(f"controlnet: {n_params / 1e6:.3f} M params; conditioning embedding "
        f"{CONDITIONING_CHANNELS}", log_file)
    data = build_data(vae, args.pictures, run_dir / f"data_{args.pictures}.pt", log_file)
    embeds = caption_embeddings(text_encoder, tokenizer)
    params = [p for p in controlnet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng([args.seed, 1])
    step, spent = 0, 0.0
    history: list[dict] = []
    if found is not None:
        payload = torch.load(found, weights_only=False)
        controlnet.load_state_dict(payload["controlnet"])
        opt.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["torch_rng"])
        rng.bit_generator.state = payload["numpy_rng"]
        step, spent = int(payload["step"]), float(payload["seconds"])
        history = payload.get("history", [])
        log(f"resumed from {found} at step {step} ({spent / 60:.1f} min spent)", log_file)
    budget = args.budget_minutes * 60 if args.budget_minutes else None

    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_pretrained(str(SHIPPED_DIR / "scheduler"))
    alphas = sched.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    weights = loss_weights(snr, args.weighting)
    scale = vae.config.scaling_factor
    geometry = data["geometry"]
    n = len(data["mean"])
    empty = len(embeds) - 1
    cases = eval_cases(args.eval)
    plan = {k: (_shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    plan.update(conditioning_embedding_out_channels=list(CONDITIONING_CHANNELS),
                data_seed=DATA_SEED, eval_seed=EVAL_SEED, noise_offset=args.noise_offset,
                min_snr_gamma=5.0, weighting=args.weighting)

    def checkpoint_and_eval(rate: float) -> None:
        nonlocal spent
        t0 = time.time()
        save_checkpoint(ckpt_dir, step, {
            "controlnet": controlnet.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "seconds": spent, "torch_rng": torch.get_rng_state(),
            "numpy_rng": rng.bit_generator.state, "history": history,
        })
        controlnet.eval()
        pipe = control_pipeline(vae, text_encoder, tokenizer, unet, controlnet)
        acc, images = evaluate(pipe, cases)
        controlnet.train()
        history.append({"step": step, "minutes": round(spent / 60, 1), **acc})
        log(f"eval @ {step}: centroid within 3 % {acc['centroid']:.3f} "
            f"(mean distance {acc['mean_centroid_distance']:.3f}) shape {acc['shape']:.3f} "
            f"colour {acc['colour']:.3f} background {acc['background']:.3f} "
            f"all {acc['all']:.3f} ({len(cases)} cases, {time.time() - t0:.0f} s)", log_file)
        (run_dir / "samples").mkdir(exist_ok=True)
        pairs = [im for c, out in zip(cases, images, strict=True) for im in (c["hint"], out)]
        image_grid(pairs[:64], cols=8).save(run_dir / "samples" / f"step_{step:07d}.png")
        state = {
            "controlnet_step": step, "train_seconds": round(spent, 1),
            "samples_seen": step * args.batch, "samples_per_second": round(rate, 1),
            "params": n_params, "plan": plan, "command": command,
            "quick_eval": {"cases": len(cases), "steps": 20, "cfg": 7.5, "strength": 1.0, **acc},
            "history": history,
        }
        size = export_controlnet(controlnet, args.export_dir, state)
        log(f"exported step {step} to {args.export_dir} ({size / 1e6:.2f} MB)", log_file)
        spent += time.time() - t0  # the budget is wall time: evaluations count

    log(f"training: batch {args.batch}, lr {args.lr}, {n} pictures, budget "
        f"{args.budget_minutes} min, checkpoint every {args.ckpt_minutes} min", log_file)
    t_last = time.time()
    t_ckpt = time.time()
    window_t, window_n = time.time(), 0
    loss_avg = None
    rate = 0.0
    while step < args.steps and (budget is None or spent < budget):
        progress = spent / budget if budget else step / args.steps
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup, 10**9, floor=0.1, progress=progress)
        idx = torch.randint(0, n, (args.batch,))
        mean, std = data["mean"][idx].float(), data["std"][idx].float()
        latents = (mean + std * torch.randn_like(mean)) * scale
        hints, cond_idx = [], []
        for i in idx.tolist():
            s, c, b, cx, cy, size = geometry[i]
            shape = shapes.SHAPES[int(s)]
            hints.append(scribble(shape, (cx, cy), size, rng))
            u = rng.random()
            if u < args.caption_dropout:
                cond_idx.append(empty)
                continue
            if rng.random() < args.shape_swap:  # another shape word: the scribble decides
                shape = shapes.SHAPES[(int(s) + 1 + int(rng.integers(0, 2))) % 3]
            cond_idx.append(combo_index(shape, shapes.COLOURS[int(c)], shapes.COLOURS[int(b)]))
        hint = hint_tensor(hints)
        cond = embeds[torch.tensor(cond_idx)]
        t = torch.randint(0, 1000, (args.batch,))
        high = torch.rand(args.batch) < args.high_noise
        t = torch.where(high, torch.randint(500, 1000, (args.batch,)), t)
        noise = training_noise(latents, args.noise_offset)
        noisy, target = noisy_input_and_target(alphas[t], latents, latents, noise)
        down, mid = controlnet(noisy, t, encoder_hidden_states=cond, controlnet_cond=hint,
                               return_dict=False)
        pred = unet(noisy, t, encoder_hidden_states=cond, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = optimise(pred, target, weights[t], opt, params)
        step += 1
        window_n += args.batch
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        now = time.time()
        spent += now - t_last
        t_last = now
        if step % args.log_every == 0:
            rate = window_n / (now - window_t)
            window_t, window_n = now, 0
            log(f"step {step} loss {loss_avg:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{rate:.1f} samples/s, {spent / 60:.1f} min spent", log_file)
        out_of_time = budget is not None and spent >= budget
        if now - t_ckpt >= args.ckpt_minutes * 60 or out_of_time or step >= args.steps:
            checkpoint_and_eval(rate)
            t_ckpt = t_last = time.time()
    if found is not None and step == int(payload["step"]):
        log("nothing left to train (budget or steps used up); exporting again", log_file)
        checkpoint_and_eval(rate)
    log(f"done at step {step}, {spent / 60:.1f} min spent", log_file)
    return 0


def evaluate_folder(folder: Path, n: int) -> int:
    from diffusers import ControlNetModel

    vae, text_encoder, tokenizer, unet = load_frozen()
    controlnet = ControlNetModel.from_pretrained(str(folder), torch_dtype=torch.float32)
    pipe = control_pipeline(vae, text_encoder, tokenizer, unet, controlnet)
    t0 = time.time()
    acc, images = evaluate(pipe, eval_cases(n))
    print(json.dumps({"folder": str(folder), "cases": n, **acc,
                      "seconds": round(time.time() - t0, 1)}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    ap.add_argument("--export-dir", type=Path, default=DEFAULT_EXPORT_DIR)
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    ap.add_argument("--budget-minutes", type=float,
                    help="wall time over all resumes (evaluations included); lr decays with it")
    ap.add_argument("--steps", type=int, default=10**9, help="stop after this many steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--pictures", type=int, default=12000, help="size of the encoded data set")
    ap.add_argument("--caption-dropout", type=float, default=0.2)
    ap.add_argument("--shape-swap", type=float, default=0.25,
                    help="share of captions whose shape word is another shape's")
    ap.add_argument("--high-noise", type=float, default=0.5,
                    help="share of timesteps drawn from 500-999 (the rest uniform)")
    ap.add_argument("--noise-offset", type=float, default=0.3)
    ap.add_argument("--weighting", choices=WEIGHTINGS, default="x0-high",
                    help="loss weight per timestep (see loss_weights)")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--eval", type=int, default=16, help="generations per quick evaluation")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true",
                    help="a minute: 128 pictures, 1-minute budget, into a temporary folder")
    ap.add_argument("--evaluate", type=Path, metavar="FOLDER",
                    help="only evaluate an exported ControlNet folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = " ".join(["tools/train_controlnet.py", *(sys.argv[1:] if argv is None else argv)])
    if args.evaluate:
        return evaluate_folder(args.evaluate, args.eval)
    if args.smoke:
        if args.run_dir == DEFAULT_RUN_DIR:
            args.run_dir = Path(tempfile.mkdtemp(prefix="nodegraph-cn-smoke-"))
        if args.export_dir == DEFAULT_EXPORT_DIR:
            args.export_dir = args.run_dir / "controlnet"
        args.pictures = min(args.pictures, 128)
        args.budget_minutes = args.budget_minutes or 1.0
        args.eval = min(args.eval, 4)
        args.ckpt_minutes = min(args.ckpt_minutes, 0.5)
        args.log_every = min(args.log_every, 5)
    return train(args, command)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
