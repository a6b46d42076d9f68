"""The memory budget on the CPU (`--vram-budget GB`): past it, the models not in use let their
weights go and read them again from their files when next used. A budget below any one model
makes every other model leave whenever a node computes: the pictures, latents and saved
checkpoints stay exactly those of a run without a budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodes.loading.folders import use_model_dirs
from nodes.loading.residency import RESIDENCY
from tests import diffusion_fixtures as df
from tests import family_fixtures as ff
from tests import test_family_workflows as family
from tests.lora_fixtures import make_lora
from tests.test_controlnet import difference_layout, original_layout, tiny_controlnet
from tests.test_workflows import run_cli

family_models = family.models

TINY = 1e-9
"""GiB: below any model."""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("budget_models")
    for kind in ("checkpoints", "loras", "controlnet"):
        (root / kind).mkdir()
    (root / "checkpoints" / "a.safetensors").symlink_to(ff.single_file("sd1"))
    (root / "checkpoints" / "b.safetensors").symlink_to(ff.single_file("sd1", seed=1))
    tensors, _ = make_lora(ff.build_pipeline("sd1", seed=1), original_names=False,
                           text_prefixes={"text_encoder": "lora_te"})  # fmt: skip
    save_file(tensors, str(root / "loras" / "ink.safetensors"))
    net = tiny_controlnet()
    net.save_pretrained(root / "controlnet" / "edges")
    save_file(original_layout(net), str(root / "controlnet" / "edges.safetensors"))
    save_file(difference_layout(net), str(root / "controlnet" / "edges_diff.safetensors"))
    use_model_dirs([root])
    return root


@pytest.fixture
def no_budget_after() -> Iterator[None]:
    yield
    RESIDENCY.configure({})


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def workflow() -> dict[str, Any]:
    """Two checkpoints, a LoRA, model and CLIP merges, three ControlNets (a diffusers folder, a
    single file, a difference file), sampling, decoding, a picture and a checkpoint saved."""
    controls = {}
    positive, negative = ["pos", 0], ["neg", 0]
    for i, loader in enumerate(("cn1", "cn2", "cn3")):
        controls[f"apply{i}"] = node(
            "ControlNetApplyAdvanced", positive=positive, negative=negative,
            control_net=[loader, 0], image=["hint", 0], strength=0.5, start_percent=0.0,
            end_percent=1.0,
        )  # fmt: skip
        positive, negative = [f"apply{i}", 0], [f"apply{i}", 1]
    return {
        "a": node("CheckpointLoaderSimple", ckpt_name="a.safetensors"),
        "b": node("CheckpointLoaderSimple", ckpt_name="b.safetensors"),
        "lora": node("LoraLoader", model=["b", 0], clip=["b", 1], lora_name="ink.safetensors",
                     strength_model=0.8, strength_clip=0.7),
        "merge": node("ModelMergeSimple", model1=["a", 0], model2=["lora", 0], ratio=0.4),
        "clip": node("CLIPMergeSimple", clip1=["a", 1], clip2=["lora", 1], ratio=0.3),
        "pos": node("CLIPTextEncode", text="a red square", clip=["clip", 0]),
        "neg": node("CLIPTextEncode", text="blurry", clip=["clip", 0]),
        "empty": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "hint": node("VAEDecode", samples=["empty", 0], vae=["a", 2]),
        "cn1": node("ControlNetLoader", control_net_name="edges"),
        "cn2": node("ControlNetLoader", control_net_name="edges.safetensors"),
        "cn3": node("DiffControlNetLoader", model=["a", 0],
                    control_net_name="edges_diff.safetensors"),
        **controls,
        "ks": node("KSampler", model=["merge", 0], seed=7, steps=3, cfg=5.0, sampler_name="euler",
                   scheduler="normal", positive=["apply2", 0], negative=["apply2", 1],
                   latent_image=["empty", 0], denoise=1.0),
        "decode": node("VAEDecode", samples=["ks", 0], vae=["b", 2]),
        "save": node("SaveImage", images=["decode", 0], filename_prefix="budget"),
        "ckpt": node("CheckpointSave", model=["merge", 0], clip=["clip", 0], vae=["a", 2],
                     filename_prefix="checkpoints/budget"),
    }  # fmt: skip


def run(models: Path, out: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(every node's outputs, the checkpoint saved) of a fresh executor (nothing cached) over
    the models the store holds."""
    settings = RunSettings(output_dir=out, temp_dir=out / "tmp",
                           options={"models": [str(models)], "device": "cpu"})  # fmt: skip
    result = Executor(df.diffusion_registry()).run(workflow(), settings)
    assert result.ok, result.error
    (saved,) = (out / "checkpoints").glob("budget_*.safetensors")
    return result.outputs, load_file(str(saved))


def test_a_budget_below_every_model_changes_no_number(models, tmp_path, no_budget_after):
    outputs, saved = run(models, tmp_path / "free")
    releases, restores = RESIDENCY.releases, RESIDENCY.restores
    RESIDENCY.configure({"vram_budget": TINY})
    bounded, saved_bounded = run(models, tmp_path / "bounded")
    assert RESIDENCY.releases > releases and RESIDENCY.restores > restores
    held = RESIDENCY.released()
    assert held and all(t.is_meta for m in held for t in m.parameters())  # let go after
    assert torch.equal(outputs["ks"][0].samples, bounded["ks"][0].samples)
    for key in ("decode", "hint"):
        assert torch.equal(outputs[key][0], bounded[key][0]), key
    assert saved.keys() == saved_bounded.keys()
    assert all(torch.equal(saved[k], saved_bounded[k]) for k in saved)
    RESIDENCY.configure({})  # without a budget every model has its weights again
    assert not RESIDENCY.released()
    assert not any(t.is_meta for m in held for t in m.parameters())


BUDGET_WORKFLOWS = ["comfy_sdxl_base_refiner", "comfy_unclip", "txt2img_img2img",
                    "comfy_controlnet_scribble"]  # fmt: skip
"""Single files of two families, an unCLIP checkpoint's image encoder, the shipped model (a
diffusers folder, native nodes) and its ControlNet (a diffusers folder)."""


@pytest.mark.parametrize("name", BUDGET_WORKFLOWS)
def test_family_workflows_give_the_same_pictures_within_the_budget(
    name, family_models, tmp_path, no_budget_after
):
    sets = family.tiny_run_arguments(name, family_models)
    free = run_cli(name, tmp_path / "free", *sets)
    restores = RESIDENCY.restores
    bounded = run_cli(name, tmp_path / "bounded", *sets, "--vram-budget", str(TINY))
    assert RESIDENCY.restores > restores
    pictures = [run["outputs"] for report in (free, bounded) for run in report["runs"]]
    assert len(pictures[0]) == len(pictures[1]) > 0
    for one, two in zip(*pictures, strict=True):
        with Image.open(one) as a, Image.open(two) as b:
            assert a.tobytes() == b.tobytes()
