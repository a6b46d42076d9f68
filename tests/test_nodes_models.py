"""Model loading around the edges: pickles, devices, unknown names, `nodegraph models`."""

from __future__ import annotations

import json
import os

import pytest
import torch

from nodes import devices
from nodes.formats.tensors import CheckpointError
from nodes.loading import checkpoints as C
from tests import diffusion_fixtures as df
from tests import family_fixtures as ff

tiny_sd = df.tiny_sd
CPU = {"device": "cpu"}


def test_pickle_opt_in_still_refuses_code(tmp_path):
    """weights_only=True: a pickle that would call a function is not loaded."""

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo never",))

    torch.save({"state_dict": {"x": Boom()}}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match=r"evil\.ckpt cannot be loaded as weights"):
        C.load_checkpoint("evil.ckpt", {**CPU, "models": [str(tmp_path)], "allow_pickle": True})


def test_device_choice(monkeypatch):
    assert devices.resolve_device({"device": "cpu"}) == torch.device("cpu")
    assert devices.resolve_device({"device": "cuda:1"}) == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert devices.resolve_device({}) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device({"device": "auto"}) == torch.device("cuda")
    cuda = torch.device("cuda")
    assert devices.compute_dtype(cuda) == torch.float16
    assert devices.compute_dtype(cuda, torch.bfloat16) == torch.bfloat16
    assert devices.compute_dtype(torch.device("cpu"), torch.float16) == torch.float32


def test_unknown_model_name_is_a_validation_error(tiny_sd):
    from nodegraph import ValidationFailed
    from nodegraph.executor import Executor

    wf = {
        "ckpt": {"class_type": "CheckpointLoader", "inputs": {"name": "missing-model"}},
        "show": {"class_type": "ShowValue", "inputs": {"value": ["ckpt", 0]}},
    }
    with pytest.raises(ValidationFailed, match="missing-model"):
        Executor(df.diffusion_registry()).validate(wf)


def test_nodegraph_models_lists_kind_name_path_format_and_family(tmp_path, capsys):
    from nodegraph.cli import main

    (tmp_path / "checkpoints" / "xl").mkdir(parents=True)
    (tmp_path / "loras").mkdir()
    (tmp_path / "checkpoints" / "xl" / "base.safetensors").symlink_to(ff.single_file("sdxl"))
    (tmp_path / "checkpoints" / "v.safetensors").symlink_to(ff.single_file("sd2_v"))
    (tmp_path / "loras" / "ink.safetensors").write_bytes(b"x")
    assert main(["models", "--json", "--models", str(tmp_path)]) == 0
    listed = {(m["kind"], m["name"]): m for m in json.loads(capsys.readouterr().out)}
    base = listed[("checkpoints", "xl/base.safetensors")]
    assert base == {"kind": "checkpoints", "name": "xl/base.safetensors", "family": "sdxl",
                    "path": str(tmp_path / "checkpoints" / "xl" / "base.safetensors"),
                    "format": "safetensors"}  # fmt: skip
    assert listed[("checkpoints", "v.safetensors")]["family"] == "sd2-v"
    assert listed[("loras", "ink.safetensors")]["format"] == "safetensors"
    assert listed[("checkpoints", "nodegraph-shapes")]["family"] == "sd1"
    assert main(["models", "--models", str(tmp_path)]) == 0
    assert "xl/base.safetensors" in capsys.readouterr().out
