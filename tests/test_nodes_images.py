"""LoadImage, SaveImage and PreviewImage: masks, file fingerprints, PNG metadata, re-writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph import RunSettings
from nodegraph.errors import ValidationFailed
from nodegraph.executor import Executor
from tests.diffusion_fixtures import diffusion_registry


@pytest.fixture
def executor() -> Executor:
    return Executor(diffusion_registry())


@pytest.fixture
def settings(tmp_path: Path) -> RunSettings:
    return RunSettings(
        output_dir=tmp_path / "out",
        temp_dir=tmp_path / "tmp",
        base_dir=tmp_path,
        options={"device": "cpu"},
    )


def save_workflow(image: str, prefix: str = "pic") -> dict:
    return {
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "save": {
            "class_type": "SaveImage",
            "inputs": {"images": ["load", 0], "filename_prefix": prefix},
        },
    }


def test_rgba_gives_its_transparency_as_the_mask(executor, settings, tmp_path):
    rgba = np.zeros((6, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    rgba[2:4, 1:3, 3] = 0  # a transparent hole
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "b.png")
    wf = {
        "a": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "b": {"class_type": "LoadImage", "inputs": {"image": str(tmp_path / "b.png")}},
        "show": {"class_type": "ShowValue", "inputs": {"value": ["a", 1]}},
        "show2": {"class_type": "ShowValue", "inputs": {"value": ["b", 1]}},
    }
    result = executor.run(wf, settings)
    assert result.ok, result.error
    image, mask = result.outputs["a"]
    assert image.shape == (1, 6, 4, 3) and mask.shape == (1, 6, 4)
    assert torch.equal(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert mask[0, 2:4, 1:3].eq(1).all() and mask.sum() == 4  # ComfyUI's: 1 - alpha
    assert result.outputs["b"][1].eq(0).all()


def test_editing_the_file_reruns_loadimage(executor, settings, tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    wf = save_workflow("p.png")
    assert executor.run(wf, settings).executed == ["load", "save"]
    assert executor.run(wf, settings).executed == []
    Image.new("RGB", (8, 8), (200, 20, 30)).save(path)
    result = executor.run(wf, settings)
    assert result.executed == ["load", "save"]
    assert result.outputs["load"][0][0, 0, 0, 0] == pytest.approx(200 / 255)


def test_missing_picture_is_refused_at_validation(executor, settings):
    with pytest.raises(ValidationFailed) as caught:
        executor.run(save_workflow("nowhere.png"), settings)
    (error,) = caught.value.errors
    assert (error.node_id, error.input_name, error.type) == (
        "load",
        "image",
        "custom_validation_failed",
    )
    assert "no picture" in error.message and "nowhere.png" in error.message
    assert caught.value.comfy_body()["node_errors"]["load"]["dependent_outputs"] == ["save"]


def test_picture_gone_between_validation_and_run_fails_the_node(executor, settings, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "brief.png")
    plan = executor.validate(save_workflow("brief.png"), settings)
    (tmp_path / "brief.png").unlink()
    result = executor.run(plan, settings)
    assert result.status == "failed" and "no picture" in result.error.message
    assert result.error.node_id == "load"


def test_saved_png_embeds_the_workflow_and_parameters(executor, settings, tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "p.png")
    wf = save_workflow("p.png", prefix="sub/pic")
    ui_workflow = {"nodes": [{"id": 1}], "links": []}
    extra = {"extra_pnginfo": {"workflow": ui_workflow}, "parameters": {"load.image": "p.png"}}
    result = executor.run(wf, settings, extra=extra)
    assert result.ok, result.error
    shown = result.ui["save"]["images"]
    assert shown == [{"filename": "pic_00001_.png", "subfolder": "sub", "type": "output"}]
    with Image.open(tmp_path / "out" / "sub" / "pic_00001_.png") as png:
        text = dict(png.text)
        assert png.getpixel((0, 0)) == (10, 20, 30)
    assert json.loads(text["prompt"]) == wf
    assert json.loads(text["workflow"]) == ui_workflow
    assert json.loads(text["parameters"]) == {
        "nodes": {"load": {"class_type": "LoadImage", "image": "p.png"}},
        "values": {"load.image": "p.png"},
    }


def test_deleting_saved_files_writes_them_again(executor, settings, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    wf = save_workflow("p.png", prefix="again")
    first = executor.run(wf, settings)
    written = tmp_path / "out" / "again_00001_.png"
    assert written.is_file() and first.executed == ["load", "save"]
    assert executor.run(wf, settings).executed == []  # files there: nothing runs
    written.unlink()
    assert executor.run(wf, settings).executed == ["save"]
    assert written.is_file()
    assert executor.run(wf, settings).executed == []


def test_prefix_cannot_leave_the_output_folder(executor, settings, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    result = executor.run(save_workflow("p.png", prefix="../escape"), settings)
    assert result.status == "failed" and "leaves its folder" in result.error.message
    assert not (tmp_path / "escape_00001_.png").exists()


def test_prefix_variables_are_comfyuis(executor, settings, tmp_path, monkeypatch):
    """%width% / %height% (the first picture's) and the local time's %year% .. %second%, as
    ComfyUI's get_save_image_path fills them in; the result still stays in the output folder."""
    import time

    frozen = time.struct_time((2026, 3, 7, 9, 5, 2, 5, 66, 0))
    monkeypatch.setattr(time, "localtime", lambda *a: frozen)
    Image.new("RGB", (8, 6)).save(tmp_path / "p.png")
    prefix = "%year%-%month%-%day%/%hour%%minute%%second%_%width%x%height%"
    result = executor.run(save_workflow("p.png", prefix=prefix), settings)
    assert result.ok, result.error
    (shown,) = result.ui["save"]["images"]
    assert (shown["subfolder"], shown["filename"]) == ("2026-03-07", "090502_8x6_00001_.png")
    result = executor.run(save_workflow("p.png", prefix="%year%/../../out"), settings)
    assert result.status == "failed" and "leaves its folder" in result.error.message


def test_preview_writes_to_the_temporary_folder(executor, settings, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    wf = {
        "load": {"class_type": "LoadImage", "inputs": {"image": "p.png"}},
        "view": {"class_type": "PreviewImage", "inputs": {"images": ["load", 0]}},
    }
    result = executor.run(wf, settings)
    (item,) = result.ui["view"]["images"]
    assert item["type"] == "temp" and (tmp_path / "tmp" / item["filename"]).is_file()


def test_server_mode_confines_loadimage_to_the_input_folder(executor, tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    settings = RunSettings(
        output_dir=tmp_path / "out", input_dir=tmp_path / "in", confine_inputs=True
    )
    for name in (str(tmp_path / "secret.png"), "../secret.png"):
        with pytest.raises(ValidationFailed) as caught:
            executor.run(save_workflow(name), settings)
        (error,) = caught.value.errors
        assert (error.node_id, error.input_name) == ("load", "image")
        assert "folder" in error.message or "relative" in error.message, error.message
    # checked again when it runs: a plan validated without the host's settings is still refused
    result = executor.run(executor.validate(save_workflow("../secret.png")), settings)
    assert result.status == "failed" and result.error.node_id == "load"


def test_saved_files_are_numbered_past_the_highest_as_comfyuis(executor, settings, tmp_path):
    """ComfyUI's counter: one past the highest number of the prefix (any extension), counting
    up through the batch; `%batch_num%` is each picture's place in the batch. A number taken
    meanwhile is skipped, never overwritten (ComfyUI would overwrite)."""
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "p.png")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("pic_00001_.png", "pic_00007_.latent", "pic_x_.png", "picture_00042_.png"):
        (out / name).write_bytes(b"older")
    wf = save_workflow("p.png")
    wf["two"] = {"class_type": "ImageBatch",
                 "inputs": {"image1": ["load", 0], "image2": ["load", 0]}}  # fmt: skip
    wf["save"]["inputs"]["images"] = ["two", 0]
    result = executor.run(wf, settings)
    assert result.ok, result.error
    names = [i["filename"] for i in result.ui["save"]["images"]]
    assert names == ["pic_00008_.png", "pic_00009_.png"]
    wf["save"]["inputs"]["filename_prefix"] = "b_%batch_num%"
    first = [i["filename"] for i in executor.run(wf, settings).ui["save"]["images"]]
    again = Executor(diffusion_registry()).run(wf, settings).ui["save"]["images"]  # no cache
    again = [i["filename"] for i in again]
    assert first == ["b_0_00001_.png", "b_1_00002_.png"]
    assert again == ["b_0_00002_.png", "b_1_00003_.png"]  # not written over
    assert (out / "pic_00001_.png").read_bytes() == b"older"
