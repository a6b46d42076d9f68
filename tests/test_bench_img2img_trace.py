"""bench/img2img_trace.py follows the very trajectory our engine's img2img takes, and prints and
draws what it promises."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import img2img_trace, model_quality
from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodegraph.registry import default_registry
from nodes.loading.folders import SHIPPED_DIR, SHIPPED_NAME
from tools import shapes

pytestmark = pytest.mark.skipif(
    not (SHIPPED_DIR / "model_index.json").is_file(), reason="the shipped model is not there yet"
)


def test_the_last_guided_prediction_is_the_engines_img2img_output() -> None:
    from diffusers import StableDiffusionPipeline

    picture = model_quality.PICTURES / "red_circle_on_blue.png"
    prompt = shapes.make_caption("circle", "green", "blue")
    steps, strength, seed, cfg = 6, 0.5, 3, 7.5
    wf = model_quality.workflow("img2img.json", SHIPPED_NAME, steps, cfg)
    wf["load"]["inputs"]["image"] = str(picture)
    wf["positive"]["inputs"]["text"] = prompt
    wf["noise"]["inputs"].update(strength=strength, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        settings = RunSettings(output_dir=Path(tmp), temp_dir=Path(tmp) / "temp")
        engine = model_quality.to_uint8(
            model_quality.run(Executor(default_registry()), wf, settings)
        )

    pipe = StableDiffusionPipeline.from_pretrained(str(SHIPPED_DIR), local_files_only=True)
    source = np.array(Image.open(picture).convert("RGB"))
    timesteps, decoded = img2img_trace.trace(pipe, source, prompt, strength, seed, steps, cfg)
    assert len(timesteps) == len(decoded) == int(steps * strength)
    assert timesteps == sorted(timesteps, reverse=True)
    guided, cond, uncond = decoded[-1]
    assert guided.shape == cond.shape == uncond.shape == source.shape
    difference = np.abs(guided.astype(int) - engine.astype(int))
    assert difference.max() <= 2, difference.max()


def test_the_script_prints_a_shift_per_timestep_and_draws_the_strip(tmp_path, capsys) -> None:
    strip = tmp_path / "strip.png"
    args = ["--strengths", "0.5", "--seeds", "1", "--steps", "4", "--strip", str(strip)]
    assert img2img_trace.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("strength 0.5:")
    shifts = dict(item.split(":") for item in lines[1].split())
    assert len(shifts) == 2 and all(0 <= float(v) <= 1.5 for v in shifts.values())
    size = Image.open(model_quality.PICTURES / "red_circle_on_blue.png").width
    assert Image.open(strip).size == (2 * 2 * size, 2 * 3 * size)  # 2 steps x 3 rows, doubled
