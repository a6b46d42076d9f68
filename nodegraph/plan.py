"""The dependency graph (networkx): which nodes a run needs and in what order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import networkx as nx

from .node import Node
from .workflow import Link

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
