"""CheckpointSave on tiny checkpoints: the package's original-layout writer against the tests' own
converter, LoRAs and merges baked into the file without touching the loaded model, the file
loading back as the same model, ComfyUI's metadata, counter and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nodegraph import RunSettings
from nodegraph.errors import ValidationFailed
from nodegraph.executor import Executor
from nodes.formats.families import FAMILIES
from nodes.formats.original_layout import original_checkpoint
from nodes.loading import checkpoints as C
from nodes.loading.folders import use_model_dirs
from nodes.loading.patching import patched
from tests import diffusion_fixtures as df
from tests import family_fixtures as ff
from tests.lora_fixtures import make_lora, merged

FAMILY_KEY = {"sd1_inpaint": "sd1", "sdxl_inpaint": "sdxl", "sd2_v": "sd2"}
"""The tests' family names that are not nodes.formats.families' keys -> the key."""
LORA_TOWERS = {"sd1": {"text_encoder": "lora_te"},
               "sdxl": {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}}  # fmt: skip
CHECKPOINTS = ("sd1", "sdxl", "sd2_v", "sdxl_refiner")
STRENGTHS = {"strength_model": 0.8, "strength_clip": 0.6}


def writer_output(pipe: Any, family: str) -> dict[str, torch.Tensor]:
    """The package writer's tensors for a diffusers pipeline of a tests' family."""
    key = FAMILY_KEY.get(family, family)
    towers = {
        spec.key: getattr(pipe, spec.diffusers_component).state_dict()
        for spec in FAMILIES[key].towers
    }
    unet = (pipe.unet.state_dict(), pipe.unet.config)
    return original_checkpoint(key, unet, (pipe.vae.state_dict(), pipe.vae.config), towers)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sdxl_refiner", "sd1_inpaint", "sdxl_inpaint"])
def test_the_writer_equals_the_tests_converter_key_for_key(family):
    pipe = ff.build_pipeline(family)
    ours, theirs = writer_output(pipe, family), ff.original_state_dict(pipe, family)
    assert sorted(ours) == sorted(theirs) and len(ours) > 400
    for key, tensor in theirs.items():
        assert ours[key].shape == tensor.shape and torch.equal(ours[key], tensor), key


def test_sd2_differs_only_by_what_the_tests_invent():
    """The tests' SD 2 file adds a random text projection and OpenCLIP's unused last layer."""
    pipe = ff.build_pipeline("sd2")
    ours, theirs = writer_output(pipe, "sd2"), ff.original_state_dict(pipe, "sd2")
    invented = {k for k in theirs if ".resblocks.2." in k or k.endswith("text_projection")}
    assert set(ours) == set(theirs) - invented and len(invented) == 13
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


# --------------------------------------------------------------------------- workflows


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("save_models")
    (root / "checkpoints").mkdir()
    (root / "loras").mkdir()
    for family in CHECKPOINTS:
        (root / "checkpoints" / f"{family}.safetensors").symlink_to(ff.single_file(family))
    (root / "checkpoints" / "sd1_b.safetensors").symlink_to(ff.single_file("sd1", seed=1))
    for family, prefixes in LORA_TOWERS.items():
        tensors, _ = make_lora(
            ff.build_pipeline(family), original_names=family == "sdxl", text_prefixes=prefixes
        )
        save_file(tensors, str(root / "loras" / f"{family}.safetensors"))
    use_model_dirs([root])
    return root


settings = df.folder_settings
executor = df.folder_executor


def save_workflow(ckpt: str, lora: dict | None = None, prefix: str | None = None) -> dict:
    """CheckpointLoaderSimple -> (LoraLoader) -> CheckpointSave."""
    wf: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}
    }
    model, clip = ["ckpt", 0], ["ckpt", 1]
    if lora is not None:
        wf["lora"] = {"class_type": "LoraLoader",
                      "inputs": {"model": model, "clip": clip, **lora}}  # fmt: skip
        model, clip = ["lora", 0], ["lora", 1]
    inputs = {"model": model, "clip": clip, "vae": ["ckpt", 2]}
    if prefix is not None:
        inputs["filename_prefix"] = prefix
    return wf | {"save": {"class_type": "CheckpointSave", "inputs": inputs}}


def run(executor: Executor, wf: dict, settings: RunSettings, **extra: Any) -> Any:
    result = executor.run(wf, settings, extra=extra)
    assert result.ok, result.error
    return result


def states(model: Any, clip: Any, vae: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Every weight as the model samples and the CLIP encodes (patches applied), by part."""
    out = {"vae": {k: v.clone() for k, v in vae.vae.state_dict().items()}}
    with patched(model.unet, model.patches) as unet:
        out["unet"] = {k: v.clone() for k, v in unet.state_dict().items()}
    for tower in clip.towers:
        mine = [p for key, p in clip.patches if key == tower.key]
        with patched(tower.encoder, mine) as encoder:
            out[tower.key] = {k: v.clone() for k, v in encoder.state_dict().items()}
    return out


def reloaded(path: Path, settings: RunSettings) -> tuple[Any, Any, Any]:
    """The written file through CheckpointLoaderSimple's loader (its folder as a models root)."""
    options = {**settings.options, "models": [str(settings.output_dir)]}
    name = path.relative_to(settings.output_dir / "checkpoints").as_posix()
    return C.load_checkpoint(name, options)


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((x - b[k]).abs().max().item() for k, x in a.items() if x.numel())


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_lora_is_baked_in_and_the_loaded_checkpoint_is_left_alone(family, executor, settings):
    base = C.load_checkpoint(f"{family}.safetensors", settings.options)
    before = states(base[0], base[1], base[2])
    lora = {"lora_name": f"{family}.safetensors", **STRENGTHS}
    result = run(executor, save_workflow(f"{family}.safetensors", lora), settings)
    (path,) = (settings.output_dir / "checkpoints").glob("*.safetensors")
    assert path.name == "ComfyUI_00001_.safetensors"
    lora_model, lora_clip = result.outputs["lora"]
    want = states(lora_model, lora_clip, base[2])
    got = states(*reloaded(path, settings))
    for part, weights in want.items():
        assert largest_difference(got[part], weights) == 0.0, part
    assert largest_difference(want["unet"], before["unet"]) > 1e-3  # the LoRA is in the file
    after = states(base[0], base[1], base[2])
    for part, weights in before.items():  # the loaded checkpoint kept its own weights
        assert all(torch.equal(weights[k], after[part][k]) for k in weights), part


def test_the_file_equals_the_lora_merged_by_hand_in_the_tests_layout(executor, settings):
    pipe = ff.build_pipeline("sd1")
    _, deltas = make_lora(pipe, original_names=False, text_prefixes=LORA_TOWERS["sd1"])
    hand = ff.original_state_dict(merged(pipe, deltas, **STRENGTHS), "sd1")
    lora = {"lora_name": "sd1.safetensors", **STRENGTHS}
    run(executor, save_workflow("sd1.safetensors", lora, "by_hand/sd1"), settings)
    written = load_file(str(settings.output_dir / "by_hand" / "sd1_00001_.safetensors"))
    assert sorted(written) == sorted(hand)
    assert largest_difference(written, hand) < 1e-6


def test_a_merge_is_baked_in(executor, settings):
    wf = save_workflow("sd1.safetensors")
    wf["b"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd1_b.safetensors"}}
    merge = {"model1": ["ckpt", 0], "model2": ["b", 0], "ratio": 0.25}
    wf["merge"] = {"class_type": "ModelMergeSimple", "inputs": merge}
    wf["save"]["inputs"]["model"] = ["merge", 0]
    run(executor, wf, settings)
    written = load_file(str(settings.output_dir / "checkpoints" / "ComfyUI_00001_.safetensors"))
    a, b = load_file(str(ff.single_file("sd1"))), load_file(str(ff.single_file("sd1", seed=1)))
    unet = [k for k in a if k.startswith("model.diffusion_model.")]
    want = {k: 0.25 * a[k] + 0.75 * b[k] for k in unet}
    assert largest_difference({k: written[k] for k in unet}, want) < 1e-6
    rest = [k for k in a if k not in want]  # the text encoder and VAE are model1's own
    assert all(torch.equal(written[k], a[k]) for k in rest)


@pytest.mark.parametrize("family", ["sd2_v", "sdxl_refiner"])
def test_other_families_load_back_as_the_same_model(family, executor, settings):
    run(executor, save_workflow(f"{family}.safetensors"), settings)
    path = settings.output_dir / "checkpoints" / "ComfyUI_00001_.safetensors"
    base = C.load_checkpoint(f"{family}.safetensors", settings.options)
    again = reloaded(path, settings)
    assert dict(again[0].unet.config) == dict(base[0].unet.config)
    assert again[0].scheduler_config == base[0].scheduler_config
    want, got = states(*base), states(*again)
    assert all(largest_difference(got[p], w) == 0.0 for p, w in want.items())
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["modelspec.predict_key"] == ("v" if family == "sd2_v" else "epsilon")
        assert ("v_pred" in set(f.keys())) == (family == "sd2_v")


# --------------------------------------------------------------------------- metadata, names


def test_the_metadata_holds_the_workflow_and_comfyuis_modelspec(executor, settings):
    wf = save_workflow("sdxl.safetensors")
    canvas = {"nodes": [{"id": 1, "type": "CheckpointSave"}], "links": []}
    run(executor, wf, settings, extra_pnginfo={"workflow": canvas})
    path = settings.output_dir / "checkpoints" / "ComfyUI_00001_.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta.pop("prompt")) == wf
    assert json.loads(meta.pop("workflow")) == canvas
    assert meta == {
        "modelspec.architecture": "stable-diffusion-xl-v1-base",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.implementation": "sgm",
        "modelspec.title": "ComfyUI 1",
        "modelspec.predict_key": "epsilon",
    }
    run(executor, save_workflow("sd1.safetensors", prefix="sd1/model"), settings)
    with safe_open(str(settings.output_dir / "sd1" / "model_00001_.safetensors"), "pt") as f:
        meta = f.metadata()
    assert set(meta) == {"prompt", "modelspec.predict_key"}  # no modelspec for SD 1.x


def test_the_counter_goes_one_past_the_highest_number_as_comfyuis(executor, settings):
    folder = settings.output_dir / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("ComfyUI_00001_.safetensors", "ComfyUI_00003_.png", "ComfyUIx_00009_.png",
                 "other_00007_.safetensors", "ComfyUI_notanumber_.txt"):  # fmt: skip
        (folder / name).write_bytes(b"")
    run(executor, save_workflow("sd1.safetensors"), settings)
    path = folder / "ComfyUI_00004_.safetensors"
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["modelspec.predict_key"] == "epsilon"
    executor.cache.clear()
    run(executor, save_workflow("sd1.safetensors"), settings)
    assert (folder / "ComfyUI_00005_.safetensors").is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("prefix", ["../escaped", "/tmp/escaped", "checkpoints/../../escaped"])
def test_a_prefix_leaving_the_output_folder_is_refused_by_node_and_input(
    prefix, executor, settings
):
    with pytest.raises(ValidationFailed) as caught:
        executor.run(save_workflow("sd1.safetensors", prefix=prefix), settings)
    (error,) = caught.value.errors
    assert (error.node_id, error.input_name) == ("save", "filename_prefix")
    assert error.message.startswith("CheckpointSave: filename_prefix must stay inside")
    assert not (settings.output_dir.parent / "escaped_00001_.safetensors").exists()


def test_a_clip_of_another_family_is_refused_by_name(executor, settings):
    wf = save_workflow("sd1.safetensors")
    wf["xl"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}}
    wf["save"]["inputs"]["clip"] = ["xl", 1]
    result = executor.run(wf, settings)
    assert result.status == "failed" and result.error.node_id == "save"
    assert "CheckpointSave: clip is a sdxl text encoder and model a sd1 model" in (
        result.error.message
    )
    assert not (settings.output_dir / "checkpoints").exists() or not any(
        (settings.output_dir / "checkpoints").iterdir()
    )


@pytest.mark.parametrize(
    ("ckpt", "node", "inputs", "markers"),
    [
        ("sd2_v", "ModelSamplingDiscrete", {"sampling": "v_prediction", "zsnr": True},
         {"v_pred", "ztsnr"}),
        ("sd1", "ModelSamplingDiscrete", {"sampling": "v_prediction", "zsnr": True}, set()),
        ("sdxl", "ModelSamplingContinuousEDM",
         {"sampling": "v_prediction", "sigma_max": 120.0, "sigma_min": 0.002},
         {"edm_vpred.sigma_max", "edm_vpred.sigma_min"}),
    ],
)  # fmt: skip
def test_sampling_markers_are_comfyuis(ckpt, node, inputs, markers, executor, settings):
    """v_pred / ztsnr follow the checkpoint's own prediction type, EDM's keys the node's."""
    wf = save_workflow(f"{ckpt}.safetensors")
    wf["sampling"] = {"class_type": node, "inputs": {"model": ["ckpt", 0], **inputs}}
    wf["save"]["inputs"]["model"] = ["sampling", 0]
    run(executor, wf, settings)
    written = load_file(str(settings.output_dir / "checkpoints" / "ComfyUI_00001_.safetensors"))
    found = {k for k in written if k in ("v_pred", "ztsnr") or k.startswith("edm_vpred.")}
    assert found == markers
    if markers and ckpt == "sdxl":
        assert written["edm_vpred.sigma_max"].item() == pytest.approx(120.0, rel=1e-5)
        assert written["edm_vpred.sigma_min"].item() == pytest.approx(0.002, rel=1e-5)
        saved = settings.output_dir / "checkpoints" / "ComfyUI_00001_.safetensors"
        model = C.load_checkpoint(saved.name, {"models": [str(saved.parent)]})[0]
        assert model.edm and model.sampling.axis == "continuous_edm"  # loads back as CosXL


def test_a_saved_checkpoint_loads_back_by_name_from_the_output_folder(tmp_path):
    """As ComfyUI's: the output folder's checkpoints/ is searched, so the next run names it."""
    from nodegraph.cli import main

    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    (models / "sd1.safetensors").symlink_to(ff.single_file("sd1"))
    out = tmp_path / "out"

    def run(ckpt: str) -> None:
        workflow = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "2": {"class_type": "CheckpointSave", "inputs": {
                "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                "filename_prefix": "checkpoints/again"}},
        }  # fmt: skip
        path = tmp_path / "wf.json"
        path.write_text(json.dumps(workflow))
        args = ["run", str(path), "--out", str(out), "--models", str(tmp_path / "models")]
        assert main([*args, "--device", "cpu", "--quiet"]) == 0

    run("sd1.safetensors")
    run("again_00001_.safetensors")  # found in the output folder's checkpoints/
    first, second = (load_file(out / "checkpoints" / f"again_0000{n}_.safetensors") for n in (1, 2))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
