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
        node = _parse_node(node_id, raw, errors)
        if node is not None:
            nodes[node_id] = node
    return nodes, errors


_MALFORMED_LINK = (
    "A link must be [source node id, output index]; a literal list must be wrapped as "
    '{"__value__": [...]}.'
)


def _parse_node(node_id: str, raw: Any, errors: list[NodeError]) -> WorkflowNode | None:
    if not isinstance(raw, dict):
        errors.append(NodeError("invalid_prompt", "A node must be a JSON object.", node_id))
        return None
    class_type = raw.get("class_type")
    if not isinstance(class_type, str) or not class_type:
        message = "The node has no class_type (the name of its node class)."
        errors.append(NodeError("missing_node_type", message, node_id, received=class_type))
        return None
    inputs = raw.get("inputs", {})
    if not isinstance(inputs, dict):
        message = "The node's inputs must be a JSON object."
        errors.append(NodeError("invalid_prompt", message, node_id, class_type))
        return None
    meta = raw.get("_meta")
    literals: dict[str, Any] = {}
    links: dict[str, Link] = {}
    malformed: set[str] = set()
    for name, value in inputs.items():
        if type(value) is list:
            link = _as_link(value)
            if link is None:
                malformed.add(name)
                errors.append(
                    NodeError("bad_linked_input", _MALFORMED_LINK, node_id, class_type, name, value)
                )
            else:
                links[name] = link
        elif type(value) is dict and len(value) == 1 and "__value__" in value:
            literals[name] = value["__value__"]
        else:
            literals[name] = value
    return WorkflowNode(
        node_id, class_type, literals, links, meta if isinstance(meta, dict) else {}, malformed
    )


def _as_link(value: list[Any]) -> Link | None:
    if len(value) != 2:
        return None
    source, output = value
    if type(source) is not str and (isinstance(source, bool) or not isinstance(source, int)):
        return None
    if type(output) is not int or output < 0:  # bool is not int here: type() is exact
        return None
    return Link(source if type(source) is str else str(source), output)
