"""API -> canvas (UI): a canvas file ComfyUI opens, laid out by depth or `_meta.pos`, with the
Reroute nodes `_meta.reroutes` lists (see reroutes.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..node import InputSpec
from ..registry import Registry
from .reroutes import RerouteNodes, reroute_stops
from .slots import CONTROL, UPLOAD, is_link, ordered_inputs, title_of, ui_id, widget_slots

COLUMN_WIDTH, ROW_GAP, LEFT, TOP = 380, 40, 50, 50


def _inputs_of(node: Mapping[str, Any]) -> dict[str, Any]:
    inputs = node.get("inputs")
    return dict(inputs) if isinstance(inputs, Mapping) else {}


def _default(spec: InputSpec) -> Any:
    if spec.default is not None:
        return spec.default
    choices = spec.choices()
    if choices:
        return choices[0]
    return {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False}.get(spec.type, "")


def _depths(api: Mapping[str, Any]) -> dict[str, int]:
    """Each node's column: the longest chain of links that leads to it."""
    parents: dict[str, set[str]] = {k: set() for k in api}
    for key, node in api.items():
        for value in _inputs_of(node).values():
            if is_link(value) and str(value[0]) in api:
                parents[key].add(str(value[0]))
    depth: dict[str, int] = {}
    remaining = dict(parents)
    level = 0
    while remaining:
        ready = [k for k, ps in remaining.items() if all(p in depth for p in ps)]
        if not ready:  # a cycle: put what is left in the next column
            ready = list(remaining)
        for k in ready:
            depth[k] = max((depth[p] + 1 for p in remaining[k] if p in depth), default=0)
            del remaining[k]
        level += 1
    return depth


def api_to_ui(api: Mapping[str, Any], registry: Registry) -> dict[str, Any]:
    """A canvas (schema 0.4) for an API workflow: nodes laid out left to right by depth."""
    if isinstance(api.get("prompt"), Mapping) and "class_type" not in api:
        api = api["prompt"]
    api = {str(k): v for k, v in api.items() if isinstance(v, Mapping)}
    depth = _depths(api)
    order = sorted(api, key=lambda k: (depth[k], list(api).index(k)))
    links: list[list[Any]] = []
    out_types: dict[tuple[str, int], str] = {}
    for key, node in api.items():
        cls = registry.get(str(node.get("class_type")))
        if cls is not None:
            for slot, out in enumerate(cls.spec.outputs):
                out_types[(key, slot)] = out.type
    nodes: list[dict[str, Any]] = []
    column_y: dict[int, float] = {}
    pending: list[tuple[dict[str, Any], str, int]] = []  # (input entry, source, slot)
    for position, key in enumerate(order):
        node = api[key]
        class_type = str(node.get("class_type"))
        given = _inputs_of(node)
        cls = registry.get(class_type)
        inputs: list[dict[str, Any]] = []
        widgets_values: list[Any] = []
        widget_count = 0
        multiline = False
        if cls is not None:
            specs = ordered_inputs(cls.spec)
            for spec in specs:
                if spec.is_socket:
                    inputs.append({"name": spec.name, "type": spec.type, "link": None})
            for spec in specs:
                if not spec.is_socket and is_link(given.get(spec.name)):
                    inputs.append(
                        {
                            "name": spec.name,
                            "type": spec.type,
                            "widget": {"name": spec.name},
                            "link": None,
                        }
                    )
            for name, extra in widget_slots(cls.spec):
                spec = cls.spec.inputs[name]
                if extra == CONTROL:
                    widgets_values.append("fixed")
                elif extra == UPLOAD:
                    widgets_values.append("image")
                else:
                    value = given.get(name, _default(spec))
                    if is_link(value):
                        value = _default(spec)
                    elif isinstance(value, Mapping) and set(value) == {"__value__"}:
                        value = value["__value__"]
                    widgets_values.append(value)
                    multiline = multiline or bool(spec.ui.get("multiline"))
                widget_count += 1
            known = {s.name for s in specs}
            for name, value in given.items():  # links to inputs the class does not declare
                if name not in known and is_link(value):
                    inputs.append({"name": name, "type": "*", "link": None})
            outputs_spec = [(o.name.upper(), o.type) for o in cls.spec.outputs]
        else:
            for name, value in given.items():
                if is_link(value):
                    inputs.append(
                        {
                            "name": name,
                            "type": out_types.get((str(value[0]), value[1]), "*"),
                            "link": None,
                        }
                    )
                else:
                    widgets_values.append(
                        value["__value__"]
                        if isinstance(value, Mapping) and set(value) == {"__value__"}
                        else value
                    )
                    widget_count += 1
            used = [
                v[1]
                for other in api.values()
                for v in _inputs_of(other).values()
                if is_link(v) and str(v[0]) == key
            ]
            outputs_spec = [("*", "*")] * (max(used) + 1 if used else 0)
        for entry in inputs:
            value = given.get(entry["name"])
            if is_link(value) and str(value[0]) in api:
                pending.append((entry, str(value[0]), value[1]))
        outputs = [
            {"name": name, "type": type_name, "links": None, "slot_index": slot}
            for slot, (name, type_name) in enumerate(outputs_spec)
        ]
        slots = max(len(inputs), len(outputs), 1)
        height = 26 + 22 * slots + 26 * widget_count + (80 if multiline else 0)
        width = 400 if multiline else 315
        col = depth[key]
        y = column_y.get(col, TOP)
        column_y[col] = y + height + ROW_GAP
        meta = node.get("_meta")
        placed = meta.get("pos") if isinstance(meta, Mapping) else None  # the canvas's own
        if not (isinstance(placed, list) and len(placed) == 2
                and all(isinstance(v, int | float) for v in placed)):  # fmt: skip
            placed = [LEFT + col * COLUMN_WIDTH, y]
        ui_node: dict[str, Any] = {
            "id": ui_id(key),
            "type": class_type,
            "pos": list(placed),
            "size": [width, height],
            "flags": {},
            "order": position,
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": {"Node name for S&R": class_type},
            "widgets_values": widgets_values,
        }
        title = meta.get("title") if isinstance(meta, Mapping) else None
        if isinstance(title, str) and title != title_of(cls, class_type):
            ui_node["title"] = title
        nodes.append(ui_node)
    by_key = {str(n["id"]): n for n in nodes}
    wanted = {id(entry): (source, slot) for entry, source, slot in pending}
    reroutes = RerouteNodes({n["id"] for n in nodes})

    def connect(
        origin: dict[str, Any], slot: int, target: dict[str, Any], target_slot: int, kind: str
    ) -> None:
        link_id = len(links) + 1
        out = origin["outputs"][slot]
        out["links"] = [*(out["links"] or []), link_id]
        target["inputs"][target_slot]["link"] = link_id
        links.append([link_id, origin["id"], slot, target["id"], target_slot, kind])

    for ui_node in nodes:
        for target_slot, entry in enumerate(ui_node["inputs"]):
            if id(entry) not in wanted:
                continue
            source, slot = wanted[id(entry)]
            source_node = by_key[source]
            while len(source_node["outputs"]) <= slot:  # an output the class does not declare
                source_node["outputs"].append(
                    {
                        "name": "*",
                        "type": "*",
                        "links": None,
                        "slot_index": len(source_node["outputs"]),
                    }
                )
            link_type = out_types.get((source, slot)) or entry["type"]
            stops = reroute_stops(api[str(ui_node["id"])].get("_meta"), entry["name"])
            origin, origin_slot = source_node, slot
            for reroute in reroutes.chain(stops, source_node["id"], slot):
                if reroute["inputs"][0]["link"] is None:  # not yet fed by another link
                    connect(origin, origin_slot, reroute, 0, link_type)
                    reroute["outputs"][0]["type"] = link_type
                origin, origin_slot = reroute, 0
            connect(origin, origin_slot, ui_node, target_slot, link_type)
    for order, reroute in enumerate(reroutes.nodes, start=len(nodes)):
        reroute["order"] = order
    nodes += reroutes.nodes
    numeric = [n["id"] for n in nodes if isinstance(n["id"], int)]
    return {
        "last_node_id": max(numeric, default=len(nodes)),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
        "version": 0.4,
    }
