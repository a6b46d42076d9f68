"""Errors a user sees: validation errors (all at once, before a run) and run-time failures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class NodeError:
    """One problem with a workflow, named by node, input and a ComfyUI error type."""

    type: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    input_name: str | None = None
    received: Any = None
    details: str = ""

    def __str__(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(
                f"node {self.node_id}" + (f" ({self.class_type})" if self.class_type else "")
            )
        if self.input_name:
            where.append(f"input '{self.input_name}'")
        prefix = ", ".join(where)
        return (
            f"{prefix}: {self.message} [{self.type}]" if prefix else f"{self.message} [{self.type}]"
        )


@dataclass
class ValidationFailed(Exception):
    """The workflow cannot run; `errors` lists every problem found."""

    errors: list[NodeError]
    outputs: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class Interrupted(Exception):
    """Raised inside a node when the run was asked to stop."""


class NodeFailed(Exception):
    """A node raised (or its linked inputs were invalid) while the run executed."""

    def __init__(self, node_id: str, class_type: str, message: str) -> None:
        super().__init__(message)
        self.node_id, self.class_type, self.message = node_id, class_type, message
