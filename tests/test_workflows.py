"""The example workflows in workflows/: each runs through the CLI, on the tiny model made in the
test (always) and on the shipped model (when it is there); strength sweeps re-run only the tail.
The canvas-format (UI) workflows in workflows/comfy/ run the same way, converted by the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nodegraph.cli import main
from nodegraph.registry import default_registry
from nodegraph.ui_format import detect_format, ui_to_api
from nodes.loading.checkpoints import shipped_size
from nodes.loading.folders import SHIPPED_DIR, SHIPPED_NAME
from tests import diffusion_fixtures as df
from tests.diffusion_fixtures import TINY_NAME, write_picture
from tools import shapes

tiny_sd = df.tiny_sd
one_thread = df.one_thread
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
NAMES = [
    "txt2img",
    "img2img",
    "txt2img_img2img",
    "comfy_txt2img",
    "comfy_img2img",
    "comfy_txt2img_img2img",
    "comfy_custom_sampling",
    "comfy_inpaint",
    "comfy_hires_fix",
    "comfy_outpaint",
    "comfy_area_composition",
    "comfy_controlnet_scribble",
    *(f"comfy/{p.stem}" for p in sorted((WORKFLOWS / "comfy").glob("*.json"))),
]
"""API-format workflows by name; "comfy/NAME" are ComfyUI canvas (UI) files."""
RESIZED = {
    "comfy_hires_fix": lambda side: (2 * side, 2 * side),  # LatentUpscaleBy 2
    "comfy_outpaint": lambda side: (side + 64, side),  # ImagePadForOutpaint 32 left and right
    "comfy_area_composition": lambda side: (2 * side, side),  # two model-sized halves
}
"""Workflows whose pictures come out at another size than the model's: side -> (w, h)."""


def output_size(name: str, side: int) -> tuple[int, int]:
    return RESIZED.get(name, lambda s: (s, s))(side)
# The AddNoise / KSampler ids a strength sweep targets, and what must re-run after the first.
SWEEPS = {
    "img2img": ("noise.strength", {"noise", "denoise", "decode", "save"}),
    "txt2img_img2img": (
        "refine_noise.strength",
        {"refine_noise", "refine_denoise", "refine_decode", "refine_save"},
    ),
    "comfy_txt2img_img2img": ("12.denoise", {"12", "13", "14"}),
    "comfy/txt2img_img2img": ("12.denoise", {"12", "13", "14"}),
}
shipped = pytest.mark.skipif(
    not (SHIPPED_DIR / "model_index.json").is_file(), reason="the shipped model is not there yet"
)


TINY_CONTROLNET = "tiny-scribble"
"""A ControlNet of the tiny model (from its UNet), for workflows that load one: the shipped
scribble ControlNet fits the shipped model only."""


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_sd: Path) -> str:
    from diffusers import ControlNetModel, UNet2DConditionModel

    folder = tiny_sd / "controlnet" / TINY_CONTROLNET
    if not (folder / "config.json").is_file():
        unet = UNet2DConditionModel.from_pretrained(str(tiny_sd / TINY_NAME / "unet"))
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
        net.save_pretrained(str(folder), safe_serialization=True)
    return TINY_CONTROLNET


def load(name: str) -> dict:
    """A workflow in the API format (a canvas file converted as the CLI converts it)."""
    data = json.loads((WORKFLOWS / f"{name}.json").read_text())
    if detect_format(data) == "ui":
        data, warnings = ui_to_api(data, default_registry())
        assert warnings == [], (name, warnings)
    return data


def overrides(name: str, model: str, picture: Path | None, size: int | None = None) -> list[str]:
    """--set arguments: the model to use and, where given, another picture and latent size."""
    wf = load(name)
    sets = []
    for node_id, node in wf.items():
        inputs = node["inputs"]
        for key in ("name", "ckpt_name"):
            if key in inputs and node["class_type"].startswith("CheckpointLoader"):
                sets += ["--set", f"{node_id}.{key}={model}"]
        if node["class_type"] == "LoadImage" and picture is not None:
            sets += ["--set", f"{node_id}.image={picture}"]
        if node["class_type"] == "EmptyLatentImage" and size is not None:
            wide = inputs["width"] // inputs["height"]  # the workflow's aspect, kept
            sets += ["--set", f"{node_id}.width={size * wide}", "--set", f"{node_id}.height={size}"]
        if node["class_type"] == "ControlNetLoader" and model == TINY_NAME:
            sets += ["--set", f"{node_id}.control_net_name={TINY_CONTROLNET}"]
    return sets


def run_cli(name: str, out: Path, *extra: str) -> dict:
    report = out / "report.json"
    args = ["run", str(WORKFLOWS / f"{name}.json"), "--out", str(out), "--report", str(report)]
    code = main([*args, "--device", "cpu", "--quiet", *extra])
    data = json.loads(report.read_text())
    assert code == 0, data
    return data


def shipped_picture(name: str) -> Path | None:
    """The picture a workflow loads, if it is in the repository."""
    for node in load(name).values():
        if node["class_type"] == "LoadImage":
            path = (WORKFLOWS / name).parent / node["inputs"]["image"]
            return path if path.is_file() else None
    return None


@shipped
def test_shipped_pictures_are_the_test_pictures_at_the_models_size(tmp_path):
    drawn = shapes.write_test_pictures(tmp_path, shipped_size())
    assert sorted(p.name for p in drawn) == sorted(p.name for p in (WORKFLOWS / "images").iterdir())
    for path in drawn:
        with Image.open(path) as new, Image.open(WORKFLOWS / "images" / path.name) as ours:
            assert np.array_equal(np.asarray(new), np.asarray(ours)), path.name


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    return write_picture(tmp_path_factory.mktemp("pictures") / "disc.png")


def test_workflows_are_valid_and_name_the_shipped_model():
    registry = default_registry()
    for name in NAMES:
        wf = load(name)
        for node in wf.values():
            assert node["class_type"] in registry, (name, node["class_type"])
            if node["class_type"].startswith("CheckpointLoader"):
                assert SHIPPED_NAME in node["inputs"].values()
        assert any(n["class_type"] == "SaveImage" for n in wf.values())


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_on_the_tiny_model(name, tiny_sd, tiny_controlnet, picture, tmp_path):
    report = run_cli(name, tmp_path, *overrides(name, TINY_NAME, picture, df.TINY_SIZE))
    (run,) = report["runs"]
    assert run["status"] == "success" and run["outputs"]
    for path in run["outputs"]:
        with Image.open(path) as img:
            assert img.size == output_size(name, df.TINY_SIZE)
            embedded = json.loads(img.text["prompt"])  # the workflow as run, --set applied
    assert embedded.keys() == load(name).keys()
    loaders = [n for n in embedded.values() if n["class_type"].startswith("CheckpointLoader")]
    assert TINY_NAME in loaders[0]["inputs"].values()


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_strength_sweep_reruns_only_the_tail(name, tiny_sd, picture, tmp_path):
    target, tail = SWEEPS[name]
    sets = overrides(name, TINY_NAME, picture, df.TINY_SIZE)
    report = run_cli(name, tmp_path, *sets, "--sweep", f"{target}=0.3,0.5,0.7")
    first, *rest = report["runs"]
    assert len(rest) == 2 and tail <= set(first["executed"])
    for run in rest:
        assert set(run["executed"]) == tail, run["executed"]


@shipped
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_on_the_shipped_model(name, tmp_path, picture, one_thread):
    wanted = shipped_picture(name)
    extra = overrides(name, SHIPPED_NAME, picture) if wanted is None and "img2img" in name else []
    report = run_cli(name, tmp_path, *extra)
    (run,) = report["runs"]
    assert run["status"] == "success" and run["outputs"]
    if not extra:  # the workflow as shipped works at the model's native size
        for path in run["outputs"]:
            with Image.open(path) as img:
                assert img.size == output_size(name, shipped_size())
                if name.startswith("comfy/"):  # as ComfyUI: the PNG keeps the canvas it ran
                    canvas = json.loads((WORKFLOWS / f"{name}.json").read_text())
                    assert json.loads(img.text["workflow"]) == canvas


@shipped
@pytest.mark.slow
def test_main_job_strength_sweep_on_the_shipped_model(tmp_path, one_thread):
    target, tail = SWEEPS["txt2img_img2img"]
    report = run_cli("txt2img_img2img", tmp_path, "--sweep", f"{target}=0.3,0.5,0.7")
    first, *rest = report["runs"]
    assert {"denoise", "refine_denoise"} <= set(first["executed"])
    assert [set(r["executed"]) for r in rest] == [tail, tail]


@shipped
@pytest.mark.slow
def test_inpainting_on_the_shipped_model_keeps_every_pixel_outside_the_mask(tmp_path, one_thread):
    """comfy_inpaint: SetLatentNoiseMask repaints the painted region; ImageCompositeMasked puts
    the picture's own pixels back outside it (the VAE's decoder alone spreads a repaint over
    the whole picture: 11.7/255 on average outside the mask on the shipped VAE)."""
    report = run_cli("comfy_inpaint", tmp_path)
    (path,) = report["runs"][0]["outputs"]
    source = np.asarray(Image.open(shipped_picture("comfy_inpaint")).convert("RGBA"), np.int16)
    out = np.asarray(Image.open(path).convert("RGB"), np.int16)
    outside, inside = source[..., 3] == 255, source[..., 3] == 0
    assert outside.sum() > 5000 and inside.sum() > 2000
    assert np.abs(out - source[..., :3])[outside].max() <= 1
    assert np.abs(out - source[..., :3])[inside].mean() > 20
