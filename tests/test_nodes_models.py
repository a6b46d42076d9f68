"""Finding and loading models: folders, single-file checkpoints offline, pickle refusal, the
store that keeps a model loaded, and the device choice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import nodes.models as M
from tests import diffusion_fixtures as df
from tests.diffusion_fixtures import TINY_NAME, write_single_file

tiny_sd = df.tiny_sd
CPU = {"device": "cpu"}


@pytest.fixture(scope="module")
def single(tiny_sd, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("single")
    write_single_file(tiny_sd / TINY_NAME, folder / "tiny.safetensors")
    return folder


def _assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_list_models_names_paths_and_formats(tmp_path, monkeypatch, tiny_sd):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.safetensors").write_bytes(b"")
    (tmp_path / "b.ckpt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a model")
    found = {m["name"]: m for m in M.list_models([str(tmp_path)])}
    assert found["sub/a.safetensors"] == {
        "name": "sub/a.safetensors",
        "path": str(tmp_path / "sub" / "a.safetensors"),
        "format": "safetensors",
    }
    assert found["b.ckpt"]["format"] == "pickle"
    assert "notes.txt" not in found
    (tmp_path / "b.config").mkdir()  # a single file's local configuration is no model
    (tmp_path / "b.config" / "model_index.json").write_text("{}")
    assert "b.config" not in M.model_names() + [m["name"] for m in M.list_models([str(tmp_path)])]
    # The tiny model's folder was added by the fixture: a diffusers folder by its name.
    assert found[TINY_NAME]["format"] == "diffusers"
    # The environment variable adds folders too.
    other = tmp_path / "env"
    other.mkdir()
    (other / "c.safetensors").write_bytes(b"")
    monkeypatch.setenv(M.ENV_VAR, os.pathsep.join(["/nonexistent", str(other)]))
    assert "c.safetensors" in M.model_names()


def test_single_file_checkpoint_loads_offline(single, tiny_sd, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any hub call would fail
    options = {**CPU, "models": [str(single)]}
    model, clip, vae = M.load_checkpoint("tiny.safetensors", options)
    ref_model, ref_clip, ref_vae = M.load_checkpoint(TINY_NAME, CPU)
    _assert_same_weights(model.unet, ref_model.unet)
    _assert_same_weights(clip.text_encoder, ref_clip.text_encoder)
    _assert_same_weights(vae.vae, ref_vae.vae)
    assert model.scheduler_config["beta_schedule"] == "scaled_linear"


def test_single_file_without_a_local_config_says_where_to_put_one(tmp_path, single):
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((single / "tiny.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="lone.config"):
        M.load_checkpoint("lone.safetensors", {**CPU, "models": [str(tmp_path)]})


def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path, single):
    from safetensors.torch import load_file

    state = load_file(str(single / "tiny.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "old.ckpt")
    (tmp_path / "old.config").symlink_to(single / "tiny.config")
    options = {**CPU, "models": [str(tmp_path)]}
    with pytest.raises(M.PickleRefused, match="can run arbitrary code"):
        M.load_checkpoint("old.ckpt", options)
    model, _, _ = M.load_checkpoint("old.ckpt", {**options, "allow_pickle": True})
    ref, _, _ = M.load_checkpoint(TINY_NAME, CPU)
    _assert_same_weights(model.unet, ref.unet)


def test_pickle_opt_in_still_refuses_code(tmp_path, single):
    """weights_only=True: a pickle that would call a function is not loaded."""

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo never",))

    torch.save({"state_dict": {"x": Boom()}}, tmp_path / "evil.ckpt")
    (tmp_path / "evil.config").symlink_to(single / "tiny.config")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        M.load_checkpoint("evil.ckpt", {**CPU, "models": [str(tmp_path)], "allow_pickle": True})


def test_models_load_once_and_reload_when_the_file_changes(single):
    options = {**CPU, "models": [str(single)]}
    first = M.load_checkpoint("tiny.safetensors", options)
    loads = M.STORE.loads
    assert M.load_checkpoint("tiny.safetensors", options)[0] is first[0]
    assert M.STORE.loads == loads
    path = single / "tiny.safetensors"
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 10))
    again = M.load_checkpoint("tiny.safetensors", options)
    assert again[0] is not first[0] and M.STORE.loads == loads + 1


def test_device_choice(monkeypatch):
    assert M.resolve_device({"device": "cpu"}) == torch.device("cpu")
    assert M.resolve_device({"device": "cuda:1"}) == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert M.resolve_device({}) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert M.resolve_device({"device": "auto"}) == torch.device("cuda")
    assert M.compute_dtype(torch.device("cuda")) == torch.float16
    assert M.compute_dtype(torch.device("cpu")) == torch.float32


def test_unknown_model_name_is_a_validation_error(tiny_sd):
    from nodegraph import ValidationFailed
    from nodegraph.executor import Executor

    wf = {
        "ckpt": {"class_type": "CheckpointLoader", "inputs": {"name": "missing-model"}},
        "show": {"class_type": "ShowValue", "inputs": {"value": ["ckpt", 0]}},
    }
    with pytest.raises(ValidationFailed, match="missing-model"):
        Executor(df.diffusion_registry()).validate(wf)


def test_nodegraph_models_lists_them_as_json(single, capsys):
    import json

    from nodegraph.cli import main

    assert main(["models", "--json", "--models", str(single)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"name": "tiny.safetensors", "path": str(single / "tiny.safetensors"),
            "format": "safetensors"} in listed  # fmt: skip
    assert all(set(m) == {"name", "path", "format"} for m in listed)
