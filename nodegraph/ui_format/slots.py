"""What the canvas format knows of a class: its inputs in the frontend's order and the
widget values they take (seeds and uploads carry one more)."""

from __future__ import annotations

from typing import Any

from ..node import InputSpec, NodeSpec

MUTED, BYPASSED = 2, 4
"""litegraph's node modes that change execution: 2 never (muted), 4 bypass."""
VIRTUAL = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute"})
"""Frontend-only node types: never emitted."""
GROUP_PREFIXES = ("workflow>", "workflow/")
SEED_NAMES = frozenset({"seed", "noise_seed"})
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20
"""The ids of a subgraph's boundary pseudo-nodes (unless its definition names others)."""
CONTROL = "control"
UPLOAD = "upload"


def ordered_inputs(spec: NodeSpec) -> list[InputSpec]:
    """A class's inputs as the frontend walks them: input.required, then input.optional."""
    inputs = list(spec.inputs.values())
    return [i for i in inputs if not i.optional] + [i for i in inputs if i.optional]


def is_seed(spec: InputSpec) -> bool:
    return spec.type == "INT" and bool(
        spec.ui.get("control_after_generate") or spec.name in SEED_NAMES
    )


def widget_slots(spec: NodeSpec) -> list[tuple[str, str | None]]:
    """The entries of a node's widgets_values: (input name, None) for an input's value,
    (input name, "control") for a seed's control mode (right after the seed), and
    (input name, "upload") for the image-upload button, which the frontend adds as one more
    required input: after the last required widget, before the optional ones."""
    slots: list[tuple[str, str | None]] = []
    inputs = [i for i in ordered_inputs(spec) if not i.is_socket]
    upload = next((i.name for i in inputs if i.ui.get("image_upload") and not i.optional), None)
    for inp in inputs:
        if inp.optional and upload is not None:
            slots.append((upload, UPLOAD))
            upload = None
        slots.append((inp.name, None))
        if is_seed(inp):
            slots.append((inp.name, CONTROL))
    if upload is not None:
        slots.append((upload, UPLOAD))
    return slots


def title_of(cls: Any, type_name: str) -> str:
    return (getattr(cls, "display_name", None) or type_name) if cls is not None else type_name


def ui_id(key: str) -> int | str:
    """A canvas node id for an API key: a number where the key is one, else the key."""
    return int(key) if key.isdigit() and str(int(key)) == key else key


def is_link(value: Any) -> bool:
    return (
        type(value) is list
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool)
        and type(value[1]) is int
    )
