"""The events of one run, read by the CLI, the server and tests alike."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    run_id: str
    time: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    planned: tuple[str, ...]
    """Ids of every node the run needs (output nodes and their ancestors), in execution order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodesCached(Event):
    node_ids: tuple[str, ...]
    """Nodes whose outputs come from the cache (or from an identical node in the same run)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStarted(Event):
    node_id: str
    class_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress(Event):
    node_id: str
    value: int
    max: int
    preview: Any = None
    """An optional preview image (e.g. a PIL image) the node offers at this step."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeWarning(Event):
    node_id: str
    class_type: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFinished(Event):
    node_id: str
    class_type: str
    seconds: float
    ui: Mapping[str, Any]
    """What the node shows the user, e.g. {"images": [{"filename", "subfolder", "type"}]}."""
    cached: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFailed(Event):
    node_id: str | None
    class_type: str | None
    message: str
    exception_type: str
    traceback: str
    executed: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInterrupted(Event):
    node_id: str | None
    class_type: str | None
    executed: tuple[str, ...]
