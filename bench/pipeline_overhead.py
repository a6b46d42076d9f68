"""The engine's cost over calling diffusers directly, and the sweep's model evaluations.

    .venv/bin/python bench/pipeline_overhead.py [--model nodegraph-shapes] [--models DIR]
        [--repeat 5] [--steps 20] [--device auto]

1. The README's main job (workflows/txt2img_img2img.json: text-to-image, then image-to-image
   refinement of its latents, both pictures decoded and saved as PNG) runs through our engine
   (a fresh executor each time, so nothing comes from the run cache; models stay loaded) and
   through StableDiffusionPipeline + StableDiffusionImg2ImgPipeline directly, alternating, and
   prints the median wall times and their ratio (goal: at most 1.03) and the largest
   difference between the two runs' pictures.
2. A strength sweep (0.3, 0.5, 0.7) of the refinement through one executor, as
   `nodegraph run --sweep` does: counts the UNet evaluations against the minimum, the
   text-to-image steps plus the sum of the image-to-image steps (goal: equal).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nodegraph import RunSettings  # noqa: E402
from nodegraph.executor import Executor  # noqa: E402
from nodegraph.registry import default_registry  # noqa: E402
from nodes import devices  # noqa: E402
from nodes.images.io import to_pil  # noqa: E402
from nodes.loading import checkpoints, folders  # noqa: E402
from nodes.sampling.native import strength_steps  # noqa: E402

WORKFLOW = ROOT / "workflows" / "txt2img_img2img.json"
STRENGTHS = (0.3, 0.5, 0.7)


def job(model: str, steps: int) -> dict:
    wf = json.loads(WORKFLOW.read_text())
    wf["checkpoint"]["inputs"]["name"] = model
    for node in ("noise", "refine_noise"):
        wf[node]["inputs"]["steps"] = steps
    return wf


def direct_pipelines(path: str, device: torch.device):
    import diffusers

    dtype = devices.compute_dtype(device)
    txt = diffusers.StableDiffusionPipeline.from_pretrained(
        path, local_files_only=True, safety_checker=None, dtype=dtype
    ).to(device)
    scheduler = diffusers.EulerDiscreteScheduler.from_config(txt.scheduler.config)
    txt = diffusers.StableDiffusionPipeline(**{**txt.components, "scheduler": scheduler})
    img = diffusers.StableDiffusionImg2ImgPipeline(**txt.components)
    for pipe in (txt, img):
        pipe.set_progress_bar_config(disable=True)
    return txt, img


def run_direct(txt, img, wf: dict, out: Path) -> list[np.ndarray]:
    """The same job with the pipelines: txt2img latents, refined by img2img, both saved."""
    first, refine = wf["noise"]["inputs"], wf["refine_noise"]["inputs"]
    prompt = wf["positive"]["inputs"]["text"]
    negative = wf["negative"]["inputs"]["text"]
    cfg = wf["denoise"]["inputs"]["cfg"]
    size = wf["empty"]["inputs"]
    latents = txt(
        prompt,
        negative_prompt=negative,
        height=size["height"],
        width=size["width"],
        num_inference_steps=first["steps"],
        guidance_scale=cfg,
        generator=torch.Generator("cpu").manual_seed(first["seed"]),
        output_type="latent",
    ).images
    vae = txt.vae
    with torch.no_grad():
        decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    first_image = txt.image_processor.postprocess(decoded, output_type="pt").permute(0, 2, 3, 1)
    refined = img(
        prompt,
        image=latents,
        strength=refine["strength"],
        negative_prompt=negative,
        num_inference_steps=refine["steps"],
        guidance_scale=wf["refine_denoise"]["inputs"]["cfg"],
        generator=torch.Generator("cpu").manual_seed(refine["seed"]),
        output_type="pt",
    ).images.permute(0, 2, 3, 1)
    pictures = []
    for i, images in enumerate((first_image, refined)):
        for j, pil in enumerate(to_pil(images)):
            pil.save(out / f"direct_{i}_{j}.png", compress_level=4)
        pictures.append(images.float().cpu().numpy())
    return pictures


def run_engine(wf: dict, settings: RunSettings) -> tuple[list[np.ndarray], float]:
    executor = Executor(default_registry())
    started = time.perf_counter()
    result = executor.run(wf, settings)
    seconds = time.perf_counter() - started
    if not result.ok:
        raise SystemExit(f"the engine run failed: {result.error and result.error.message}")
    pictures = [result.outputs[n][0].float().cpu().numpy() for n in ("decode", "refine_decode")]
    return pictures, seconds


def count_sweep(wf: dict, settings: RunSettings, unet) -> tuple[int, int]:
    calls: list[int] = []
    handle = unet.register_forward_hook(lambda *_: calls.append(1))
    executor = Executor(default_registry())
    try:
        for strength in STRENGTHS:
            wf["refine_noise"]["inputs"]["strength"] = strength
            result = executor.run(wf, settings)
            if not result.ok:
                raise SystemExit(f"the sweep failed: {result.error and result.error.message}")
    finally:
        handle.remove()
    steps = wf["noise"]["inputs"]["steps"]
    refine_steps = wf["refine_noise"]["inputs"]["steps"]
    minimum = steps + sum(strength_steps(refine_steps, s) for s in STRENGTHS)
    return len(calls), minimum


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=folders.SHIPPED_NAME)
    parser.add_argument("--models", action="append", default=[], help="another model folder")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    args = parser.parse_args(argv)
    folders.configure({"models": args.models, "threads": args.threads})
    found = folders.find_model("checkpoints", args.model, args.models)
    if found.format != "diffusers":
        raise SystemExit("the direct comparison needs a diffusers folder")
    options = {"models": args.models, "device": args.device}
    device = devices.resolve_device(options)
    wf = job(args.model, args.steps)
    txt, img = direct_pipelines(str(found.path), device)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        settings = RunSettings(output_dir=out / "engine", temp_dir=out / "temp", options=options)
        checkpoints.load_checkpoint(args.model, options)  # both sides start with the model loaded
        run_engine(wf, settings)  # warm-up, both sides
        run_direct(txt, img, wf, out)
        ours, theirs = [], []
        for _ in range(args.repeat):  # alternating, so background load hits both alike
            pictures, seconds = run_engine(wf, settings)
            ours.append(seconds)
            started = time.perf_counter()
            direct = run_direct(txt, img, wf, out)
            theirs.append(time.perf_counter() - started)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(pictures, direct, strict=True))
        model, _, _ = checkpoints.load_checkpoint(args.model, options)
        evaluations, minimum = count_sweep(job(args.model, args.steps), settings, model.unet)
    ratio = statistics.median(ours) / statistics.median(theirs)
    best = min(ours) / min(theirs)  # the fastest runs: least disturbed by other work
    print(f"model: {args.model} ({found.path}) on {device}, {args.steps} steps")
    print(f"engine  median {statistics.median(ours):.3f} s  (runs: {_fmt(ours)})")
    print(f"diffusers median {statistics.median(theirs):.3f} s  (runs: {_fmt(theirs)})")
    print(f"time ratio engine/diffusers: {ratio:.3f} of medians, {best:.3f} of fastest runs "
          "(goal <= 1.03)")  # fmt: skip
    print(f"largest picture difference engine vs diffusers: {diff:.2e}")
    print(
        f"strength sweep {', '.join(map(str, STRENGTHS))}: {evaluations} model evaluations, "
        f"minimum {minimum} ({'equal' if evaluations == minimum else 'NOT equal'})"
    )
    return 0


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


if __name__ == "__main__":
    raise SystemExit(main())
