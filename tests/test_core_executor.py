"""The cached executor: order, cone invalidation, sharing, eviction, failure, interrupt, events."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nodegraph import Node, NodeContext, RunSettings
from nodegraph import events as ev
from nodegraph.cache import Cache, size_of
from nodegraph.errors import ValidationFailed
from nodegraph.executor import Executor
from nodegraph.registry import Registry
from tests import core_nodes
from tests.core_nodes import Number, Split


def n(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def image_graph(level: float = 0.5, mode: str = "negate", label: str = "") -> dict[str, Any]:
    """const -> fill -> invert -> mean -> record, plus a side branch const2 -> record2."""
    return {
        "c": n("Const", value=level),
        "f": n("Fill", width=8, height=8, level=["c", 0]),
        "i": n("Invert", image=["f", 0], mode=mode),
        "m": n("Mean", image=["i", 0]),
        "r": n("Record", value=["m", 0], label=label),
        "c2": n("Const", value=3.0),
        "r2": n("Record", value=["c2", 0]),
        "unused": n("Const", value=9.0),
    }


def test_runs_in_dependency_order_and_only_what_outputs_need(
    executor: Executor, calls: Counter
) -> None:
    result = executor.run(image_graph())
    assert result.ok
    order = result.executed
    assert (
        order.index("c") < order.index("f") < order.index("i") < order.index("m") < order.index("r")
    )
    assert "unused" not in order and set(order) == {"c", "f", "i", "m", "r", "c2", "r2"}
    assert result.ui["r"] == {"text": ["-0.5"]} and result.ui["r2"] == {"text": ["3.0"]}


def test_changing_one_literal_reruns_exactly_its_downstream_cone(executor: Executor) -> None:
    executor.run(image_graph())
    again = executor.run(image_graph())
    assert again.executed == [] and set(again.cached) == {"c", "f", "i", "m", "r", "c2", "r2"}
    changed = executor.run(image_graph(mode="one_minus"))
    assert sorted(changed.executed) == ["i", "m", "r"]
    assert changed.ui["r"] == {"text": ["0.5"]}
    label_only = executor.run(image_graph(mode="one_minus", label="x="))
    assert label_only.executed == ["r"]
    root = executor.run(image_graph(level=0.25, mode="one_minus", label="x="))
    assert sorted(root.executed) == ["c", "f", "i", "m", "r"]


def test_node_ids_do_not_enter_the_key(executor: Executor) -> None:
    executor.run(image_graph())
    renamed = {
        f"new_{k}": {
            **v,
            "inputs": {
                name: [f"new_{val[0]}", val[1]] if isinstance(val, list) else val
                for name, val in v["inputs"].items()
            },
        }
        for k, v in image_graph().items()
    }
    result = executor.run(renamed)
    assert result.executed == [] and result.ui["new_r"] == {"text": ["-0.5"]}


def test_identical_subgraphs_share_one_result(executor: Executor, calls: Counter) -> None:
    wf = {
        "a1": n("Const", value=2.0),
        "f1": n("Fill", level=["a1", 0]),
        "m1": n("Mean", image=["f1", 0]),
        "a2": n("Const", value=2.0),
        "f2": n("Fill", level=["a2", 0]),
        "m2": n("Mean", image=["f2", 0]),
        "sum": n("Add", a=["m1", 0], b=["m2", 0]),
        "r": n("Record", value=["sum", 0]),
    }
    result = executor.run(wf)
    assert result.ok and result.ui["r"] == {"text": ["4.0"]}
    assert calls["Const"] == 1 and calls["Fill"] == 1 and calls["Mean"] == 1
    assert set(result.cached) == {"a2", "f2", "m2"} or set(result.cached) == {"a1", "f1", "m1"}
    assert result.outputs["f1"][0] is result.outputs["f2"][0]


def test_cache_hands_back_the_very_objects(executor: Executor) -> None:
    first = executor.run(image_graph())
    second = executor.run(image_graph(mode="one_minus"))
    assert "f" in second.cached and second.outputs["f"][0] is first.outputs["f"][0]


def test_several_named_outputs_feed_different_inputs(executor: Executor) -> None:
    wf = {
        "c": n("Const", value=-3.0),
        "s": n("Split", x=["c", 0]),
        "a": n("Add", a=["s", 0], b=["s", 1]),
        "r": n("Record", value=["a", 0]),
        "r1": n("Record", value=["s", 1]),
    }
    result = executor.run(wf)
    assert result.ui["r"] == {"text": ["0.0"]} and result.ui["r1"] == {"text": ["-3.0"]}


def test_eviction_under_a_small_budget(registry: Registry, calls: Counter) -> None:
    one_image = 64 * 64 * 4
    executor = Executor(registry, Cache(budget_bytes=int(2.5 * one_image)))

    def big(level):
        return {
            "c": n("Const", value=level),
            "f": n("Fill", width=64, height=64, level=["c", 0]),
            "i": n("Invert", image=["f", 0]),
            "m": n("Mean", image=["i", 0]),
            "r": n("Record", value=["m", 0]),
        }

    executor.run(big(1.0))
    stats = executor.cache.stats()
    assert stats.bytes <= stats.budget and stats.evictions == 0 and stats.bytes == 2 * one_image
    executor.run(big(2.0))  # two more images: the oldest ones go
    stats = executor.cache.stats()
    assert stats.bytes <= stats.budget and stats.evictions >= 2
    calls.clear()
    assert executor.run(big(1.0)).executed == []  # its small outputs are still cached
    other = big(1.0)
    other["i"]["inputs"]["mode"] = "one_minus"  # needs the evicted image of the first run
    rerun = executor.run(other)
    assert rerun.ok and rerun.ui["r"] == {"text": ["0.0"]}
    assert calls["Fill"] == 1 and calls["Invert"] == 1


def test_eviction_never_breaks_a_cached_downstream(registry: Registry) -> None:
    executor = Executor(registry, Cache(budget_bytes=10_000))
    executor.run(image_graph())
    executor.cache.clear()
    assert executor.run(image_graph(label="x")).ok


def test_cache_stats_and_size() -> None:
    cache = Cache(budget_bytes=100)
    arr = np.zeros(10, dtype=np.float32)
    assert size_of((arr, [arr, {"k": arr}], "text", 5)) == 40  # the same array counts once
    assert size_of((arr, np.ones(5, dtype=np.float64))) == 80
    from nodegraph.cache import Entry

    cache.put("a", Entry((arr,), nbytes=40))
    cache.put("b", Entry((arr,), nbytes=40))
    assert cache.get("a") is not None and cache.get("zz") is None
    cache.put("c", Entry((arr,), nbytes=40))  # over budget: "b" is least recently used
    assert "b" not in cache and "a" in cache and "c" in cache
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.bytes, stats.evictions) == (
        1,
        1,
        2,
        80,
        1,
    )


def test_failure_mid_run_then_a_good_run(executor: Executor, calls: Counter) -> None:
    wf = {
        "c": n("Const", value=1.0),
        "b": n("Boom", x=["c", 0], fail=True),
        "r": n("Record", value=["b", 0]),
        "c2": n("Const", value=5.0),
        "r2": n("Record", value=["c2", 0]),
    }
    seen: list[ev.Event] = []
    failed = executor.run(wf, on_event=seen.append)
    assert failed.status == "failed"
    assert (
        failed.error is not None
        and failed.error.node_id == "b"
        and failed.error.class_type == "Boom"
    )
    assert "asked to fail" in failed.error.message and failed.error.exception_type == "RuntimeError"
    assert "b" not in failed.executed and "c" in failed.executed
    assert isinstance(seen[-1], ev.RunFailed) and not any(
        isinstance(e, ev.RunFinished) for e in seen
    )
    wf["b"]["inputs"]["fail"] = False
    good = executor.run(wf)
    assert good.ok and good.ui["r"] == {"text": ["1.0"]}
    assert "c" not in good.executed  # what succeeded before the failure was kept


def test_interrupt_between_steps(executor: Executor, calls: Counter) -> None:
    wf = {
        "c": n("Const"),
        "s": n("Steps", x=["c", 0], steps=200, delay=0.005),
        "r": n("Record", value=["s", 0]),
    }
    flag = threading.Event()
    progress: list[int] = []

    def listen(event: ev.Event) -> None:
        if isinstance(event, ev.Progress):
            progress.append(event.value)
            if event.value == 3:
                flag.set()

    result = executor.run(wf, on_event=listen, interrupt=flag)
    assert result.status == "interrupted" and progress[-1] == 3
    assert "s" not in result.executed and "r" not in result.executed
    flag.clear()
    assert executor.run(wf).ok  # nothing half-done was stored


def test_interrupt_from_another_thread(executor: Executor) -> None:
    wf = {
        "c": n("Const"),
        "s": n("Steps", x=["c", 0], steps=400, delay=0.005),
        "r": n("Record", value=["s", 0]),
    }
    started = threading.Event()
    executor_events: list[ev.Event] = []

    def listen(event: ev.Event) -> None:
        executor_events.append(event)
        if isinstance(event, ev.Progress):
            started.set()

    timer = threading.Thread(target=lambda: (started.wait(5), executor.interrupt()))
    timer.start()
    result = executor.run(wf, on_event=listen)
    timer.join()
    assert result.status == "interrupted"
    assert isinstance(executor_events[-1], ev.RunInterrupted) and executor_events[-1].node_id == "s"


def test_event_stream(executor: Executor) -> None:
    seen: list[ev.Event] = []
    wf = {
        "c": n("Const"),
        "w": n("Warn", x=["c", 0]),
        "s": n("Steps", x=["w", 0], steps=2),
        "r": n("Record", value=["s", 0]),
    }
    result = executor.run(wf, on_event=seen.append, run_id="run-1")
    kinds = [type(e).__name__ for e in seen]
    assert kinds == [
        "RunStarted",
        "NodeStarted",
        "NodeFinished",
        "NodeStarted",
        "NodeWarning",
        "NodeFinished",
        "NodeStarted",
        "Progress",
        "Progress",
        "NodeFinished",
        "NodeStarted",
        "NodeFinished",
        "RunFinished",
    ]
    assert all(e.run_id == "run-1" for e in seen)
    assert seen[0].planned == ("c", "w", "s", "r")
    assert [(e.value, e.max) for e in seen if isinstance(e, ev.Progress)] == [(1, 2), (2, 2)]
    assert result.warnings[0].message == "this is a warning" and result.warnings[0].node_id == "w"
    finished = [e for e in seen if isinstance(e, ev.NodeFinished)]
    assert finished[-1].ui == {"text": ["1.0"]}
    seen.clear()
    executor.run(wf, on_event=seen.append)
    assert [type(e).__name__ for e in seen] == [
        "RunStarted",
        "NodesCached",
        "NodeFinished",
        "RunFinished",
    ]
    assert (
        seen[1].node_ids == ("c", "w", "s", "r")
        and seen[2].cached is True
        and seen[2].ui == {"text": ["1.0"]}
    )


def test_fingerprint_reruns_when_the_file_changes(
    registry: Registry, tmp_path: Path, calls: Counter
) -> None:
    (tmp_path / "data.txt").write_text("abc")
    settings = RunSettings(base_dir=tmp_path)
    executor = Executor(registry)
    wf = {"f": n("ReadFile", path="data.txt"), "r": n("Record", value=["f", 0])}
    assert executor.run(wf, settings).ui["r"] == {"text": ["3.0"]}
    assert executor.run(wf, settings).executed == []
    (tmp_path / "data.txt").write_text("abcdef")
    result = executor.run(wf, settings)
    assert result.executed == ["f", "r"] and result.ui["r"] == {"text": ["6.0"]}


def test_fingerprint_failure_is_a_node_failure(registry: Registry, tmp_path: Path) -> None:
    wf = {"f": n("ReadFile", path="missing.txt"), "r": n("Record", value=["f", 0])}
    result = Executor(registry).run(wf, RunSettings(base_dir=tmp_path))
    assert result.status == "failed" and result.error.node_id == "f"
    assert "missing.txt" in result.error.message


def test_host_checks_run_when_the_host_settings_are_known(
    registry: Registry, tmp_path: Path
) -> None:
    class NeedsFile(Node):
        path: str = "data.txt"
        other: int = 0

        @classmethod
        def check(cls, literals: Mapping[str, Any], settings: RunSettings) -> list[tuple[str, str]]:
            found = settings.resolve_input(literals["path"]).is_file()
            return [] if found else [("path", f"no file {literals['path']}")]

        def invoke(self, ctx: NodeContext) -> Number:
            return 1.0

    registry.register(NeedsFile)
    executor, settings = Executor(registry), RunSettings(base_dir=tmp_path)
    wf = {"f": n("NeedsFile", path="gone.txt"), "r": n("Record", value=["f", 0])}
    executor.validate(wf)  # no host: nothing to check against
    with pytest.raises(ValidationFailed) as caught:
        executor.run(wf, settings)
    body = caught.value.comfy_body()["node_errors"]["f"]
    assert body["dependent_outputs"] == ["r"]
    assert [(e["type"], e["extra_info"]["input_name"], e["message"]) for e in body["errors"]] == [
        ("custom_validation_failed", "path", "no file gone.txt")
    ]
    (tmp_path / "gone.txt").write_text("x")
    assert executor.run(wf, settings).ui["r"] == {"text": ["1.0"]}
    (tmp_path / "gone.txt").unlink()  # a re-run of the same plan shape checks the host again
    wf["f"]["inputs"]["other"] = 1
    with pytest.raises(ValidationFailed):
        executor.run(wf, settings)


def test_a_check_that_raises_is_reported_not_crashed(registry: Registry) -> None:
    class BadCheck(Node):
        x: int = 0

        @classmethod
        def check(cls, literals: Mapping[str, Any], settings: RunSettings) -> list[tuple[str, str]]:
            raise OSError("disk on fire")

        def invoke(self, ctx: NodeContext) -> Number:
            return 1.0

    registry.register(BadCheck)
    wf = {"b": n("BadCheck"), "r": n("Record", value=["b", 0])}
    with pytest.raises(ValidationFailed) as caught:
        Executor(registry).run(wf, RunSettings())
    (error,) = caught.value.errors
    assert (error.node_id, error.type) == ("b", "custom_validation_failed")
    assert "OSError: disk on fire" in error.message


def test_linked_literals_are_checked_when_they_arrive(executor: Executor) -> None:
    wf = {"p": n("PrimitiveFloat", value=2.0), "f": n("FloatIn", value=["p", 0])}
    result = executor.run(wf)
    assert result.status == "failed" and result.error.node_id == "f"
    assert "input 'value'" in result.error.message and "maximum 1.0" in result.error.message
    wf["p"]["inputs"]["value"] = 0.25
    assert executor.run(wf).ui["f"] == {"text": ["0.25"]}


def test_a_node_returning_the_wrong_shape_fails_cleanly(registry: Registry) -> None:
    class BadSplit(Node):
        x: float = 0.0

        def invoke(self, ctx: NodeContext) -> Split.Result:
            return 5  # type: ignore[return-value]

    registry.register(BadSplit)
    result = Executor(registry).run({"b": n("BadSplit"), "r": n("ShowValue", value=["b", 0])})
    assert result.status == "failed" and "not its declared outputs" in result.error.message


@pytest.mark.parametrize(
    "op,expected",
    [("add", 9), ("sub", 5), ("mul", 14), ("div", 3), ("mod", 1), ("min", 2), ("max", 7)],
)
def test_int_math(executor: Executor, op: str, expected: int) -> None:
    wf = {"m": n("IntMath", a=7, b=2, op=op), "s": n("ShowValue", value=["m", 0])}
    assert executor.run(wf).ui["s"] == {"text": [str(expected)]}


def test_utility_nodes(executor: Executor) -> None:
    wf = {
        "s": n("PrimitiveString", value="hello"),
        "b": n("PrimitiveBoolean", value=True),
        "j": n("StringConcatenate", string_a=["s", 0], string_b="world", delimiter=", "),
        "o1": n("ShowValue", value=["j", 0]),
        "o2": n("ShowValue", value=["b", 0]),
    }
    result = executor.run(wf)
    assert result.ui["o1"] == {"text": ["hello, world"]} and result.ui["o2"] == {"text": ["True"]}
    wf = {"z": n("IntMath", a=1, b=0, op="div"), "o3": n("ShowValue", value=["z", 0])}
    result = executor.run(wf)
    assert result.status == "failed" and "by zero" in result.error.message


def test_reruns_check_again_only_what_changed(executor: Executor, calls: Counter) -> None:
    first = executor.validate(image_graph())
    executor.run(first)
    again = executor.validate(image_graph(label="x"))
    assert again.steps["f"] is first.steps["f"]  # unchanged nodes keep their checked step
    assert again.steps["r"] is not first.steps["r"]
    assert executor.run(again).executed == ["r"]


def test_a_changed_literal_is_still_checked_on_a_rerun(executor: Executor) -> None:
    executor.run(image_graph())
    bad = image_graph()
    bad["f"]["inputs"]["width"] = 1000
    with pytest.raises(ValidationFailed) as caught:
        executor.validate(bad)
    (error,) = caught.value.errors
    assert (error.node_id, error.type) == ("f", "value_bigger_than_max")
    assert caught.value.dependent_outputs["f"] == ["r"]


def test_a_source_that_changed_class_is_checked_again(executor: Executor) -> None:
    wf = {
        "c": n("Const"),
        "f": n("Fill", level=["c", 0]),
        "m": n("Mean", image=["f", 0]),
        "r": n("Record", value=["m", 0]),
    }
    executor.run(wf)
    wf["c"] = n("IntOut")  # same id and links, an INT output now: Fill.level wants NUMBER
    with pytest.raises(ValidationFailed) as caught:
        executor.validate(wf)
    assert [(e.node_id, e.type) for e in caught.value.errors] == [("f", "return_type_mismatch")]


def test_choices_found_at_run_time_are_checked_on_every_run(executor: Executor) -> None:
    wf = {"p": n("Pick", name="c"), "s": n("ShowValue", value=["p", 0])}
    assert executor.run(wf).ok
    core_nodes.PICK_CHOICES.remove("c")
    try:
        with pytest.raises(ValidationFailed) as caught:
            executor.validate(wf)
        assert caught.value.errors[0].type == "value_not_in_list"
    finally:
        core_nodes.PICK_CHOICES.append("c")


def test_keys_of_a_rerun_match_a_fresh_executor(registry: Registry) -> None:
    warm = Executor(registry)
    warm.run(image_graph())
    changed = image_graph(mode="one_minus", label="y")
    warm_result = warm.run(changed)
    fresh = Executor(registry, warm.cache)  # same cache, no memory of the last plan
    fresh_result = fresh.run(changed)
    assert fresh_result.executed == [] and warm_result.ui == fresh_result.ui
