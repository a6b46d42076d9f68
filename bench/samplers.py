"""Every ComfyUI sampler name on the shipped model: seconds per step and model evaluations per
step, against the evaluations each sampler is expected to make (no wasted model evaluation).

    .venv/bin/python bench/samplers.py [--steps 10] [--cfg 6] [--samplers euler heun ...]

One KSampler (scheduler "normal", txt2img at the model's 128 px) per sampler, on CPU in float32,
after a warm-up run. "evals/step" counts UNet forward calls (negative and positive prompts are
batched into one call, as ComfyUI does); "expected" is the sampler's evaluations per step
(the last step of Heun-like samplers is a plain Euler step, so they come in a little under it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


class Ctx:
    settings = SimpleNamespace(options={})

    def progress(self, value: int, total: int, preview: object = None) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


def main() -> None:
    from nodes.conditioning.clip_nodes import CLIPTextEncode
    from nodes.latents.codec import EmptyLatentImage
    from nodes.loading.checkpoints import load_checkpoint
    from nodes.loading.folders import SHIPPED_NAME
    from nodes.sampling.comfy.samplers import SAMPLERS
    from nodes.sampling.ksampler import KSampler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cfg", type=float, default=6.0)
    parser.add_argument("--samplers", nargs="*", default=list(SAMPLERS))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model, clip, _ = load_checkpoint(SHIPPED_NAME, {"device": "cpu"})
    ctx = Ctx()
    positive = CLIPTextEncode(text="a red circle on blue", clip=clip).invoke(ctx)
    negative = CLIPTextEncode(text="", clip=clip).invoke(ctx)
    size = int(model.unet.config.sample_size) * 8
    latent = EmptyLatentImage(width=size, height=size, batch_size=1).invoke(ctx)
    calls: list[int] = []
    model.unet.register_forward_hook(lambda *_: calls.append(1))

    def run(name: str) -> float:
        node = KSampler(model=model, seed=1, steps=args.steps, cfg=args.cfg, sampler_name=name,
                        scheduler="normal", positive=positive, negative=negative,
                        latent_image=latent)  # fmt: skip
        start = time.perf_counter()
        node.invoke(ctx)
        return time.perf_counter() - start

    run("euler")  # warm-up
    print(f"{'sampler':<32}{'s/step':>8}{'evals/step':>12}{'expected':>10}  verdict")
    wasted = []
    for name in args.samplers:
        calls.clear()
        seconds = run(name)
        per_step = len(calls) / args.steps
        expected = SAMPLERS[name].evaluations_per_step
        shown = "adaptive" if expected is None else f"{expected:g}"
        verdict = "ok"
        if expected is not None and per_step > expected + 1e-9:
            verdict = "WASTED"
            wasted.append(name)
        print(f"{name:<32}{seconds / args.steps:>8.3f}{per_step:>12.2f}{shown:>10}  {verdict}")
    print(f"{len(args.samplers)} samplers, {len(wasted)} with wasted evaluations {wasted or ''}")


if __name__ == "__main__":
    main()
