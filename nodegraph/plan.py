"""The dependency graph (networkx): which nodes a run needs and in what order."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .node import Node
from .workflow import Link, WorkflowNode

_SINK = object()


@dataclass(slots=True)
class Step:
    """One node of a validated plan: its class, literal values (validated) and links."""

    id: str
    cls: type[Node]
    literals: dict[str, Any]
    links: dict[str, Link]
    linked_literals: tuple[str, ...]
    """Literal inputs fed by a link: their values are validated when they arrive."""


@dataclass(slots=True)
class Plan:
    steps: dict[str, Step]
    order: list[str]
    """Every needed node, sources before the nodes they feed."""
    outputs: list[str]
    workflow: dict[str, Any] = field(default_factory=dict)
    """The API-format workflow the plan was made from (what nodes see as `ctx.run.workflow`)."""
    nodes: dict[str, WorkflowNode] = field(default_factory=dict)
    """The parsed nodes (to check a similar workflow against, see validate's `previous`)."""


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building large acyclic structures.

    Parsing a 100,000-node workflow creates hundreds of thousands of small objects; the collector
    would scan the whole heap several times meanwhile (most of the time spent, and superlinear).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep the collector from rescanning what exists now (the workflow, the cache) while nodes run.

    Collection goes on for objects the nodes create; the long-lived heap, which grows with the
    graph, is left out of the scans, so a run's cost does not grow with what is already there.
    """
    if gc.get_freeze_count():  # frozen already (by the host, or an enclosing run): leave it be
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def build_graph(edges: Iterable[tuple[str, str]], nodes: Iterable[str]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    return graph


def needed_nodes(graph: nx.DiGraph, outputs: list[str]) -> set[str]:
    """Output nodes and all their ancestors."""
    graph.add_node(_SINK)
    graph.add_edges_from((o, _SINK) for o in outputs)
    try:
        return nx.ancestors(graph, _SINK)
    finally:
        graph.remove_node(_SINK)


def ancestors_in_order(
    ordered: list[str], nodes: Mapping[str, WorkflowNode], outputs: list[str]
) -> set[str]:
    """Output nodes and their ancestors, in one backward sweep over a topological order."""
    needed = set(outputs)
    for node_id in reversed(ordered):
        if node_id in needed:
            needed.update(link.source for link in nodes[node_id].links.values())
    return needed


def restrict(graph: nx.DiGraph, keep: set[str]) -> nx.DiGraph:
    return graph if len(keep) == graph.number_of_nodes() else graph.subgraph(keep).copy()


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    """Groups of nodes that depend on themselves (self-loops included)."""
    found = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    found += [[a] for a, b in nx.selfloop_edges(graph)]
    return found


def order(graph: nx.DiGraph) -> list[str] | None:
    """A topological order, or None if the graph has a cycle."""
    try:
        return list(nx.topological_sort(graph))
    except nx.NetworkXUnfeasible:
        return None
