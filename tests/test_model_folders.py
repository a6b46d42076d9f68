"""The models folder contract: ComfyUI's layout, extra_model_paths.yaml, flat folders, names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodes.loading import folders as F


@pytest.fixture(autouse=True)
def no_configured_roots(monkeypatch):
    monkeypatch.setattr(F, "_configured", [])
    monkeypatch.setattr(F, "_output", [])
    monkeypatch.delenv(F.ENV_VAR, raising=False)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def pipeline_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model_index.json").write_text("{}")
    return path


def comfy_models(root: Path) -> Path:
    touch(root / "checkpoints" / "sd_xl_base_1.0.safetensors")
    touch(root / "checkpoints" / "sdxl" / "juggernaut.safetensors")
    touch(root / "checkpoints" / "old.ckpt")
    touch(root / "checkpoints" / "notes.txt")
    touch(root / "loras" / "style" / "ink.safetensors")
    touch(root / "vae" / "sdxl_vae.safetensors")
    (root / "vae" / "diffusers_vae").mkdir(parents=True)
    (root / "vae" / "diffusers_vae" / "config.json").write_text("{}")
    touch(root / "embeddings" / "easynegative.safetensors")
    touch(root / "t2i_adapter" / "sketch.safetensors")
    pipeline_folder(root / "diffusers" / "my-pipeline")
    return root


def names(kind: str, root: Path) -> list[str]:
    return [m.name for m in F.list_models(kind, [str(root)])]


def test_a_comfyui_models_folder_is_read_by_kind_with_comfyui_names(tmp_path):
    root = comfy_models(tmp_path / "models")
    checkpoints = names("checkpoints", root)
    assert checkpoints[0] == F.SHIPPED_NAME
    assert {"sd_xl_base_1.0.safetensors", "sdxl/juggernaut.safetensors", "old.ckpt"} <= set(
        checkpoints
    )
    assert "my-pipeline" in checkpoints  # a diffusers pipeline folder, by its folder name
    assert "notes.txt" not in checkpoints
    assert names("loras", root) == ["style/ink.safetensors"]
    assert names("vae", root) == ["diffusers_vae", "sdxl_vae.safetensors"]
    assert names("embeddings", root) == ["easynegative.safetensors"]
    assert names("controlnet", root) == [  # t2i_adapter counts as controlnet
        F.SHIPPED_CONTROLNET_NAME,  # the shipped model's scribble ControlNet, always first
        "sketch.safetensors",
    ]
    formats = {m.name: m.format for m in F.list_models("checkpoints", [str(root)])}
    assert formats["old.ckpt"] == "pickle" and formats["my-pipeline"] == "diffusers"
    found = F.find_model("loras", "style/ink.safetensors", [str(root)])
    assert found.path == root / "loras" / "style" / "ink.safetensors" and found.kind == "loras"


def test_a_flat_folder_still_counts_as_checkpoints(tmp_path):
    touch(tmp_path / "a.safetensors")
    touch(tmp_path / "deep" / "b.safetensors")
    pipeline_folder(tmp_path / "pipe")
    touch(tmp_path / "loras" / "l.safetensors")  # a kind folder inside is not a checkpoint
    assert set(names("checkpoints", tmp_path)) >= {"a.safetensors", "deep/b.safetensors", "pipe"}
    assert "loras/l.safetensors" not in names("checkpoints", tmp_path)
    assert names("loras", tmp_path) == ["l.safetensors"]


def test_extra_model_paths_yaml_points_at_an_existing_comfyui_install(tmp_path):
    comfy_models(tmp_path / "ComfyUI" / "models")
    more = tmp_path / "more_loras"
    touch(more / "extra.safetensors")
    yaml_file = tmp_path / "extra_model_paths.yaml"
    yaml_file.write_text(
        "comfyui:\n"
        "  base_path: ComfyUI/\n"
        "  is_default: true\n"
        "  checkpoints: models/checkpoints/\n"
        "  loras: |\n"
        "    models/loras/\n"
        f"    {more}\n"
        "  vae: models/vae/\n"
    )
    assert "sdxl/juggernaut.safetensors" in names("checkpoints", yaml_file)
    assert names("loras", yaml_file) == ["style/ink.safetensors", "extra.safetensors"]
    assert "sdxl_vae.safetensors" in names("vae", yaml_file)
    assert names("embeddings", yaml_file) == []  # not named in the yaml


def test_a_broken_yaml_is_a_clear_error(tmp_path):
    bad = tmp_path / "extra_model_paths.yaml"
    bad.write_text("comfyui: [unclosed\n")
    with pytest.raises(F.ModelsConfigError, match="extra_model_paths.yaml"):
        F.list_models("checkpoints", [str(bad)])


def test_roots_come_from_arguments_configuration_and_the_environment(tmp_path, monkeypatch):
    a, b, c = (tmp_path / n for n in "abc")
    touch(a / "checkpoints" / "one.safetensors")
    touch(b / "two.safetensors")
    touch(c / "checkpoints" / "one.safetensors")  # the same name: the first root wins
    F.use_model_dirs([b])
    monkeypatch.setenv(F.ENV_VAR, os.pathsep.join(["/nonexistent", str(c)]))
    listed = F.list_models("checkpoints", [str(a)])
    by_name = {m.name: m for m in listed}
    assert by_name["one.safetensors"].path == a / "checkpoints" / "one.safetensors"
    assert "two.safetensors" in by_name
    assert F.model_roots()[-1] == c and F.kind_dirs("checkpoints", [str(a)])[0] == a / "checkpoints"
    with pytest.raises(FileNotFoundError, match="no loras model named 'nope'"):
        F.find_model("loras", "nope")


def test_the_output_folders_model_subfolders_are_searched_last(tmp_path):
    """As ComfyUI: what CheckpointSave (or a LoRA trainer) writes to the output folder loads."""
    models, out = tmp_path / "models", tmp_path / "output"
    touch(models / "checkpoints" / "base.safetensors")
    touch(models / "checkpoints" / "merged_00001_.safetensors")
    touch(out / "checkpoints" / "merged_00001_.safetensors")  # a models root's wins
    touch(out / "checkpoints" / "merged_00002_.safetensors")
    touch(out / "loras" / "mine.safetensors")
    touch(out / "clip" / "te.safetensors")
    touch(out / "picture_00001_.safetensors")  # the output folder itself is no checkpoints folder
    F.configure({"models": [str(models)], "output_dir": str(out)})
    by_name = {m.name: m.path for m in F.list_models("checkpoints") if m.name != F.SHIPPED_NAME}
    assert list(by_name) == ["base.safetensors", "merged_00001_.safetensors",
                             "merged_00002_.safetensors"]  # fmt: skip
    first = by_name["merged_00001_.safetensors"]
    assert first == models / "checkpoints" / "merged_00001_.safetensors"
    assert [m.name for m in F.list_models("loras")] == ["mine.safetensors"]
    assert [m.name for m in F.list_models("text_encoders")] == ["te.safetensors"]
    assert F.kind_dirs("loras") == [out / "loras"]


def test_the_cli_refuses_a_missing_folder_or_a_broken_yaml_in_one_line(tmp_path, capsys):
    from nodegraph.cli import main

    bad = tmp_path / "extra_model_paths.yaml"
    bad.write_text("comfyui: [unclosed\n")
    workflow = str(Path(__file__).resolve().parents[1] / "workflows" / "comfy_txt2img.json")
    for args in (["validate", workflow, "--models", str(bad)],
                 ["models", "--models", str(tmp_path / "nowhere")]):  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert str(bad) in err or "nowhere does not exist" in err
