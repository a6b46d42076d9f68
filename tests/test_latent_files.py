"""SaveLatent / LoadLatent: ComfyUI's .latent files, run through the executor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nodegraph.context import RunSettings
from nodegraph.errors import ValidationFailed
from nodegraph.executor import Executor
from tests.diffusion_fixtures import diffusion_registry

SAVE = {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}


def run(workflow: dict, tmp_path: Path) -> Any:
    settings = RunSettings(output_dir=tmp_path / "out", base_dir=tmp_path)
    result = Executor(diffusion_registry()).run(workflow, settings)
    assert result.ok, result.error
    return result


def saved(tmp_path: Path, name: str) -> torch.Tensor:
    return load_file(str(tmp_path / "out" / name))["latent_tensor"]


def test_save_latent_writes_comfyuis_file_with_the_workflow(tmp_path: Path) -> None:
    empty = {"class_type": "EmptyLatentImage",
             "inputs": {"width": 64, "height": 48, "batch_size": 2}}  # fmt: skip
    save = {**SAVE, "inputs": {"samples": ["1", 0], "filename_prefix": "latents/test"}}
    result = run({"1": empty, "2": save}, tmp_path)
    shown = {"filename": "test_00001_.latent", "subfolder": "latents", "type": "output"}
    assert result.ui["2"]["latents"] == [shown]
    path = tmp_path / "out" / "latents" / "test_00001_.latent"
    stored = load_file(str(path))
    assert stored["latent_tensor"].shape == (2, 4, 6, 8) and "latent_format_version_0" in stored
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["prompt"])["2"]["class_type"] == "SaveLatent"


def test_load_latent_reads_both_formats(tmp_path: Path) -> None:
    latent = torch.randn((1, 4, 6, 8), generator=torch.Generator().manual_seed(0))
    marked = {"latent_tensor": latent, "latent_format_version_0": torch.tensor([])}
    save_file(marked, str(tmp_path / "new.latent"))
    save_file({"latent_tensor": latent}, str(tmp_path / "old.latent"))  # the first format
    load = {"class_type": "LoadLatent", "inputs": {"latent": "new.latent"}}
    run({"1": load, "2": SAVE}, tmp_path)
    assert torch.equal(saved(tmp_path, "x_00001_.latent"), latent)
    run({"1": {**load, "inputs": {"latent": "old.latent"}}, "2": SAVE}, tmp_path)
    assert torch.allclose(saved(tmp_path, "x_00002_.latent"), latent / 0.18215)


def test_a_missing_latent_file_is_named_at_validation(tmp_path: Path) -> None:
    wf = {"1": {"class_type": "LoadLatent", "inputs": {"latent": "gone.latent"}}, "2": SAVE}
    executor = Executor(diffusion_registry())
    with pytest.raises(ValidationFailed, match="no latent file at .*gone.latent"):
        executor.run(wf, RunSettings(output_dir=tmp_path / "out", base_dir=tmp_path))
