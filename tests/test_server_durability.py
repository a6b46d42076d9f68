"""Restart and crash durability of the real `python -m server` in a subprocess: kill -9 while
jobs are queued and running, start again, and every job reaches exactly one final state."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.server_fixtures import (
    free_port,
    get_json,
    http,
    post_json,
    slow,
    start_subprocess,
    wait_until,
)


def write_output(value: int) -> dict:
    return {"1": {"class_type": "WriteOutput", "inputs": {"value": value, "prefix": "dur"}}}


def running(url: str) -> list[str]:
    return [item[1] for item in get_json(url, "/queue")["queue_running"]]


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_jobs_survive_kill_9_and_each_ends_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        procs.append(start_subprocess(data, port))
        return procs[-1]

    try:
        proc = start()
        submitted = []
        for body in (
            {"prompt": slow(steps=400, delay=0.01, tag="a1"), "prompt_id": "a1"},
            {"prompt": slow(steps=60, delay=0.05, tag="a2"), "prompt_id": "a2"},
            {"prompt": write_output(3), "prompt_id": "j3"},
            {"prompt": write_output(4), "prompt_id": "j4"},
        ):
            status, answer = post_json(url, "/prompt", body)
            assert status == 200, answer
            submitted.append(answer["prompt_id"])
        wait_until(lambda: running(url) == ["a1"])
        kill(proc)  # a1 running (first start), a2, j3, j4 queued

        proc = start()
        wait_until(lambda: running(url) == ["a1"])  # queued again once, runs again
        assert [i[1] for i in get_json(url, "/queue")["queue_pending"]] == ["a2", "j3", "j4"]
        kill(proc)  # a1 dies running a second time

        proc = start()
        wait_until(lambda: running(url) == ["a2"])
        failed = get_json(url, "/history/a1")["a1"]
        assert failed["status"]["status_str"] == "error"
        assert failed["status"]["messages"][-1][1]["exception_type"] == "ServerRestarted"
        kill(proc)  # a2 running (first start)

        proc = start()
        wait_until(lambda: len(get_json(url, "/history")) == 4, timeout=30)
        history = get_json(url, "/history")
        assert sorted(history) == sorted(submitted)  # each once, nothing lost
        states = {pid: entry["status"]["status_str"] for pid, entry in history.items()}
        assert states == {"a1": "error", "a2": "success", "j3": "success", "j4": "success"}
        assert history["a2"]["outputs"] == {"9": {"text": ["60"]}}
        assert get_json(url, "/queue") == {"queue_running": [], "queue_pending": []}
        for pid in ("j3", "j4"):
            (image,) = history[pid]["outputs"]["1"]["images"]
            status, _, body = http(url, "GET", f"/view?filename={image['filename']}&type=output")
            assert status == 200
            Image.open(io.BytesIO(body)).verify()
        out = data / "output"
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

        # a clean stop (SIGTERM) puts the running job back without counting that start
        assert (
            post_json(url, "/prompt", {"prompt": slow(400, 0.01, "t"), "prompt_id": "t"})[0] == 200
        )
        wait_until(lambda: running(url) == ["t"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        proc = start()
        wait_until(lambda: running(url) == ["t"])
        kill(proc)  # its first counted start: one more is allowed
        proc = start()
        wait_until(lambda: "t" in get_json(url, "/history"), timeout=30)
        assert get_json(url, "/history/t")["t"]["status"]["status_str"] == "success"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_a_second_server_on_the_same_data_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = start_subprocess(data, free_port())
    try:
        with pytest.raises(AssertionError, match="another server"):
            start_subprocess(data, free_port())
    finally:
        proc.kill()
        proc.wait(10)


def test_nodegraph_serve_runs_the_node_library(tmp_path: Path) -> None:
    """The shipped command: `nodegraph serve` with the default nodes (ComfyUI's names)."""
    command = [sys.executable, "-c", "import sys; from nodegraph.cli import main; sys.exit(main())"]
    port = free_port()
    proc = start_subprocess(tmp_path / "data", port, command=[*command, "serve"])
    try:
        url = f"http://127.0.0.1:{port}"
        info = get_json(url, "/object_info")
        comfy = {"CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "EmptyLatentImage"}
        assert comfy | {"VAEDecode", "SaveImage", "LoadImage", "IntMath"} <= set(info)
        assert "checkpoints" in get_json(url, "/models")
        assert get_json(url, "/prompt") == {"exec_info": {"queue_remaining": 0}}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
