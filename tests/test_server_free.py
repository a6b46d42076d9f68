"""POST /free (ComfyUI's): `unload_models` moves the models off the device, `free_memory` also
empties the cache and drops the loaded models; both happen between jobs, never during one. The
node library's side (nodes.loading: models off the device, stores emptied) is tested on tiny
checkpoints at the end."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from nodes.loading import checkpoints, residency
from tests import family_fixtures as ff
from tests.server_fixtures import (
    LiveServer,
    get_json,
    http,
    make_registry,
    post_json,
    slow,
    wait_until,
)


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def live(tmp_path: Path, calls: list[str]) -> Iterator[LiveServer]:
    """A server whose registry has a node module answering the /free hooks (noting calls)."""
    registry = make_registry()
    holder = types.ModuleType("tests.model_holder")
    holder.unload_models = lambda: calls.append("unload_models")
    holder.free_memory = lambda: calls.append("free_memory")
    registry.register_module(holder)
    server = LiveServer(tmp_path / "data", registry)
    yield server
    server.close()


def run(live: LiveServer, prompt: dict) -> str:
    status, body = post_json(live.url, "/prompt", {"prompt": prompt, "client_id": "c"})
    assert status == 200, body
    prompt_id = body["prompt_id"]
    wait_until(lambda: prompt_id in get_json(live.url, f"/history/{prompt_id}"))
    return prompt_id


@pytest.mark.parametrize(
    "body, message",
    [
        ([True], "The body must be a JSON object."),
        ({"unload_models": "yes"}, "'unload_models' must be true or false, not \"yes\"."),
        ({"free_memory": 1}, "'free_memory' must be true or false, not 1."),
    ],
)
def test_a_bad_body_is_refused_naming_what_is_wrong(live, calls, body, message):
    status, answer = post_json(live.url, "/free", body)
    assert status == 400 and answer["error"]["message"] == message
    status, _, raw = http(live.url, "POST", "/api/free", data=b"{not json")
    assert status == 400 and b"error" in raw
    assert calls == []


def test_unload_models_then_free_memory(live, calls):
    cache = live.server.worker.executor.cache
    assert post_json(live.url, "/free", {})[0] == 200  # nothing asked: nothing done
    run(live, slow(steps=1, delay=0.0, tag="first"))
    assert len(cache) > 0 and calls == []
    assert post_json(live.url, "/free", {"unload_models": True})[0] == 200
    wait_until(lambda: calls == ["unload_models"])
    assert len(cache) > 0  # only off the device: results stay
    assert post_json(live.url, "/free", {"free_memory": True})[0] == 200
    wait_until(lambda: calls == ["unload_models", "free_memory", "unload_models"])
    assert len(cache) == 0


def test_free_waits_for_the_running_job(live, calls):
    status, body = post_json(live.url, "/prompt", {"prompt": slow(steps=40, delay=0.02)})
    prompt_id = body["prompt_id"]
    wait_until(lambda: live.server.worker.current is not None)
    assert post_json(live.url, "/free", {"unload_models": True, "free_memory": True})[0] == 200
    assert post_json(live.url, "/free", {"unload_models": True})[0] == 200  # asked twice: once
    assert calls == []  # the job runs on
    wait_until(lambda: calls == ["free_memory", "unload_models"])
    entry = get_json(live.url, f"/history/{prompt_id}")[prompt_id]
    assert entry["status"]["status_str"] == "success"


def test_the_node_library_unloads_and_drops_its_models(tmp_path):
    path = ff.single_file("sd1", seed=3)
    options = {"models": [str(path.parent)], "device": "cpu"}
    model, clip, vae = checkpoints.load_checkpoint(path.name, options)
    assert path.name in checkpoints.STORE.files()
    residency.unload_models()  # on the CPU: the weights let go, read again when used
    assert all(p.is_meta for p in model.unet.parameters())
    with residency.RESIDENCY.use([model.unet], torch.device("cpu")):
        assert not any(p.is_meta for p in model.unet.parameters())
    checkpoints.free_memory()
    assert path.name not in checkpoints.STORE.files()
    again = checkpoints.load_checkpoint(path.name, options)[0]
    assert again is not model
