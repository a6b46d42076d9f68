"""A stand-in for the executor's NodeContext when a test invokes a node directly."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class NodeCtx:
    """Run options (models folders, device, ...) and the warnings a node gave."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.settings = SimpleNamespace(options=options or {})
        self.warnings: list[str] = []

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)
