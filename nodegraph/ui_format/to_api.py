"""Canvas (UI) -> API: what ComfyUI's frontend queues for a canvas (see the package doc)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry
from .files import WorkflowFileError, detect_format
from .slots import (
    BYPASSED,
    CONTROL,
    GROUP_PREFIXES,
    MUTED,
    SUBGRAPH_INPUT,
    SUBGRAPH_OUTPUT,
    VIRTUAL,
    is_link,
    is_seed,
    title_of,
    widget_slots,
)

Source = tuple[str, int]


@dataclass
class _Input:
    name: str
    type: str
    widget: str | None
    source: Source | None


@dataclass
class _Node:
    id: str
    type: str
    mode: int
    title: str | None
    inputs: list[_Input]
    outputs: list[str]
    values: Any
    overrides: dict[str, Any] = field(default_factory=dict)
    """Widget values by input name that win over `values` (a group node instance's)."""


def _links_table(links: Any) -> dict[Any, tuple[Any, int, Any, int, str]]:
    """link id -> (origin id, origin slot, target id, target slot, type), arrays or objects."""
    table: dict[Any, tuple[Any, int, Any, int, str]] = {}
    for link in links or []:
        if isinstance(link, list) and len(link) >= 5:
            table[link[0]] = (link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else "*")
        elif isinstance(link, dict) and "id" in link:
            table[link["id"]] = (
                link.get("origin_id"),
                link.get("origin_slot", 0),
                link.get("target_id"),
                link.get("target_slot", 0),
                link.get("type", "*"),
            )
    return table


def _proxy_widgets(raw: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    """A subgraph instance's `properties.proxyWidgets` ([[inner node id, widget name], ...],
    sometimes saved as a JSON string), or None."""
    proxies = (raw.get("properties") or {}).get("proxyWidgets")
    if isinstance(proxies, str):
        try:
            proxies = json.loads(proxies)
        except ValueError:
            return None
    if not isinstance(proxies, list) or not proxies:
        return None
    return [(str(p[0]), str(p[1])) for p in proxies if isinstance(p, list | tuple) and len(p) >= 2]


def _same_id(a: Any, b: Any) -> bool:
    return a is not None and b is not None and str(a) == str(b)


class _Flattener:
    """Turns a canvas (with its group nodes and subgraphs) into one flat graph of nodes."""

    def __init__(self, ui: Mapping[str, Any], registry: Registry, warnings: list[str]) -> None:
        self.registry = registry
        self.warnings = warnings
        self.nodes: dict[str, _Node] = {}
        self.aliases: dict[Source, Source | None] = {}
        self.subgraphs: dict[str, Mapping[str, Any]] = {}
        self._collect_subgraphs(ui)
        extra = ui.get("extra") if isinstance(ui.get("extra"), Mapping) else {}
        groups = extra.get("groupNodes") if isinstance(extra, Mapping) else None
        self.group_nodes: Mapping[str, Any] = groups if isinstance(groups, Mapping) else {}

    def _collect_subgraphs(self, graph: Mapping[str, Any]) -> None:
        definitions = graph.get("definitions")
        if not isinstance(definitions, Mapping):
            return
        for sub in definitions.get("subgraphs") or []:
            if isinstance(sub, Mapping) and "id" in sub:
                self.subgraphs[str(sub["id"])] = sub
                self._collect_subgraphs(sub)

    def graph(
        self,
        graph: Mapping[str, Any],
        prefix: str = "",
        outer_inputs: list[Source | None] | None = None,
        depth: int = 0,
    ) -> list[Source | None]:
        """Add a graph's nodes; returns the sources of its subgraph outputs (if it is one)."""
        if depth > 32:
            raise WorkflowFileError(
                "subgraphs are nested more than 32 deep (a definition using itself?)"
            )
        table = _links_table(graph.get("links"))
        in_id = (
            (graph.get("inputNode") or {}).get("id", SUBGRAPH_INPUT)
            if outer_inputs is not None
            else None
        )
        out_id = (
            (graph.get("outputNode") or {}).get("id", SUBGRAPH_OUTPUT)
            if outer_inputs is not None
            else None
        )

        def source_of(link_id: Any) -> Source | None:
            if not isinstance(link_id, int | str) or link_id not in table:
                return None
            origin, slot = table[link_id][0], table[link_id][1]
            if outer_inputs is not None and _same_id(origin, in_id):
                return outer_inputs[slot] if 0 <= slot < len(outer_inputs) else None
            return (prefix + str(origin), int(slot))

        for raw in graph.get("nodes") or []:
            if not isinstance(raw, Mapping) or "id" not in raw:
                continue
            node_id = prefix + str(raw["id"])
            mode = raw.get("mode", 0) or 0
            inputs = [
                _Input(
                    str(inp.get("name", "")),
                    str(inp.get("type", "*")),
                    (inp.get("widget") or {}).get("name")
                    if isinstance(inp.get("widget"), Mapping)
                    else None,
                    source_of(inp.get("link")),
                )
                for inp in raw.get("inputs") or []
                if isinstance(inp, Mapping)
            ]
            type_name = str(raw.get("type", ""))
            active = mode not in (MUTED, BYPASSED)  # a muted / bypassed instance stays whole
            if active and type_name in self.subgraphs:
                self._subgraph(node_id, raw, inputs, depth)
            elif (
                active
                and type_name.startswith(GROUP_PREFIXES)
                and type_name.split(">" if ">" in type_name else "/", 1)[1] in self.group_nodes
            ):
                self._group_node(node_id, raw, inputs)
            else:
                outputs = [
                    str(o.get("type", "*"))
                    for o in raw.get("outputs") or []
                    if isinstance(o, Mapping)
                ]
                self.nodes[node_id] = _Node(
                    node_id,
                    type_name,
                    mode,
                    raw.get("title"),
                    inputs,
                    outputs,
                    raw.get("widgets_values"),
                )
        results: list[Source | None] = []
        if outer_inputs is not None:
            count = len(graph.get("outputs") or [])
            results = [None] * count
            for origin, o_slot, target, t_slot, _ in table.values():
                if _same_id(target, out_id) and 0 <= t_slot < count:
                    if _same_id(origin, in_id):
                        results[t_slot] = (
                            outer_inputs[o_slot] if 0 <= o_slot < len(outer_inputs) else None
                        )
                    else:
                        results[t_slot] = (prefix + str(origin), int(o_slot))
        return results

    def _subgraph(
        self, node_id: str, raw: Mapping[str, Any], inputs: list[_Input], depth: int
    ) -> None:
        """Expand one subgraph instance. Its socket inputs are matched to the definition's inputs
        by name (the saved instance lists only the linked widget inputs); the definition's inputs
        that feed widgets inside are the instance's promoted widgets, whose values are the
        instance's widgets_values in the definition's input order."""
        definition = self.subgraphs[str(raw["type"])]
        slots = [s for s in definition.get("inputs") or [] if isinstance(s, Mapping)]
        in_id = (definition.get("inputNode") or {}).get("id", SUBGRAPH_INPUT)
        inner = {
            str(n.get("id")): n for n in definition.get("nodes") or [] if isinstance(n, Mapping)
        }
        feeds_widget: set[int] = set()
        for origin, o_slot, target, t_slot, _ in _links_table(definition.get("links")).values():
            target_inputs = (inner.get(str(target)) or {}).get("inputs") or []
            target_input = target_inputs[t_slot] if 0 <= t_slot < len(target_inputs) else None
            if (
                _same_id(origin, in_id)
                and isinstance(target_input, Mapping)
                and target_input.get("widget")
            ):
                feeds_widget.add(int(o_slot))
        values = raw.get("widgets_values")
        values = values if isinstance(values, list) else []
        proxies = _proxy_widgets(raw)
        if proxies is not None:  # newer frontends: [inner id, widget] per value, "-1" an input
            by_name = {w: v for (nid, w), v in zip(proxies, values, strict=False) if nid == "-1"}
            promoted = {
                i: by_name[str(slot.get("name"))]
                for i, slot in enumerate(slots)
                if str(slot.get("name")) in by_name
            }
        else:
            promoted = dict(zip(sorted(feeds_widget), values, strict=False))
        by_name = {i.name: i for i in inputs}
        outer: list[Source | None] = []
        for index, slot in enumerate(slots):
            match = by_name.get(str(slot.get("name")))
            if match is None and len(inputs) == len(slots):
                match = inputs[index]
            if match is not None and match.source is not None:
                outer.append(match.source)
            elif index in promoted:  # the instance's widget: a value, as a PrimitiveNode gives
                value_id = f"{node_id}:<widget {slot.get('name')}>"
                self.nodes[value_id] = _Node(
                    value_id, "PrimitiveNode", 0, None, [], ["*"], [promoted[index]]
                )
                outer.append((value_id, 0))
            else:
                outer.append(None)
        results = self.graph(definition, f"{node_id}:", outer, depth + 1)
        for k, result in enumerate(results):
            self.aliases[(node_id, k)] = result

    def _group_node(self, node_id: str, raw: Mapping[str, Any], inputs: list[_Input]) -> None:
        type_name = str(raw["type"])
        name = type_name.split(">" if ">" in type_name else "/", 1)[1]
        definition = self.group_nodes[name]
        inner = [n for n in definition.get("nodes") or [] if isinstance(n, Mapping)]
        config = definition.get("config") if isinstance(definition.get("config"), Mapping) else {}
        links_to: dict[int, dict[int, tuple[int, int]]] = {}
        links_from: dict[int, set[int]] = {}
        for link in definition.get("links") or []:
            if not isinstance(link, list) or len(link) < 4 or link[0] is None:
                continue
            links_to.setdefault(int(link[2]), {})[int(link[3])] = (int(link[0]), int(link[1]))
            links_from.setdefault(int(link[0]), set()).add(int(link[1]))
        external = {
            (int(e[0]), int(e[1]))
            for e in definition.get("external") or []
            if isinstance(e, list) and len(e) >= 2
        }

        def index_of(position: int, node: Mapping[str, Any]) -> int:
            return int(node.get("index", position))

        outer_sources = [i.source for i in inputs]
        next_input = 0
        widget_order: list[tuple[int, str, str | None]] = []
        deferred: list[tuple[int, str]] = []
        visible_outputs: list[Source] = []
        built: list[tuple[int, Mapping[str, Any], list[_Input], list[str]]] = []
        for position, node in enumerate(inner):
            index = index_of(position, node)
            inner_id = f"{node_id}:{index}"
            type_inner = str(node.get("type", ""))
            node_config = config.get(str(index)) if isinstance(config, Mapping) else None
            node_config = node_config if isinstance(node_config, Mapping) else {}
            to = links_to.get(index, {})
            if (
                type_inner == "Reroute"
                and to
                and index in links_from
                and (index, 0) not in external
            ):
                n_outputs = 0  # an internal reroute has no slots on the group node
            elif type_inner == "PrimitiveNode" and index not in links_from:
                n_outputs = 0
            else:
                cls = self.registry.get(type_inner)
                n_outputs = (
                    len(cls.spec.outputs) if cls is not None else len(node.get("outputs") or [])
                )
            new_inputs: list[_Input] = []
            for slot, inp in enumerate(node.get("inputs") or []):
                if not isinstance(inp, Mapping):
                    continue
                widget = (
                    inp.get("widget", {}).get("name")
                    if isinstance(inp.get("widget"), Mapping)
                    else None
                )
                source: Source | None = None
                if slot in to:
                    source = (f"{node_id}:{to[slot][0]}", to[slot][1])
                elif widget is not None:
                    deferred.append((index, widget))
                elif n_outputs or type_inner not in ("Reroute", "PrimitiveNode"):
                    in_config = (node_config.get("input") or {}).get(str(inp.get("name"))) or {}
                    if isinstance(in_config, Mapping) and in_config.get("visible") is False:
                        pass
                    else:
                        if next_input < len(outer_sources):
                            source = outer_sources[next_input]
                        next_input += 1
                new_inputs.append(
                    _Input(str(inp.get("name", "")), str(inp.get("type", "*")), widget, source)
                )
            if type_inner == "PrimitiveNode":
                if n_outputs:
                    widget_order += [(index, "value", None), (index, "value", CONTROL)]
            elif type_inner != "Reroute":
                cls = self.registry.get(type_inner)
                converted = {i.widget for i in new_inputs if i.widget}
                if cls is not None:
                    widget_order += [
                        (index, n, extra)
                        for n, extra in widget_slots(cls.spec)
                        if n not in converted
                    ]
            out_config = node_config.get("output") or {}
            linked_out = links_from.get(index, set())
            for slot in range(n_outputs):
                hidden = slot in linked_out and (index, slot) not in external
                custom = out_config.get(str(slot)) if isinstance(out_config, Mapping) else None
                visible = (
                    custom.get("visible", not hidden) if isinstance(custom, Mapping) else not hidden
                )
                if visible:
                    visible_outputs.append((inner_id, slot))
            outputs = [
                str(o.get("type", "*")) for o in node.get("outputs") or [] if isinstance(o, Mapping)
            ]
            built.append((index, node, new_inputs, outputs))
        for index, widget in deferred:  # converted widgets come after every node's widgets
            widget_order.append((index, widget, None))
            cls = self.registry.get(
                str(
                    next(
                        (n.get("type") for i, n in enumerate(inner) if index_of(i, n) == index), ""
                    )
                )
            )
            spec = cls.spec.inputs.get(widget) if cls is not None else None
            if spec is not None and is_seed(spec):
                widget_order.append((index, widget, CONTROL))
        overrides: dict[int, dict[str, Any]] = {}
        values = raw.get("widgets_values")
        if isinstance(values, list):
            for (index, widget, extra), value in zip(widget_order, values, strict=False):
                if extra is None:
                    overrides.setdefault(index, {})[widget] = value
        for index, node, new_inputs, outputs in built:
            inner_id = f"{node_id}:{index}"
            node_values = node.get("widgets_values")
            own = overrides.get(index, {})
            if str(node.get("type")) == "PrimitiveNode" and "value" in own:
                node_values = [
                    own.pop("value"),
                    *((node_values or [])[1:] if isinstance(node_values, list) else []),
                ]
            self.nodes[inner_id] = _Node(
                inner_id,
                str(node.get("type", "")),
                node.get("mode", 0) or 0,
                node.get("title"),
                new_inputs,
                outputs,
                node_values,
                own,
            )
        for k, source in enumerate(visible_outputs):
            self.aliases[(node_id, k)] = source


_DROP = object()
"""A link that resolves to nothing (a muted node, a bypass with no matching input)."""


@dataclass
class _Value:
    value: Any


def connects(a: str, b: str) -> bool:
    """litegraph's isValidConnection: equal types, a wildcard, or comma lists that share one."""
    if a in ("", "*") or b in ("", "*"):
        return True
    left, right = str(a).lower().split(","), str(b).lower().split(",")
    return any(x.strip() == y.strip() for x in left for y in right)


def _bypass_input(node: _Node, slot: int, wanted: str, registry: Registry) -> _Input | None:
    """The input a bypassed node passes through to a consumer of its output `slot` whose input
    type is `wanted`: the same slot if it fits, else the first input of exactly that type, else
    the first that connects (the frontend's rule)."""
    inputs = node.inputs
    if wanted in ("*", ""):
        return inputs[slot] if slot < len(inputs) else (inputs[0] if inputs else None)
    if slot < len(node.outputs):
        out_type = node.outputs[slot]
    else:
        cls = registry.get(node.type)
        outs = cls.spec.outputs if cls is not None else ()
        out_type = outs[slot].type if slot < len(outs) else wanted
    same = inputs[slot] if slot < len(inputs) else None
    if same is not None and connects(same.type, out_type) and connects(same.type, wanted):
        return same
    exact = next((i for i in inputs if i.type == wanted), None)
    if exact is not None:
        return exact
    return next(
        (i for i in inputs if connects(i.type, out_type) and connects(i.type, wanted)), None
    )


def _resolve(
    flat: _Flattener, source: Source | None, wanted: str, warnings: list[str], consumer: str
) -> Any:
    """Follow a link to the output the API names: through group / subgraph boundaries,
    Reroutes and bypassed nodes. Returns a Source, a _Value (a PrimitiveNode's) or _DROP."""
    seen: set[Source] = set()
    while source is not None:
        if source in seen:
            warnings.append(
                f"node {consumer}: a link loops through reroutes or bypassed nodes; dropped"
            )
            return _DROP
        seen.add(source)
        if source in flat.aliases:
            source = flat.aliases[source]
            continue
        node = flat.nodes.get(source[0])
        if node is None:
            warnings.append(
                f"node {consumer}: a link comes from node {source[0]}, which is not there; dropped"
            )
            return _DROP
        if node.type == "PrimitiveNode":
            values = node.values if isinstance(node.values, list) else []
            return _Value(values[0]) if values else _DROP
        if node.type == "Reroute":  # passes its input on, whatever its mode
            source = node.inputs[0].source if node.inputs else None
            continue
        if node.mode == MUTED:
            return _DROP
        if node.mode == BYPASSED:
            pick = _bypass_input(node, source[1], wanted, flat.registry)
            if pick is None:
                warnings.append(
                    f"node {consumer}: bypassed node {node.id} has no input of type {wanted} "
                    "to pass on; the input is dropped"
                )
                return _DROP
            source, wanted = pick.source, pick.type
            continue
        if node.type in VIRTUAL:
            return _DROP
        return source
    return _DROP


def _literal(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


def ui_to_api(ui: Mapping[str, Any], registry: Registry) -> tuple[dict[str, Any], list[str]]:
    """The API-format prompt ComfyUI's frontend would queue for this canvas, and warnings
    (unknown classes, each with its node id; links that could not be followed). A canvas whose
    parts have the wrong shapes raises WorkflowFileError."""
    if detect_format(ui) != "ui":
        raise WorkflowFileError('not a UI-format workflow (an object with "nodes" and "links")')
    try:
        return _ui_to_api(ui, registry)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        if isinstance(exc, WorkflowFileError):
            raise
        raise WorkflowFileError(
            f"a malformed UI workflow ({type(exc).__name__}: {exc})".replace("\n", " ")
        ) from None


def _ui_to_api(ui: Mapping[str, Any], registry: Registry) -> tuple[dict[str, Any], list[str]]:
    warnings: list[str] = []
    flat = _Flattener(ui, registry, warnings)
    flat.graph(ui)
    api: dict[str, Any] = {}
    unknown: dict[str, list[str]] = {}
    for node in flat.nodes.values():
        if node.type in VIRTUAL or node.mode in (MUTED, BYPASSED) or not node.type:
            continue
        cls = registry.get(node.type)
        inputs: dict[str, Any] = {}
        widgets: set[str] = set()
        if cls is not None:
            slots = widget_slots(cls.spec)
            widgets = {name for name, _ in slots}
            values = node.values
            if isinstance(values, Mapping):
                named = {k: v for k, v in values.items() if k in widgets}
            elif isinstance(values, list):
                named = {}
                for (name, extra), value in zip(slots, values, strict=False):
                    if extra is None:
                        named[name] = value
            else:
                named = {}
            named.update({k: v for k, v in node.overrides.items() if k in widgets})
            for name, extra in slots:
                if extra is None and name in named:
                    inputs[name] = _literal(named[name])
        else:
            unknown.setdefault(node.type, []).append(node.id)
        for inp in node.inputs:
            name = inp.widget or inp.name
            if inp.source is None:
                continue
            resolved = _resolve(flat, inp.source, inp.type, warnings, node.id)
            if resolved is _DROP:
                inputs.pop(name, None)
            elif isinstance(resolved, _Value):
                inputs[name] = _literal(resolved.value)
            else:
                inputs[name] = [resolved[0], resolved[1]]
        api[node.id] = {
            "inputs": inputs,
            "class_type": node.type,
            "_meta": {"title": node.title or title_of(cls, node.type)},
        }
    for node_id, node in api.items():  # as the frontend: no link may name a node not sent
        for name, value in list(node["inputs"].items()):
            if is_link(value) and value[0] not in api:
                warnings.append(
                    f"node {node_id}: input '{name}' links to node {value[0]}, "
                    "which is not sent; dropped"
                )
                del node["inputs"][name]
    named_unknown = [
        f"unknown class '{type_name}' (node{'s' if len(ids) > 1 else ''} {', '.join(ids)}): "
        "converted with its links only (its widget values need the class's input names)"
        for type_name, ids in unknown.items()
    ]
    warnings[:0] = named_unknown
    return api, warnings


def unknown_classes(api: Mapping[str, Any], registry: Registry) -> dict[str, list[str]]:
    """Class name -> node ids, for the classes of an API workflow the registry lacks."""
    found: dict[str, list[str]] = {}
    for node_id, node in api.items():
        if isinstance(node, Mapping) and node.get("class_type") not in registry:
            found.setdefault(str(node.get("class_type")), []).append(str(node_id))
    return found


def to_api(kind: str, data: Any, registry: Registry) -> tuple[dict[str, Any], list[str]]:
    """An API-format workflow from either format (UI converted, API unwrapped)."""
    if kind == "ui":
        return ui_to_api(data, registry)
    if (
        isinstance(data, Mapping)
        and isinstance(data.get("prompt"), Mapping)
        and "class_type" not in data
    ):
        data = data["prompt"]
    return dict(data), []
