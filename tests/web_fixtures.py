"""Browser-test fixtures: the real server on a free port, Debian's chromium through Playwright,
and pages that record console errors and leave screenshots in test-artifacts/.

Import the fixtures into a test module: `from tests.web_fixtures import web_page, ...` (they
are named page, server and browser).
Chromium must be the system one (/usr/bin/chromium, installed by .ci/run); nothing is downloaded.
Without it (or without Playwright) the tests skip locally and fail when CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "web"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (required when CI=true)")
    pytest.skip(reason)


def chromium_path() -> str:
    for candidate in (
        os.environ.get("NODEGRAPH_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    _missing("Debian's chromium is not installed (apt-get install chromium)")
    raise AssertionError  # unreachable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _model_dirs(tmp: Path) -> tuple[list[str], bool]:
    """Folders to serve models from: the shipped model if it is found, else a tiny random one."""
    from nodes.loading.folders import list_models

    if list_models():
        return [], True
    from tests.diffusion_fixtures import build_tiny_sd

    root = tmp / "models"
    root.mkdir()
    build_tiny_sd(root)
    return [str(root)], False


class Server:
    def __init__(self, url: str, data: Path, proc: subprocess.Popen, shipped: bool) -> None:
        self.url = url
        self.data = data
        self.proc = proc
        self.shipped = shipped

    def object_info(self) -> dict[str, Any]:
        return get_json(self.url + "object_info")


@pytest.fixture(scope="session", name="server")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("web-server")
    data = tmp / "data"
    dirs, shipped = _model_dirs(tmp)
    # Torch on one thread: the small models gain nothing from more, and on a busy 2-core
    # machine threads spinning against each other make runs many times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if dirs:
        env["NODEGRAPH_MODELS"] = os.pathsep.join(dirs)
    port = _free_port()
    log = open(tmp / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", str(port), "--data", str(data)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            log.close()
            pytest.fail(f"server exited: {(tmp / 'server.log').read_text()[-2000:]}")
        try:
            get_json(url + "prompt")
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("server did not start within 120 s")
            time.sleep(0.3)
    try:
        yield Server(url, data, proc, shipped)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp / "server.log", ARTIFACTS / "server.log")


@pytest.fixture(scope="session", name="browser")
def web_browser() -> Iterator[Any]:
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed (pip install playwright==1.65.2)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A Playwright page plus what the tests check on every page: console errors."""

    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.name = name
        self.console_errors: list[str] = []
        self.allowed: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.console_errors.append(f"pageerror: {e}"))

    def allow_console(self, fragment: str) -> None:
        """An error message expected by the test (e.g. the 400 of an invalid graph)."""
        self.allowed.append(fragment)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.console_errors if not any(a in e for a in self.allowed)]

    def shot(self, label: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{label}.png"
        self.page.screenshot(path=str(path))
        return path


def _wait_for_canvas(p: Page, timeout_s: float = 10) -> None:
    """Until every node is measured and every link drawn (React Flow draws links after it has
    measured the sockets)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = p.page.evaluate(
            """() => ({ ...window.nodegraph.debug(),
                drawn: document.querySelectorAll('.react-flow__edge').length })"""
        )
        if not state["unmeasured"] and not state["noHandles"] and state["drawn"] == state["edges"]:
            return
        if time.monotonic() > deadline:
            p.shot("not-ready")
            raise AssertionError(f"the canvas did not settle: {state}")
        time.sleep(0.1)


@pytest.fixture(name="page")
def web_page(browser: Any, server: Server, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    p = Page(context.new_page(), request.node.name)
    p.page.set_default_timeout(30_000)
    p.page.goto(server.url)
    p.page.wait_for_selector("[data-testid=node]")
    _wait_for_canvas(p)
    try:
        yield p
        p.shot("end")
        assert not p.unexpected_errors(), f"console errors: {p.unexpected_errors()}"
    finally:
        context.close()
