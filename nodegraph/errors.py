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
    dependent_outputs: dict[str, list[str]] = field(default_factory=dict)
    """For a node with errors: the output nodes that need it."""

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)

    def comfy_body(self) -> dict[str, Any]:
        """The body ComfyUI answers an invalid prompt with: `{error, node_errors}`."""
        general = next((e for e in self.errors if e.node_id is None), None)
        if general is not None:
            error = {
                "type": general.type,
                "message": general.message,
                "details": general.details,
                "extra_info": {},
            }
        else:
            error = {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            }
        node_errors: dict[str, Any] = {}
        for e in self.errors:
            if e.node_id is None:
                continue
            entry = node_errors.setdefault(
                e.node_id,
                {
                    "errors": [],
                    "dependent_outputs": self.dependent_outputs.get(e.node_id, []),
                    "class_type": e.class_type,
                },
            )
            extra: dict[str, Any] = {"received_value": e.received}
            if e.input_name is not None:
                extra["input_name"] = e.input_name
            entry["errors"].append(
                {"type": e.type, "message": e.message, "details": e.details, "extra_info": extra}
            )
        return {"error": error, "node_errors": node_errors}


class Interrupted(Exception):
    """Raised inside a node when the run was asked to stop."""


class NodeFailed(Exception):
    """A node raised (or its linked inputs were invalid) while the run executed."""

    def __init__(self, node_id: str, class_type: str, message: str) -> None:
        super().__init__(message)
        self.node_id, self.class_type, self.message = node_id, class_type, message
