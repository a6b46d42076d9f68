#!/usr/bin/env python
"""Where img2img moves a shape: the predicted picture's centroid after every sampling step.

Each test picture in ``workflows/images`` is re-prompted with another foreground colour (as in
``bench/model_quality.py``) at the given strengths, with the model's own Euler scheduler and
classifier-free guidance. After every step the predicted clean latents are decoded and graded
by the analytic checker; the script prints, per strength, the mean centroid shift (fraction of
the width) of the guided prediction at each timestep. ``--strip`` saves one picture's steps as
rows: guided, conditional and unconditional prediction.

    .venv/bin/python bench/img2img_trace.py --strengths 0.4 0.5 0.6
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.model_quality import PICTURES, other_colour  # noqa: E402
from tools import shapes  # noqa: E402


@torch.no_grad()
def trace(pipe, picture: np.ndarray, prompt: str, strength: float, seed: int, steps: int,
          cfg: float) -> tuple[list[int], list[list[np.ndarray]]]:
    """Timesteps and, per step, the decoded guided / conditional / unconditional predictions."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    first = steps - int(steps * strength)
    sched.set_begin_index(first)
    timesteps = sched.timesteps[first:]
    ids = pipe.tokenizer(["", prompt], padding="max_length", return_tensors="pt",
                         max_length=pipe.tokenizer.model_max_length).input_ids
    context = pipe.text_encoder(ids)[0]
    scale = pipe.vae.config.scaling_factor
    pixels = torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 127.5 - 1
    clean = pipe.vae.encode(pixels).latent_dist.mean * scale
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    latents = sched.add_noise(clean, noise, timesteps[:1])
    decoded: list[list[np.ndarray]] = []
    for i, t in enumerate(timesteps):
        sigma = sched.sigmas[first + i]
        both = pipe.unet(sched.scale_model_input(torch.cat([latents] * 2), t), t,
                         encoder_hidden_states=context).sample
        uncond, cond = both.chunk(2)
        step = sched.step(uncond + cfg * (cond - uncond), t, latents)
        predictions = torch.cat([step.pred_original_sample, latents - sigma * cond,
                                 latents - sigma * uncond])
        images = pipe.vae.decode(predictions / scale).sample.clamp(-1, 1)
        decoded.append(list(((images + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()))
        latents = step.prev_sample
    return [int(t) for t in timesteps], decoded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "nodes" / "shipped_model")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--strip", type=Path, help="PNG of the first picture's first seed's steps")
    args = parser.parse_args(argv)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(args.model), local_files_only=True)
    pictures = sorted(PICTURES.glob("*.png"))
    for strength in args.strengths:
        shifts: dict[int, list[float]] = {}
        for n, path in enumerate(pictures):
            source = np.array(Image.open(path).convert("RGB"))
            truth = shapes.check_image(source)
            target = other_colour(truth.colour or "", truth.background or "")
            prompt = shapes.make_caption(truth.shape or "circle", target, truth.background or "")
            for seed in range(args.seeds):
                timesteps, decoded = trace(pipe, source, prompt, strength, seed, args.steps,
                                           args.cfg)
                for t, (guided, _, _) in zip(timesteps, decoded, strict=True):
                    got = shapes.check_image(guided).centroid
                    shift = math.dist(got, truth.centroid) if got and truth.centroid else 0.5
                    shifts.setdefault(t, []).append(shift)
                if args.strip and n == 0 and seed == 0 and strength == args.strengths[-1]:
                    rows = [np.concatenate([step[k] for step in decoded], axis=1)
                            for k in range(3)]
                    strip = Image.fromarray(np.concatenate(rows, axis=0))
                    size = (strip.width * 2, strip.height * 2)
                    strip.resize(size, Image.NEAREST).save(args.strip)
        print(f"strength {strength}: mean centroid shift of the guided prediction per timestep")
        print("  " + "  ".join(f"{t}:{np.mean(v):.3f}" for t, v in shifts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
