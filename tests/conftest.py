"""Shared fixtures: a registry of the core test nodes plus the utility nodes; a live server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nodes.utility
from nodegraph.executor import Executor
from nodegraph.registry import Registry
from tests import core_nodes


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.register_module(core_nodes)
    reg.register_module(nodes.utility)
    return reg


@pytest.fixture
def executor(registry: Registry) -> Executor:
    return Executor(registry)


@pytest.fixture(autouse=True)
def calls():
    core_nodes.CALLS.clear()
    return core_nodes.CALLS


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Any]:
    """The server (tests.server_fixtures.LiveServer) on a free port, over a fresh data folder."""
    from tests.server_fixtures import LiveServer

    server = LiveServer(tmp_path / "data")
    yield server
    server.close()


@pytest.fixture(scope="module")
def reference_threads() -> Iterator[None]:
    """One CPU thread, as ComfyUI's reference tensors were made (the same float reductions;
    the error-controlled dpm_adaptive would take other steps on more)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
