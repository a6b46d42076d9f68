"""Every check a workflow must pass before it runs; all errors are reported at once."""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass
from typing import Any

import networkx as nx
from pydantic import ValidationError

from . import types as T  # noqa: N812
from .context import RunSettings
from .errors import NodeError, ValidationFailed
from .node import InputSpec, Node
from .plan import (
    Plan,
    Step,
    ancestors_in_order,
    build_graph,
    cycles,
    needed_nodes,
    order,
    restrict,
)
from .registry import Registry
from .workflow import Link, WorkflowNode, parse, unwrap


@dataclass(frozen=True)
class Limits:
    """Sizes past which a workflow is refused outright."""

    max_nodes: int = 200_000


_MEMO_SIZE = 4096
"""Good literal values remembered per input."""

# pydantic error type -> (ComfyUI error type, how to say it)
_PYDANTIC_ERRORS: dict[str, str] = {
    "greater_than_equal": "value_smaller_than_min",
    "greater_than": "value_smaller_than_min",
    "less_than_equal": "value_bigger_than_max",
    "less_than": "value_bigger_than_max",
    "string_too_long": "value_bigger_than_max",
    "literal_error": "value_not_in_list",
}
_KIND_WORDS = {
    T.INT: "a whole number",
    T.FLOAT: "a number",
    T.STRING: "a text",
    T.BOOLEAN: "true or false",
    T.COMBO: "one of the choices",
}


def validate(
    data: Any, registry: Registry, limits: Limits | None = None, previous: Plan | None = None
) -> Plan:
    """Check an API-format workflow and plan its run; raises ValidationFailed with every error.

    With the `previous` plan of a workflow of the same shape (same nodes, classes and links; a
    re-run or a sweep), its order is reused and so are the checks of nodes whose literal inputs
    did not change: only what changed is checked again.
    """
    data = unwrap(data)
    limits = limits or Limits()
    if len(data) > limits.max_nodes:
        raise ValidationFailed(
            [
                NodeError(
                    "invalid_prompt",
                    f"The workflow has {len(data)} nodes; the limit is {limits.max_nodes}.",
                )
            ]
        )
    nodes, errors = parse(data)
    known: dict[str, WorkflowNode] = {}
    classes: dict[str, type[Node]] = {}
    for node_id, node in nodes.items():
        cls = registry.get(node.class_type)
        if cls is not None:
            known[node_id], classes[node_id] = node, cls
        else:
            hint = _did_you_mean(node.class_type, registry)
            message = f"There is no node class '{node.class_type}'.{hint}"
            errors.append(NodeError("missing_node_type", message, node_id, node.class_type))
    outputs = [node_id for node_id, cls in classes.items() if cls.output_node]
    if not outputs:
        message = (
            "The workflow has no output node (such as SaveImage or ShowValue): nothing to run."
        )
        raise ValidationFailed([*errors, NodeError("prompt_no_outputs", message)])

    if not errors and previous is not None and same_shape(known, previous.nodes):
        plan = _recheck(previous, known, classes, data)
        if plan is not None:
            return plan  # else a changed literal is wrong: the full path below reports it

    edges = [(link.source, i) for i, n in known.items() for link in n.links.values()]
    graph = build_graph((e for e in edges if e[0] in known), known)
    ordered = order(graph)
    if ordered is not None:
        needed = ancestors_in_order(ordered, known, outputs)
        ordered = [n for n in ordered if n in needed]
    else:  # a cycle somewhere: report those that outputs need, ignore the rest
        needed = needed_nodes(graph, outputs) | set(outputs)
        graph = restrict(graph, needed)
        ordered = order(graph)
        if ordered is None:
            for group in cycles(graph):
                loop = " -> ".join([*group, group[0]])
                message = f"The node depends on itself through the cycle {loop}."
                for node_id in group:
                    errors.append(
                        NodeError("dependency_cycle", message, node_id, known[node_id].class_type)
                    )
    steps: dict[str, Step] = {}
    for node_id in (n for n in known if n in needed):
        step = _check_node(known[node_id], classes, errors)
        if step is not None:
            steps[node_id] = step
    if errors:
        raise ValidationFailed(errors, dependent_outputs(graph, errors, outputs))
    return Plan(steps, ordered or [], outputs, data, known)


def ignored_inputs(plan: Plan) -> list[tuple[str, str, str]]:
    """(node id, class, warning) for each literal input a node does not declare: ignored, as
    ComfyUI ignores them (its canvas writes LoadImage's "upload" widget into workflows)."""
    found = []
    for node_id in plan.order:
        step, node = plan.steps[node_id], plan.nodes.get(node_id)
        spec = step.cls.spec
        for name in node.literals if node is not None else ():
            if name not in spec.inputs:
                hint = _did_you_mean(name, spec.inputs)
                found.append((node_id, spec.type_name, f"no input '{name}': ignored.{hint}"))
    return found


def _recheck(
    previous: Plan, known: dict[str, WorkflowNode], classes: dict[str, type[Node]], data: Any
) -> Plan | None:
    """The previous plan with only the nodes whose literals changed checked again (or None)."""
    steps = {}
    errors: list[NodeError] = []
    for node_id in previous.order:
        node, old = known[node_id], previous.steps[node_id]
        if node.literals == previous.nodes[node_id].literals and not old.cls.spec.dynamic:
            steps[node_id] = old
        else:
            step = _check_node(node, classes, errors)
            if step is None:
                return None
            steps[node_id] = step
    return Plan(steps, previous.order, previous.outputs, data, known)


def same_shape(nodes: dict[str, WorkflowNode], before: dict[str, WorkflowNode]) -> bool:
    """Whether two parsed workflows have the same nodes, classes and links (literals aside)."""
    if nodes.keys() != before.keys():
        return False
    for node_id, node in nodes.items():
        old = before[node_id]
        if node.class_type != old.class_type or node.links != old.links or node.malformed:
            return False
    return True


def check_host(plan: Plan, settings: RunSettings) -> None:
    """Run the nodes' checks against the host (`Node.check`: files that must exist, folders
    they must stay in); raises ValidationFailed with every problem."""
    errors = []
    for step in plan.steps.values():
        if not step.cls.spec.has_check:
            continue
        try:
            problems = list(step.cls.check(step.literals, settings))
        except Exception as exc:  # a faulty check is the node's problem, not a crash
            problems = [(None, f"The node's check failed: {type(exc).__name__}: {exc}")]
        errors += [
            NodeError(
                "custom_validation_failed",
                message,
                step.id,
                step.cls.spec.type_name,
                name,
                _short(step.literals.get(name)) if name else None,
            )
            for name, message in problems
        ]
    if errors:
        raise ValidationFailed(errors, plan_dependents(plan, errors))


def plan_dependents(plan: Plan, errors: list[NodeError]) -> dict[str, list[str]]:
    """For each node of a plan with an error, the output nodes that need it."""
    edges = [(link.source, s.id) for s in plan.steps.values() for link in s.links.values()]
    return dependent_outputs(build_graph(edges, plan.steps), errors, plan.outputs)


def dependent_outputs(
    graph: nx.DiGraph, errors: list[NodeError], outputs: list[str], most: int = 100
) -> dict[str, list[str]]:
    """For (up to `most`) nodes with errors, the output nodes that depend on them."""
    found: dict[str, list[str]] = {}
    for node_id in dict.fromkeys(e.node_id for e in errors if e.node_id in graph):
        if len(found) >= most:
            break
        below = nx.descendants(graph, node_id) | {node_id}
        found[node_id] = [o for o in outputs if o in below]  # type: ignore[index]
    return found


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _check_node(
    node: WorkflowNode, classes: dict[str, type[Node]], errors: list[NodeError]
) -> Step | None:
    """Check one node's inputs; a Step when they are all fine (errors appended otherwise)."""
    cls = classes[node.id]
    spec = cls.spec
    problems: list[tuple[str, str, str, Any]] = []
    for name in (*node.links, *node.malformed):  # unknown literals: ignored (Plan.ignored)
        if name not in spec.inputs:
            hint = _did_you_mean(name, spec.inputs)
            message = f"{node.class_type} has no input '{name}'.{hint}"
            problems.append(("invalid_input_name", message, name, None))
    literals: dict[str, Any] = {}
    links: dict[str, Link] = {}
    linked_literals: list[str] = []
    for name, inp in spec.inputs.items():
        if name in node.malformed:
            continue
        link = node.links.get(name)
        if link is not None:
            problem = _check_link(inp, link, classes)
            if problem is not None:
                problems.append((*problem, name, [link.source, link.output]))
            links[name] = link
            if not inp.is_socket:
                linked_literals.append(name)
        elif name in node.literals:
            value = node.literals[name]
            if inp.is_socket:
                message = f"The input takes a link from a {inp.type} output, not a literal value."
                problems.append(("invalid_input_type", message, name, value))
                continue
            try:
                literals[name] = coerce_literal(inp, value)
            except LiteralProblem as problem:
                problems.append((problem.kind, problem.message, name, value))
        elif inp.required:
            what = f"a link from a {inp.type} output" if inp.is_socket else "a value"
            message = f"The required input is missing: it needs {what}."
            problems.append(("required_input_missing", message, name, None))
        elif not inp.is_socket:
            literals[name] = inp.default
    if problems:
        errors.extend(
            NodeError(kind, message, node.id, node.class_type, name, _short(received))
            for kind, message, name, received in problems
        )
        return None
    return Step(node.id, cls, literals, links, tuple(linked_literals))


def _check_link(
    inp: InputSpec, link: Link, classes: dict[str, type[Node]]
) -> tuple[str, str] | None:
    """Why a link cannot feed `inp`, as (error type, message), or None."""
    source = classes.get(link.source)
    if source is None:
        return "bad_linked_input", (
            f"The input is linked to node {link.source}, which does not exist or failed to load."
        )
    outputs = source.spec.outputs
    if link.output >= len(outputs):
        return "bad_linked_input", (
            f"Node {link.source} ({source.spec.type_name}) has {len(outputs)} output(s); output "
            f"index {link.output} does not exist."
        )
    out_type = outputs[link.output].type
    if out_type != inp.type and not T.compatible(out_type, inp.type):
        return "return_type_mismatch", (
            f"The input takes {inp.type} but is linked to a {out_type} output of node "
            f"{link.source} ({source.spec.type_name})."
        )
    return None


class LiteralProblem(ValueError):
    """A value that does not fit a literal input: a ComfyUI error type and a sentence."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


def coerce_literal(inp: InputSpec, value: Any, remember: bool = True) -> Any:
    """The value a literal input gets from `value`; raises LiteralProblem if it does not fit.

    Good values of literals in workflows are remembered (they repeat across runs); values that
    arrive over links at run time are not (`remember=False`): they rarely repeat.
    """
    key = (type(value), value)
    remember = remember and inp.dynamic_choices is None  # dynamic choices: look them up again
    if remember:
        try:
            return inp.memo[key]
        except (KeyError, TypeError):  # not seen yet, or unhashable
            pass
    try:
        coerced = inp.adapter.validator.validate_python(value)  # type: ignore[union-attr]
    except ValidationError as exc:
        raise LiteralProblem(*_explain(inp, value, exc.errors()[0])) from None
    if inp.dynamic_choices is not None:
        choices = inp.choices() or ()
        if coerced not in choices:
            shown = ", ".join(map(repr, choices[:20])) or "none are available"
            message = f"{coerced!r} is not one of the choices: {shown}."
            raise LiteralProblem("value_not_in_list", message)
    if remember:
        with contextlib.suppress(TypeError):  # unhashable values are not remembered
            if len(inp.memo) >= _MEMO_SIZE:
                inp.memo.clear()
            inp.memo[key] = coerced
    return coerced


def _explain(inp: InputSpec, value: Any, err: dict[str, Any]) -> tuple[str, str]:
    kind = err["type"]
    ctx = err.get("ctx", {})
    if kind in ("greater_than_equal", "greater_than"):
        return _PYDANTIC_ERRORS[kind], f"{_short(value)} is smaller than the minimum {inp.ge}."
    if kind in ("less_than_equal", "less_than"):
        return _PYDANTIC_ERRORS[kind], f"{_short(value)} is bigger than the maximum {inp.le}."
    if kind == "string_too_long":
        return _PYDANTIC_ERRORS[kind], (
            f"The text is {len(value)} characters long; the limit is {ctx.get('max_length')}."
        )
    if kind == "literal_error":
        choices = [str(c) for c in inp.static_choices or ()]
        shown = ", ".join(map(repr, inp.static_choices or ()))
        nearest = _did_you_mean(str(value), choices) if isinstance(value, str) else ""
        return _PYDANTIC_ERRORS[kind], (
            f"{_short(value)!r} is not one of the choices: {shown}.{nearest}"
        )
    if kind == "finite_number":
        return (
            "invalid_input_type",
            f"{value} is not a finite number (NaN and infinities are refused).",
        )
    got = "null" if value is None else type(value).__name__
    return "invalid_input_type", (
        f"The input takes {_KIND_WORDS.get(inp.type, inp.type)} ({inp.type}), got {got} "
        f"{_short(value)!r}."
    )


def _short(value: Any, limit: int = 200) -> Any:
    """The value as received, cut down if it is huge (errors echo it back)."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"... ({len(value)} characters)"
    if isinstance(value, list | dict) and len(repr(value)) > limit:
        return repr(value)[:limit] + "..."
    return value
