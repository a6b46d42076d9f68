"""ComfyUI's published websocket client, as a user would write it against our server: POST
/prompt with its own client_id and prompt_id, read the websocket until `executing` has node
null for that prompt, GET /history/{id}, then each image with /view. Workflows use ComfyUI's
node names. On a tiny random model always; on the shipped model when it is there."""

from __future__ import annotations

import io
import json
import struct
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.server_fixtures import REPO, LiveServer, WebSocket

pytest.importorskip("nodes.sampling.ksampler", reason="the diffusion nodes are not there yet")

import tests.diffusion_fixtures as df  # noqa: E402
from nodes.loading.checkpoints import shipped_size  # noqa: E402
from tests.diffusion_fixtures import (  # noqa: E402
    TINY_NAME,
    TINY_SIZE,
    diffusion_registry,
)

SHIPPED = REPO / "nodes" / "shipped_model" / "model_index.json"
tiny_sd, one_thread = df.tiny_sd, df.one_thread  # session fixtures, used by name


def default_workflow(ckpt: str, size: int, steps: int, seed: int = 5) -> dict[str, Any]:
    """ComfyUI's default text-to-image graph in API format (the ids its examples use)."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "cfg": 7.0,
                "denoise": 1.0,
                "latent_image": ["5", 0],
                "model": ["4", 0],
                "negative": ["7", 0],
                "positive": ["6", 0],
                "sampler_name": "euler",
                "scheduler": "normal",
                "seed": seed,
                "steps": steps,
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"batch_size": 2, "height": size, "width": size},
        },
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"clip": ["4", 1], "text": "a red circle on a blue background"},
            "_meta": {"title": "CLIP Text Encode (Prompt)"},
        },
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
        },
    }


class ExampleClient:
    """The published example's steps, with urllib for HTTP (no Content-Type, as it does)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.client_id = str(uuid.uuid4())
        self.ws = WebSocket(f"ws://{address}/ws?clientId={self.client_id}")
        self.seen: list[Any] = []
        self.previews: list[bytes] = []

    def queue_prompt(self, prompt: dict[str, Any], prompt_id: str) -> None:
        payload = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        request = urllib.request.Request(
            f"http://{self.address}/prompt", data=json.dumps(payload).encode("utf-8")
        )
        urllib.request.urlopen(request, timeout=30).read()

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://{self.address}{path}", timeout=30) as response:
            return response.read()

    def get_images(self, prompt: dict[str, Any]) -> dict[str, list[bytes]]:
        prompt_id = str(uuid.uuid4())
        self.queue_prompt(prompt, prompt_id)
        for _ in range(100_000):  # bounded: a run sends far fewer frames
            frame = self.ws.recv(timeout=300)
            if not isinstance(frame, str):
                self.previews.append(frame)  # binary previews: the example skips them
                continue
            message = json.loads(frame)
            self.seen.append(message)
            data = message["data"]
            if message["type"] == "executing" and (data["node"], data["prompt_id"]) == (
                None,
                prompt_id,
            ):
                break
        history = json.loads(self.get(f"/history/{prompt_id}"))[prompt_id]
        images: dict[str, list[bytes]] = {}
        for node_id, output in history["outputs"].items():
            images[node_id] = [
                self.get("/view?" + urllib.parse.urlencode(image))
                for image in output.get("images", [])
            ]
        return images

    def close(self) -> None:
        self.ws.close()


def run_example(
    data: Path, ckpt: str, size: int, steps: int, preview_method: str = "none"
) -> tuple[dict, list, list]:
    live = LiveServer(data, registry=diffusion_registry(), preview_method=preview_method)
    client = ExampleClient(f"127.0.0.1:{live.port}")
    try:
        images = client.get_images(default_workflow(ckpt, size, steps))
        return images, client.seen, client.previews
    finally:
        client.close()
        live.close()


def check_pngs(images: dict[str, list[bytes]], size: int) -> list[Image.Image]:
    assert list(images) == ["9"] and len(images["9"]) == 2
    pictures = []
    for data in images["9"]:
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        Image.open(io.BytesIO(data)).verify()
        picture = Image.open(io.BytesIO(data))
        assert picture.format == "PNG" and picture.size == (size, size)
        pictures.append(picture.convert("RGB"))
    return pictures


@pytest.fixture
def models(tiny_sd: Path) -> Iterator[Path]:
    yield tiny_sd


def test_the_published_client_runs_comfyui_nodes_on_a_tiny_model(
    models: Path, tmp_path: Path
) -> None:
    images, seen, previews = run_example(tmp_path / "data", TINY_NAME, TINY_SIZE, steps=3)
    check_pngs(images, TINY_SIZE)
    assert previews == []  # not asked for: none (a client reading binary frames as pictures)
    kinds = [m["type"] for m in seen]
    assert kinds[0] == "status" and "execution_start" in kinds and "execution_success" in kinds
    progress = [m["data"] for m in seen if m["type"] == "progress"]
    assert [p["value"] for p in progress if p["node"] == "3"] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped model is not in nodes/shipped_model")
def test_the_published_client_runs_comfyui_nodes_on_the_shipped_model(
    tmp_path: Path, one_thread: None
) -> None:
    from nodes.loading.folders import SHIPPED_NAME

    size = shipped_size()
    images, seen, previews = run_example(
        tmp_path / "data", SHIPPED_NAME, size, steps=8, preview_method="auto"
    )
    pictures = check_pngs(images, size)
    for picture in pictures:  # a picture, not a flat colour or noise-free blank
        low, high = zip(*picture.getextrema(), strict=True)
        assert max(high) - min(low) > 32
    assert seen[-1]["type"] == "executing" and seen[-1]["data"]["node"] is None
    assert len(previews) == 8  # one per sampler step, in ComfyUI's binary framing
    for frame in previews:
        kind, fmt = struct.unpack(">II", frame[:8])
        assert kind == 1 and fmt in (1, 2)
        Image.open(io.BytesIO(frame[8:])).verify()


def test_interrupting_the_sampler_stops_it_and_the_next_run_works(
    models: Path, tmp_path: Path
) -> None:
    live = LiveServer(tmp_path / "data", registry=diffusion_registry())
    client = ExampleClient(f"127.0.0.1:{live.port}")
    try:
        steps = 400
        client.queue_prompt(default_workflow(TINY_NAME, TINY_SIZE, steps), "long")
        for _ in range(10_000):
            frame = client.ws.recv(timeout=120)
            if isinstance(frame, str) and json.loads(frame)["type"] == "progress":
                break
        request = urllib.request.Request(
            f"http://{client.address}/interrupt",
            data=b'{"prompt_id": "long"}',
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=30).read()
        last, interrupted = 0, None
        for _ in range(10_000):
            frame = client.ws.recv(timeout=60)
            if not isinstance(frame, str):
                continue
            message = json.loads(frame)
            if message["type"] == "progress":
                last = message["data"]["value"]
            elif message["type"] == "execution_interrupted":
                interrupted = message["data"]
                break
        assert interrupted is not None and interrupted["node_id"] == "3"
        assert interrupted["node_type"] == "KSampler" and last < steps
        client.ws.messages_until_done("long")  # the history is written before this end message
        history = json.loads(client.get("/history/long"))["long"]
        assert history["status"]["status_str"] == "error"
        # the model stays loaded (cached) and the next prompt runs to the end
        images = client.get_images(default_workflow(TINY_NAME, TINY_SIZE, 2, seed=6))
        check_pngs(images, TINY_SIZE)
        assert any(
            m["type"] == "execution_cached" and "4" in m["data"]["nodes"] for m in client.seen
        )
    finally:
        client.close()
        live.close()
