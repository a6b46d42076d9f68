"""The family workflows in workflows/ (SDXL base then refiner, a LoRA on SD 1.x, an
InstructPix2Pix edit, an unCLIP variation, GLIGEN boxes, an SDXL revision) run through the CLI
on tiny checkpoints named as the real files, in a ComfyUI-style models folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nodegraph.registry import default_registry
from nodes.loading.checkpoints import load_checkpoint
from tests import family_fixtures as ff
from tests.clip_vision_fixtures import tiny_state
from tests.gligen_cases import gligen_state
from tests.lora_fixtures import make_lora
from tests.test_workflows import WORKFLOWS, load, run_cli

CHECKPOINTS = {
    "sd_xl_base_1.0.safetensors": "sdxl",
    "sd_xl_refiner_1.0.safetensors": "sdxl_refiner",
    "v1-5-pruned-emaonly.safetensors": "sd1",
    "instruct-pix2pix-00-22000.safetensors": "sd1_ip2p",
    "sd21-unclip-h.safetensors": "sd2_unclip",
}
GLIGEN = "gligen_sd14_textbox_pruned.safetensors"
FAMILY_UI = sorted((WORKFLOWS / "comfy" / "families").glob("*.json"))
NAMES = ["sdxl_base_refiner", "comfy_sdxl_base_refiner", "comfy_lora_sd1", "comfy_instruct_pix2pix",
         "comfy_unclip", "comfy_gligen", "comfy_sdxl_revision",
         *(f"comfy/families/{p.stem}" for p in FAMILY_UI)]  # fmt: skip
"""API workflows, and the same as ComfyUI canvas (UI) files in workflows/comfy/families/."""
CHECKPOINT_OF = {family: name for name, family in CHECKPOINTS.items()}
SIZED = ("EmptyLatentImage", "ImageScale")
"""Nodes whose width and height give the picture's size: set to the tiny models' 64 px."""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("comfy_models")
    (root / "checkpoints").mkdir()
    (root / "loras").mkdir()
    for name, family in CHECKPOINTS.items():
        (root / "checkpoints" / name).symlink_to(ff.single_file(family))
    tensors, _ = make_lora(
        ff.build_pipeline("sd1"), original_names=False, text_prefixes={"text_encoder": "lora_te"}
    )
    save_file(tensors, str(root / "loras" / "ink_style.safetensors"))
    (root / "gligen").mkdir()
    sd1 = load_checkpoint(CHECKPOINT_OF["sd1"], {"models": [str(root)]})[0]
    save_file(gligen_state(sd1.unet), str(root / "gligen" / GLIGEN))
    (root / "clip_vision").mkdir()  # bigG's image encoder stand-in: embeddings the pooled width
    vision = tiny_state(projection_dim=ff.OPEN_CLIP_G["width"])
    save_file(vision, str(root / "clip_vision" / "clip_vision_g.safetensors"))
    return root


def test_the_family_workflows_name_real_files_and_known_nodes():
    registry = default_registry()
    for name in NAMES:
        for node in load(name).values():
            assert node["class_type"] in registry, (name, node["class_type"])
            if node["class_type"].startswith("CheckpointLoader"):
                assert set(node["inputs"].values()) & set(CHECKPOINTS), name


def tiny_run_arguments(name: str, models: Path) -> list[str]:
    """CLI arguments running a family workflow on the tiny checkpoints of `models`, at 64 px."""
    sets = ["--models", str(models)]
    for node_id, node in load(name).items():
        if node["class_type"] in SIZED:
            sets += ["--set", f"{node_id}.width=64", "--set", f"{node_id}.height=64"]
    return sets


@pytest.mark.parametrize("name", NAMES)
def test_family_workflow_runs_on_tiny_checkpoints(name, models, tmp_path):
    report = run_cli(name, tmp_path, *tiny_run_arguments(name, models))
    (run,) = report["runs"]
    assert run["status"] == "success" and run["outputs"], run
    for path in run["outputs"]:
        with Image.open(path) as img:
            assert img.size == (64, 64)
            assert json.loads(img.text["prompt"]).keys() == load(name).keys()
    assert (WORKFLOWS / f"{name}.json").is_file()
