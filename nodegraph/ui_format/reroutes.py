"""ComfyUI's legacy Reroute nodes for a canvas file written from an API workflow.

nodegraph's canvas keeps the reroutes a link passes through in its consumer's `_meta`, which
the engine ignores: `"reroutes": {input name: [{"id": "4", "pos": [x, y]}, ...]}`, listed from
the link's source to the consumer. Each becomes a "Reroute" node (frontend-only: one input of
type "*", one output of the type flowing through, 75 x 26) chained on that link; a reroute that
several links list (one feeding many inputs) is one node with one output link per consumer.
The API workflow is unchanged by them: the canvas's Reroute nodes resolve to the same links.
The canvas lists a file's native reroute points (bend points on a link) the same way, with ids
of their own (`native-<id>`), so they come back as Reroute nodes with fresh numeric ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .slots import ui_id

REROUTE_SIZE = (75, 26)

Stop = tuple[str, list[float]]
"""One reroute on a link: its id as the canvas names it, and its position."""


def reroute_stops(meta: Any, input_name: str) -> list[Stop]:
    """The reroutes `_meta.reroutes` lists for an input, source first; [] when it lists none
    or lists them in a shape that cannot be read (the link is then written straight)."""
    listed = meta.get("reroutes") if isinstance(meta, Mapping) else None
    path = listed.get(input_name) if isinstance(listed, Mapping) else None
    if not isinstance(path, list):
        return []
    stops: list[Stop] = []
    for stop in path:
        rid = stop.get("id") if isinstance(stop, Mapping) else None
        pos = stop.get("pos") if isinstance(stop, Mapping) else None
        if isinstance(rid, bool) or not isinstance(rid, str | int) or str(rid) == "":
            return []
        if not (isinstance(pos, list) and len(pos) == 2 and all(map(_is_number, pos))):
            return []
        stops.append((str(rid), list(pos)))
    if len({rid for rid, _ in stops}) != len(stops):  # a reroute twice on one link
        return []
    return stops


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class RerouteNodes:
    """The Reroute nodes of one canvas, made as the links that pass through them are written."""

    def __init__(self, taken: set[Any]) -> None:
        self.taken = set(taken)  # the ids of the canvas's other nodes
        self.nodes: list[dict[str, Any]] = []
        self._by_stop: dict[str, dict[str, Any]] = {}
        self._upstream: dict[str, tuple[Any, ...]] = {}  # what feeds each reroute

    def chain(self, stops: list[Stop], source_id: Any, slot: int) -> list[dict[str, Any]]:
        """The Reroute nodes (made or shared) a link from output `slot` of `source_id` passes
        through, source first. [] when a listed reroute is already fed by something else:
        the link is then written straight, so that it still runs from the same output."""
        if not stops:
            return []
        feeds: list[tuple[Any, ...]] = [("node", source_id, slot)]
        feeds += [("reroute", rid) for rid, _ in stops[:-1]]
        for (rid, _), feed in zip(stops, feeds, strict=True):
            if self._upstream.get(rid, feed) != feed:
                return []
        out = []
        for (rid, pos), feed in zip(stops, feeds, strict=True):
            if rid not in self._by_stop:
                self._upstream[rid] = feed
                self._by_stop[rid] = self._make(rid, pos)
            out.append(self._by_stop[rid])
        return out

    def _make(self, rid: str, pos: list[float]) -> dict[str, Any]:
        node_id = ui_id(rid)
        if not isinstance(node_id, int) or node_id in self.taken:
            # another node's id, or not a number (a native reroute point's): a fresh one
            node_id = 1 + max((i for i in self.taken if isinstance(i, int)), default=0)
        self.taken.add(node_id)
        node = {
            "id": node_id,
            "type": "Reroute",
            "pos": list(pos),
            "size": list(REROUTE_SIZE),
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [{"name": "", "type": "*", "link": None}],
            "outputs": [{"name": "", "type": "*", "links": None, "slot_index": 0}],
            "properties": {"showOutputText": False, "horizontal": False},
        }
        self.nodes.append(node)
        return node
