"""Runs a validated plan against the cache, emitting events and honouring interrupts."""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import events
from .cache import Cache, Entry, signature, size_of
from .context import NodeContext, RunContext, RunSettings
from .errors import Interrupted, NodeFailed
from .plan import Plan, Step, gc_frozen, gc_paused
from .registry import Registry
from .validate import Limits, LiteralProblem, check_host, coerce_literal, ignored_inputs, validate
from .workflow import unwrap

Listener = Callable[[events.Event], None]


@dataclass
class RunResult:
    run_id: str
    status: str
    """"success", "failed" or "interrupted"."""
    seconds: float
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    """Nodes not executed because the cache holds their results (as ComfyUI's execution_cached)."""
    node_seconds: dict[str, float] = field(default_factory=dict)
    ui: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    outputs: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """Output values of every node that took part, by node id."""
    warnings: list[events.NodeWarning] = field(default_factory=list)
    error: events.RunFailed | None = None
    keys: dict[str, str] = field(default_factory=dict)
    """Every planned node's cache key (ancestry signature), by node id."""

    @property
    def ok(self) -> bool:
        return self.status == "success"


class Executor:
    """Validates and runs workflows; keeps one cache across runs (and across workflows)."""

    def __init__(
        self, registry: Registry, cache: Cache | None = None, limits: Limits | None = None
    ) -> None:
        self.registry = registry
        self.cache = cache if cache is not None else Cache()
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._interrupt: threading.Event | None = None
        self._last: tuple[Plan, dict[str, str]] | None = None
        """The last plan run and its cache keys: a re-run or sweep redoes only what changed."""

    def validate(self, workflow: Any, settings: RunSettings | None = None) -> Plan:
        """Check a workflow (API-format dict); raises ValidationFailed listing every error.

        With the host's `settings`, the nodes' own checks against the host run too (files that
        must exist): the settings a run will use.
        """
        previous = self._last[0] if self._last is not None else None
        with gc_paused():
            plan = validate(workflow, self.registry, self.limits, previous)
        if settings is not None:
            check_host(plan, settings)
        return plan

    def keys(self, plan: Plan, settings: RunSettings) -> dict[str, str]:
        """Every node's cache key under `settings`, computed without running anything (what a
        router compares with the keys a worker holds). A fingerprint that fails raises."""
        ctx = RunContext("keys", settings, plan.workflow, {}, _ignore, threading.Event())
        run = _Run(self, plan, ctx, False)
        for node_id in plan.order:
            run.keys[node_id] = run._key(plan.steps[node_id])
        return run.keys

    def interrupt(self) -> None:
        """Ask the run in progress to stop at its next node or progress tick."""
        if self._interrupt is not None:
            self._interrupt.set()

    def run(
        self,
        workflow: Any,
        settings: RunSettings | None = None,
        *,
        on_event: Listener | None = None,
        extra: Mapping[str, Any] | None = None,
        interrupt: threading.Event | None = None,
        run_id: str | None = None,
    ) -> RunResult:
        """Validate (unless given a Plan) and run; node failures come back in the result."""
        raw = workflow.workflow if isinstance(workflow, Plan) else unwrap(workflow)
        settings = settings or RunSettings()
        plan = workflow if isinstance(workflow, Plan) else self.validate(raw, settings)
        with self._lock:
            self._interrupt = interrupt or threading.Event()
            try:
                ctx = RunContext(
                    run_id or uuid.uuid4().hex,
                    settings,
                    raw if isinstance(raw, dict) else {},
                    extra or {},
                    on_event or _ignore,
                    self._interrupt,
                )
                return _Run(self, plan, ctx, on_event is not None).execute()
            finally:
                self._interrupt = None


def _ignore(_: events.Event) -> None:
    return None


class _Run:
    """The state of one run: keys, values pinned for it, and what happened."""

    def __init__(self, executor: Executor, plan: Plan, ctx: RunContext, listening: bool) -> None:
        self.executor, self.cache = executor, executor.cache
        self.plan, self.ctx, self.listening = plan, ctx, listening
        self._listener, ctx.emit = ctx.emit, self._dispatch
        self.keys: dict[str, str] = {}
        self.current: Step | None = None
        """The node being keyed or executed (named by failures and interrupts)."""
        self.values: dict[str, Entry] = {}
        """Entries this run reads, by key: pinned, so eviction cannot take them mid-run."""
        self._served: set[str] = set()
        """Nodes whose results come from the cache or from an identical node in this run."""
        self._twins: dict[str, list[str]] = {}
        """For a node that executes: the identical nodes that share its result."""
        self.result = RunResult(ctx.run_id, "success", 0.0)

    def _dispatch(self, event: events.Event) -> None:
        if isinstance(event, events.NodeWarning):
            self.result.warnings.append(event)
        self._listener(event)

    def emit(self, event_type: type[events.Event], **fields: Any) -> None:
        if self.listening:
            self._listener(event_type(run_id=self.ctx.run_id, **fields))

    def execute(self) -> RunResult:
        start = time.perf_counter()
        result = self.result
        try:
            with gc_paused():
                self._compute_keys()
                to_run = self._select()
            cached = set(result.cached)
            planned = tuple(n for n in self.plan.order if n in to_run or n in cached)
            self.emit(events.RunStarted, planned=planned)
            for node_id, cls, message in ignored_inputs(self.plan):
                warning = events.NodeWarning(
                    run_id=self.ctx.run_id, node_id=node_id, class_type=cls, message=message
                )
                self._dispatch(warning)
            if result.cached:
                self.emit(events.NodesCached, node_ids=tuple(result.cached))
            for node_id in result.cached:
                if node_id in self._served:
                    self._report_cached(node_id)
            with gc_frozen():
                for node_id in self.plan.order:
                    if node_id in to_run:
                        self.ctx.check_interrupt()
                        self._execute(self.plan.steps[node_id])
            self.current = None
        except Interrupted:
            result.status = "interrupted"
            self.emit(
                events.RunInterrupted,
                node_id=self.current and self.current.id,
                class_type=self.current and self.current.cls.spec.type_name,
                executed=tuple(result.executed),
            )
        except Exception as exc:
            result.status = "failed"
            result.error = self._failure(exc)
            self._listener(result.error)
        result.seconds = time.perf_counter() - start
        if result.status == "success":
            self.emit(events.RunFinished, seconds=result.seconds)
        return result

    def _failure(self, exc: Exception) -> events.RunFailed:
        """The RunFailed event for an exception raised by the current node (or the run)."""
        step = self.current
        if isinstance(exc, NodeFailed):
            message, kind = exc.message, "NodeFailed"
        else:
            message, kind = f"{exc}" or type(exc).__name__, type(exc).__name__
        return events.RunFailed(
            run_id=self.ctx.run_id,
            node_id=step.id if step else None,
            class_type=step.cls.spec.type_name if step else None,
            message=message,
            exception_type=kind,
            traceback=traceback.format_exc(),
            executed=tuple(self.result.executed),
        )

    def _compute_keys(self) -> None:
        """Every node's key; a node unchanged since the last plan (same Step, no fingerprint,
        no source whose key changed) keeps its last key without hashing anything."""
        last_plan, last_keys = self.executor._last or (None, {})
        last_steps = last_plan.steps if last_plan is not None else {}
        keys, changed = self.keys, set()
        for node_id in self.plan.order:
            step = self.plan.steps[node_id]
            old = last_keys.get(node_id)
            if (
                old is not None
                and last_steps.get(node_id) is step
                and not step.cls.spec.has_fingerprint
                and not any(link.source in changed for link in step.links.values())
            ):
                keys[node_id] = old
                continue
            self.current = step  # a fingerprint that raises is this node's failure
            keys[node_id] = key = self._key(step)
            if key != old:
                changed.add(node_id)
        self.current = None
        self.executor._last = (self.plan, keys)
        self.result.keys = keys

    def _key(self, step: Step) -> str:
        spec = step.cls.spec
        fingerprint = (
            step.cls.fingerprint(step.literals, self.ctx) if spec.has_fingerprint else None
        )
        keys = self.keys
        sources = {name: (keys[link.source], link.output) for name, link in step.links.items()}
        return signature(spec.type_name, step.literals, fingerprint, sources)

    def _select(self) -> set[str]:
        """Nodes to execute: walk back from the outputs, stopping at cache hits.

        Values of cache hits are pinned for this run (eviction cannot take them away). Among
        nodes with equal keys, the first in order executes and the others share its result.
        """
        to_run: set[str] = set()
        first_of_key: dict[str, str] = {}
        stack = list(self.plan.outputs)
        seen: set[str] = set()
        while stack:
            node_id = stack.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            key = self.keys[node_id]
            entry = self.values.get(key) or self.cache.get(key)
            if entry is not None:
                self.values[key] = entry
                self._served.add(node_id)
                continue
            to_run.add(node_id)
            stack.extend(link.source for link in self.plan.steps[node_id].links.values())
        for node_id in self.plan.order:
            if node_id in to_run:
                key = self.keys[node_id]
                if key in first_of_key:
                    to_run.discard(node_id)
                    self._served.add(node_id)
                    self._twins.setdefault(first_of_key[key], []).append(node_id)
                else:
                    first_of_key[key] = node_id
        # as ComfyUI reports: every node not executed whose result the cache holds (those the
        # run reads, and their ancestors, which it did not need to look at)
        cache = self.cache
        self.result.cached = [
            n
            for n in self.plan.order
            if n in self._served or (n not in to_run and self.keys[n] in cache)
        ]
        return to_run

    def _report_cached(self, node_id: str) -> None:
        entry = self.values.get(self.keys[node_id])
        if entry is None:  # shares the result of an identical node that runs later
            return
        self.result.outputs[node_id] = entry.outputs
        if entry.ui:
            self.result.ui[node_id] = entry.ui
            self.emit(
                events.NodeFinished,
                node_id=node_id,
                class_type=self.plan.steps[node_id].cls.spec.type_name,
                seconds=0.0,
                ui=entry.ui,
                cached=True,
            )

    def _inputs(self, step: Step) -> dict[str, Any]:
        kwargs = dict(step.literals)
        for name, link in step.links.items():
            kwargs[name] = self.values[self.keys[link.source]].outputs[link.output]
        for name in step.linked_literals:
            try:
                kwargs[name] = coerce_literal(step.cls.spec.inputs[name], kwargs[name], False)
            except LiteralProblem as problem:
                raise NodeFailed(
                    step.id,
                    step.cls.spec.type_name,
                    f"input '{name}' received an unusable value: {problem.message}",
                ) from None
        return kwargs

    def _execute(self, step: Step) -> None:
        self.current = step
        spec = step.cls.spec
        self.emit(events.NodeStarted, node_id=step.id, class_type=spec.type_name)
        started = time.perf_counter()
        node = step.cls.model_construct(**self._inputs(step))
        node_ctx = NodeContext(self.ctx, step.id, spec.type_name)
        value = node.invoke(node_ctx)
        if spec.returns is not None:
            if not isinstance(value, spec.returns):
                raise TypeError(
                    f"{spec.type_name}.invoke returned {type(value).__name__}, "
                    f"not its declared outputs"
                )
            outputs = tuple(getattr(value, o.name) for o in spec.outputs)
        else:
            outputs = (value,) if spec.outputs else ()
        entry = Entry(outputs, node_ctx.ui, size_of(outputs))
        self.cache.put(self.keys[step.id], entry)
        self.values[self.keys[step.id]] = entry
        seconds = time.perf_counter() - started
        result = self.result
        result.executed.append(step.id)
        result.node_seconds[step.id] = seconds
        result.outputs[step.id] = outputs
        if node_ctx.ui:
            result.ui[step.id] = node_ctx.ui
        for twin in self._twins.get(step.id, ()):
            result.outputs[twin] = outputs
            if node_ctx.ui:
                result.ui[twin] = node_ctx.ui
        self.emit(
            events.NodeFinished,
            node_id=step.id,
            class_type=spec.type_name,
            seconds=seconds,
            ui=node_ctx.ui,
        )
