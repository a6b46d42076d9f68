"""ComfyUI's API-format workflow: JSON text -> nodes with literal inputs and links.

    {"<node id>": {"class_type": "IntMath", "inputs": {"a": 2, "b": ["<other id>", 0]},
                   "_meta": {"title": "..."}}}

An input is a literal or a link `[source_id, output_index]`; a literal that is itself a list is
wrapped as `{"__value__": [...]}`. The whole object may also come wrapped as `{"prompt": {...}}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import NodeError, ValidationFailed


class Link(NamedTuple):
    source: str
    output: int


@dataclass(slots=True)
class WorkflowNode:
    id: str
    class_type: str
    literals: dict[str, Any] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    malformed: set[str] = field(default_factory=set)
    """Inputs whose link could not be read (already reported)."""


def load_json(text: str | bytes) -> dict[str, Any]:
    """Parse workflow text into the API-format object (unwrapping `{"prompt": ...}`)."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ValidationFailed(
            [NodeError("invalid_prompt", f"The workflow is not valid JSON: {exc}")]
        ) from None
    return unwrap(data)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def unwrap(data: Any) -> dict[str, Any]:
    """The API-format object itself, from a bare or `{"prompt": ...}`-wrapped workflow."""
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data:
        data = data["prompt"]
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "null"
        raise ValidationFailed(
            [NodeError("invalid_prompt", f"A workflow must be a JSON object of nodes, not {kind}.")]
        )
    return data


def parse(data: dict[str, Any]) -> tuple[dict[str, WorkflowNode], list[NodeError]]:
    """Split each node's inputs into literals and links; collect shape errors of every node."""
    nodes: dict[str, WorkflowNode] = {}
    errors: list[NodeError] = []
    for node_id, raw in data.items():
        if not isinstance(raw, dict):
            errors.append(NodeError("invalid_prompt", "A node must be a JSON object.", node_id))
            continue
        class_type = raw.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            errors.append(
                NodeError(
                    "missing_node_type",
                    "The node has no class_type (the name of its node class).",
                    node_id,
                    received=class_type,
                )
            )
            continue
        inputs = raw.get("inputs", {})
        if not isinstance(inputs, dict):
            errors.append(
                NodeError(
                    "invalid_prompt",
                    "The node's inputs must be a JSON object.",
                    node_id,
                    class_type,
                )
            )
            continue
        meta = raw.get("_meta")
        node = WorkflowNode(node_id, class_type, meta=meta if isinstance(meta, dict) else {})
        for name, value in inputs.items():
            if isinstance(value, list):
                link = _as_link(value)
                if link is None:
                    node.malformed.add(name)
                    errors.append(
                        NodeError(
                            "bad_linked_input",
                            "A link must be [source node id, output index]; a literal list must be "
                            'wrapped as {"__value__": [...]}.',
                            node_id,
                            class_type,
                            name,
                            received=value,
                        )
                    )
                else:
                    node.links[name] = link
            elif isinstance(value, dict) and set(value) == {"__value__"}:
                node.literals[name] = value["__value__"]
            else:
                node.literals[name] = value
        nodes[node_id] = node
    return nodes, errors


def _as_link(value: list[Any]) -> Link | None:
    if len(value) != 2:
        return None
    source, output = value
    if isinstance(source, bool) or not isinstance(source, str | int):
        return None
    if isinstance(output, bool) or not isinstance(output, int) or output < 0:
        return None
    return Link(str(source), output)
