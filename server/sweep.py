"""POST /sweep: one request that queues a workflow once per value of one input (or per pair of
values of two: an X/Y grid), in order. The executor's cache shares what the runs have in common,
so after the first only the cone below the swept inputs runs again. Each run is an ordinary
prompt whose extra_data carries {"sweep": {"id", "index", "axes", "values"}}, so the results stay
together in the history; GET /sweep/{id} lists them."""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any

from .messages import error_body

MAX_AXES = 2
MAX_RUNS = 64
"""The most runs one sweep may queue (its axes' value counts multiplied)."""


class SweepError(ValueError):
    """A sweep request that cannot be queued; `body` is ComfyUI's error shape."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.body = error_body("invalid_sweep", message)


@dataclass(frozen=True)
class Axis:
    node: str
    input: str
    values: tuple[Any, ...]

    def describe(self) -> dict[str, Any]:
        return {"node": self.node, "input": self.input, "values": list(self.values)}


def _spread(start: Any, stop: Any, count: Any, where: str) -> tuple[Any, ...]:
    """`count` evenly spaced values from `start` to `stop` (both included); whole numbers when
    the ends are whole and every step lands on one."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (start, stop))
    if not numbers or not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise SweepError(f"{where}: from and to must be numbers and count a whole number >= 1")
    if count == 1:
        return (start,)
    values = [start + (stop - start) * i / (count - 1) for i in range(count)]
    if all(isinstance(v, int) for v in (start, stop)) and all(v == int(v) for v in values):
        return tuple(int(v) for v in values)
    return tuple(round(v, 10) for v in values)


def parse_axes(spec: Any, prompt: dict[str, Any]) -> list[Axis]:
    """The sweep's axes: [{"node", "input", "values": [...]} or {..., "from", "to", "count"}]."""
    if not isinstance(spec, list) or not 1 <= len(spec) <= MAX_AXES:
        raise SweepError(f"sweep must be a list of 1 to {MAX_AXES} axes")
    axes = []
    for i, axis in enumerate(spec):
        where = f"sweep[{i}]"
        if not isinstance(axis, dict) or not isinstance(axis.get("node"), str | int):
            raise SweepError(f"{where}: expected {{'node', 'input', 'values' or from/to/count}}")
        node, name = str(axis["node"]), axis.get("input")
        if not isinstance(prompt.get(node), dict) or not isinstance(name, str):
            raise SweepError(f"{where}: the workflow has no node '{node}' with an input to sweep")
        if "values" in axis:
            values = axis["values"]
            if not isinstance(values, list) or not values:
                raise SweepError(f"{where}: values must be a non-empty list")
            values = tuple(values)
        else:
            values = _spread(axis.get("from"), axis.get("to"), axis.get("count"), where)
        axes.append(Axis(node, name, values))
    runs = math.prod(len(a.values) for a in axes)
    if runs > MAX_RUNS:
        raise SweepError(f"the sweep would queue {runs} runs; the limit is {MAX_RUNS}")
    return axes


def runs(prompt: dict[str, Any], axes: list[Axis]) -> list[tuple[tuple[Any, ...], dict]]:
    """(values, workflow) per run: the first axis varies slowest (rows of an X/Y grid)."""
    out = []
    for values in itertools.product(*(a.values for a in axes)):
        workflow = copy.deepcopy(prompt)
        for axis, value in zip(axes, values, strict=True):
            inputs = workflow[axis.node].setdefault("inputs", {})
            inputs[axis.input] = value
        out.append((values, workflow))
    return out
