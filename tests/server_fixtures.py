"""Shared pieces of the server tests: test-only nodes, a live server on a free loopback port,
and small HTTP and websocket clients. Only 127.0.0.1 is ever contacted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
import numpy as np
from aiohttp import web
from PIL import Image

import nodes.utility
from nodegraph import InputField, Node, NodeContext
from nodegraph.registry import Registry
from server import ServerConfig, create_app
from server.app import SERVER
from server.config import Limits

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0
"""Longest any single wait in these tests (a bound on every loop)."""


# -- test-only nodes ---------------------------------------------------------------------------


class SlowCount(Node):
    """Counts to `steps`, sleeping `delay` seconds per step and reporting progress (a sampler)."""

    category = "testing"
    steps: int = InputField(5, ge=0, le=10_000)
    delay: float = InputField(0.05, ge=0.0, le=10.0)
    preview: Literal["none", "image", "latent"] = InputField("none")
    tag: str = InputField("")

    def invoke(self, ctx: NodeContext) -> int:
        for i in range(self.steps):
            time.sleep(self.delay)
            preview = None
            if self.preview == "image":
                preview = Image.new("RGB", (16, 16), (i * 10 % 256, 0, 0))
            elif self.preview == "latent":  # what a sampler holds: (batch, 4, h / 8, w / 8)
                preview = np.random.default_rng(i).normal(size=(2, 4, 8, 8))
            ctx.progress(i + 1, self.steps, preview=preview)
        return self.steps


class Boom(Node):
    """Raises when it runs."""

    category = "testing"
    value: int = InputField(0)

    def invoke(self, ctx: NodeContext) -> int:
        raise RuntimeError(f"boom {self.value}")


class ReadInput(Node):
    """Reads a file from the input folder by name (as LoadImage does) and shows its size."""

    category = "testing"
    output_node = True
    name: str = InputField("x.txt")

    def invoke(self, ctx: NodeContext) -> None:
        path = ctx.settings.resolve_input(self.name)
        ctx.show("text", [str(len(path.read_bytes()))])


class WriteOutput(Node):
    """Writes a tiny PNG into the output folder and shows it as an image output."""

    category = "testing"
    output_node = True
    value: int = InputField(0)
    prefix: str = InputField("test")

    def invoke(self, ctx: NodeContext) -> None:
        import io

        from nodegraph.files import write_unique

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (self.value % 256, 10, 20)).save(buf, format="PNG")
        path = write_unique(ctx.settings.output_dir, self.prefix, ".png", buf.getvalue())
        ctx.show("images", [{"filename": path.name, "subfolder": "", "type": "output"}])


class EmptyLatentLike(Node):
    """Has ComfyUI's width/height/batch_size inputs (for the compute budget)."""

    category = "testing"
    width: int = InputField(512, ge=16, le=16384)
    height: int = InputField(512, ge=16, le=16384)
    batch_size: int = InputField(1, ge=1, le=4096)

    def invoke(self, ctx: NodeContext) -> int:
        return self.width * self.height * self.batch_size


def make_registry() -> Registry:
    registry = Registry()
    registry.register_module(nodes.utility)
    for cls in (SlowCount, Boom, ReadInput, WriteOutput, EmptyLatentLike, Exits):
        registry.register(cls)
    return registry


def show(source: list[Any] | int, node_id: str = "9") -> dict[str, Any]:
    """A ShowValue node showing a link or literal."""
    return {node_id: {"class_type": "ShowValue", "inputs": {"value": source}}}


def slow(steps: int = 5, delay: float = 0.05, tag: str = "", preview: str = "none") -> dict:
    """A workflow: one SlowCount shown by a ShowValue."""
    return {
        "1": {
            "class_type": "SlowCount",
            "inputs": {"steps": steps, "delay": delay, "tag": tag, "preview": preview},
        },
        **show(["1", 0]),
    }


def add(a: int, b: int) -> dict[str, Any]:
    return {"1": {"class_type": "IntMath", "inputs": {"a": a, "b": b}}, **show(["1", 0])}


# -- a live server in this process ---------------------------------------------------------------


class LiveServer:
    """The app on a free loopback port, run by its own event loop in a thread."""

    def __init__(self, data_dir: Path, registry: Registry | None = None, **config: Any) -> None:
        config.setdefault("limits", Limits())
        config.setdefault("web_dir", None)
        self.config = ServerConfig(host="127.0.0.1", port=0, data_dir=data_dir, **config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.app = create_app(self.config, registry or make_registry())
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        self._call(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self._call(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    @property
    def server(self) -> Any:
        return self.app[SERVER]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


def with_limits(**limits: Any) -> Limits:
    return replace(Limits(), **limits)


# -- clients ---------------------------------------------------------------------------------


def http(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with urllib; returns (status, headers, body) whatever the status."""
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get_json(base: str, path: str) -> Any:
    status, _, body = http(base, "GET", path)
    assert status == 200, (status, body)
    return json.loads(body)


def post_json(base: str, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
    status, _, raw = http(base, "POST", path, body, **kw)
    return status, (json.loads(raw) if raw else None)


def wait_until(predicate: Any, timeout: float = TIMEOUT, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


class WebSocket:
    """A blocking websocket client (aiohttp on a private loop), like websocket-client's."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.session: aiohttp.ClientSession | None = None
        self.ws = self._call(self._connect(url, headers or {}))

    async def _connect(self, url: str, headers: dict[str, str]) -> Any:
        self.session = aiohttp.ClientSession()
        try:
            return await self.session.ws_connect(url, headers=headers, autoping=True)
        except BaseException:
            await self.session.close()
            raise

    def _call(self, coro: Any, timeout: float = TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def recv(self, timeout: float = TIMEOUT) -> str | bytes:
        msg = self._call(self.ws.receive(timeout), timeout + 1)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return msg.data
        raise ConnectionError(f"websocket closed: {msg.type}")

    def messages_until_done(self, prompt_id: str, timeout: float = TIMEOUT) -> list[Any]:
        """Every frame (JSON decoded; bytes kept) up to `executing` with node null for the id."""
        frames: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.recv(max(deadline - time.monotonic(), 0.1))
            if isinstance(raw, bytes):
                frames.append(raw)
                continue
            msg = json.loads(raw)
            frames.append(msg)
            data = msg["data"]
            if (
                msg["type"] == "executing"
                and data["node"] is None
                and data["prompt_id"] == prompt_id
            ):
                return frames
        raise AssertionError(f"no end of prompt {prompt_id} within {timeout}s: {frames[-5:]}")

    def close(self) -> None:
        async def _close() -> None:
            await self.ws.close()
            if self.session is not None:
                await self.session.close()

        with contextlib.suppress(Exception):
            self._call(_close(), 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def ws_url(base: str, client_id: str) -> str:
    return base.replace("http://", "ws://") + f"/ws?clientId={client_id}"


# -- the real server as a subprocess -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_subprocess(
    data_dir: Path,
    port: int,
    *extra: str,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """`python -m server` (or `command`) with the test nodes only; returns once it listens.
    `env`: more environment variables."""
    nodes_only = ["--no-default-nodes", "--node-package", "nodes.utility"]
    nodes_only += ["--node-package", "tests.server_fixtures"]
    base = command or [sys.executable, "-m", "server", *nodes_only]
    cmd = [*base, "--port", str(port), "--data", str(data_dir), *extra]
    environment = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    environment.pop("NODEGRAPH_TOKEN", None)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "listening on" in line:
            threading.Thread(target=_drain, args=(proc,), daemon=True).start()
            return proc
    proc.kill()
    proc.wait(10)
    raise AssertionError("the server did not start:\n" + "".join(lines))


def _drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for _ in proc.stdout:
        pass


class Exits(Node):
    """Calls sys.exit, which the engine does not catch: the worker must survive it."""

    category = "testing"
    output_node = True

    def invoke(self, ctx: NodeContext) -> None:
        sys.exit(3)
