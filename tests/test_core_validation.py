"""Validation: every error is found before anything runs, named by node, input and type."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nodegraph.errors import NodeError, ValidationFailed
from nodegraph.executor import Executor
from nodegraph.workflow import load_json


def errors_of(executor: Executor, workflow: Any) -> list[NodeError]:
    with pytest.raises(ValidationFailed) as caught:
        executor.validate(workflow)
    return caught.value.errors


def only(errors: list[NodeError]) -> NodeError:
    assert len(errors) == 1, errors
    return errors[0]


def n(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


GOOD = {"1": n("Const", value=2.0), "2": n("Record", value=["1", 0])}


def test_a_good_workflow_validates(executor: Executor) -> None:
    plan = executor.validate(GOOD)
    assert plan.order == ["1", "2"] and plan.outputs == ["2"]


@pytest.mark.parametrize("text", ["{not json", "[1, 2", "", '{"1": NaN}', '{"a": Infinity}'])
def test_text_that_is_not_json(text: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        load_json(text)
    error = only(caught.value.errors)
    assert error.type == "invalid_prompt" and "not valid JSON" in error.message


@pytest.mark.parametrize("data", [[1, 2], "text", 3, None])
def test_json_that_is_not_an_object(executor: Executor, data: Any) -> None:
    error = only(errors_of(executor, data))
    assert error.type == "invalid_prompt" and "JSON object" in error.message


def test_wrapped_prompt_is_accepted(executor: Executor) -> None:
    assert executor.validate(load_json(json.dumps({"prompt": GOOD, "client_id": "x"}))).outputs == [
        "2"
    ]


def test_no_output_node(executor: Executor) -> None:
    error = only(errors_of(executor, {"1": n("Const")}))
    assert error.type == "prompt_no_outputs" and error.node_id is None
    assert only(errors_of(executor, {})).type == "prompt_no_outputs"


def test_unknown_and_missing_class_type(executor: Executor) -> None:
    errors = errors_of(executor, {**GOOD, "3": n("Cosnt"), "4": {"inputs": {}}, "5": 7})
    by_node = {e.node_id: e for e in errors}
    assert (
        by_node["3"].type == "missing_node_type" and "Did you mean 'Const'" in by_node["3"].message
    )
    assert by_node["4"].type == "missing_node_type" and "no class_type" in by_node["4"].message
    assert by_node["5"].type == "invalid_prompt"


def test_missing_required_input(executor: Executor) -> None:
    error = only(errors_of(executor, {"1": n("Record")}))
    assert (error.type, error.node_id, error.class_type, error.input_name) == (
        "required_input_missing",
        "1",
        "Record",
        "value",
    )


def test_links_to_missing_nodes_and_bad_output_index(executor: Executor) -> None:
    errors = errors_of(
        executor,
        {
            "1": n("Const"),
            "2": n("Record", value=["9", 0]),
            "3": n("Record", value=["1", 1]),
        },
    )
    assert [(e.node_id, e.type) for e in errors] == [
        ("2", "bad_linked_input"),
        ("3", "bad_linked_input"),
    ]
    assert "does not exist" in errors[0].message and "output index 1" in errors[1].message


@pytest.mark.parametrize(
    "link", [["1"], ["1", 0, 0], [1.5, 0], ["1", -1], ["1", "0"], ["1", True], [None, 0]]
)
def test_malformed_links(executor: Executor, link: list[Any]) -> None:
    error = only(errors_of(executor, {"1": n("Const"), "2": n("Record", value=link)}))
    assert error.type == "bad_linked_input" and error.input_name == "value"


def test_integer_node_ids_in_links_are_accepted(executor: Executor) -> None:
    assert executor.validate({"1": n("Const"), "2": n("Record", value=[1, 0])}).order == ["1", "2"]


def test_socket_type_mismatch(executor: Executor) -> None:
    error = only(
        errors_of(
            executor,
            {
                "1": n("Const"),
                "2": n("Invert", image=["1", 0]),
                "3": n("Record", value=["1", 0]),
                "4": n("Mean", image=["2", 0]),
                "5": n("Record", value=["4", 0]),
            },
        )
    )
    assert (error.type, error.node_id, error.input_name) == ("return_type_mismatch", "2", "image")
    assert "TEST_IMAGE" in error.message and "NUMBER" in error.message


def test_literal_where_a_link_is_needed(executor: Executor) -> None:
    error = only(errors_of(executor, {"1": n("Record", value=3.0)}))
    assert error.type == "invalid_input_type" and "link" in error.message


def test_literal_inputs_fed_by_links_check_types(executor: Executor) -> None:
    ok = {"1": n("IntOut"), "2": n("FloatIn", value=["1", 0])}
    assert executor.validate(ok).order == ["1", "2"]  # INT widens to FLOAT
    error = only(errors_of(executor, {"1": n("Const"), "2": n("FloatIn", value=["1", 0])}))
    assert error.type == "return_type_mismatch"


@pytest.mark.parametrize(
    "cycle",
    [
        {
            "1": n("Add", a=["2", 0], b=["2", 0]),
            "2": n("Add", a=["1", 0], b=["1", 0]),
            "3": n("Record", value=["2", 0]),
        },
        {"1": n("Add", a=["1", 0], b=["1", 0]), "3": n("Record", value=["1", 0])},
    ],
)
def test_cycles_including_self_loops(executor: Executor, cycle: dict[str, Any]) -> None:
    errors = errors_of(executor, cycle)
    assert {e.type for e in errors} == {"dependency_cycle"}
    assert {e.node_id for e in errors} == ({"1", "2"} if "2" in cycle else {"1"})
    assert "->" in errors[0].message


@pytest.mark.parametrize(
    ("inputs", "kind"),
    [
        ({"width": "4"}, "invalid_input_type"),
        ({"width": 4.0}, "invalid_input_type"),
        ({"width": True}, "invalid_input_type"),
        ({"width": None}, "invalid_input_type"),
        ({"width": 0}, "value_smaller_than_min"),
        ({"width": 65}, "value_bigger_than_max"),
        ({"width": 10**30}, "value_bigger_than_max"),
    ],
)
def test_wrong_type_and_out_of_range(executor: Executor, inputs: dict[str, Any], kind: str) -> None:
    wf = {
        "0": n("Const"),
        "1": n("Fill", level=["0", 0], **inputs),
        "2": n("Mean", image=["1", 0]),
        "3": n("Record", value=["2", 0]),
    }
    error = only(errors_of(executor, wf))
    assert (error.type, error.node_id, error.input_name) == (kind, "1", "width")
    assert error.received == inputs["width"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e400])
def test_nan_and_infinities(executor: Executor, value: float) -> None:
    error = only(
        errors_of(executor, {"1": n("Const", value=value), "2": n("Record", value=["1", 0])})
    )
    assert error.type == "invalid_input_type" and "finite" in error.message


def test_huge_integers_everywhere(executor: Executor) -> None:
    error = only(
        errors_of(executor, {"1": n("IntMath", a=2**64), "2": n("ShowValue", value=["1", 0])})
    )
    assert error.type == "value_bigger_than_max"
    error = only(
        errors_of(
            executor, {"1": n("IntMath", a=-(2**63) - 1), "2": n("ShowValue", value=["1", 0])}
        )
    )
    assert error.type == "value_smaller_than_min"


def test_choices(executor: Executor) -> None:
    wf = {
        "0": n("Const"),
        "1": n("Fill", level=["0", 0]),
        "2": n("Invert", image=["1", 0], mode="flip"),
        "3": n("Mean", image=["2", 0]),
        "4": n("Record", value=["3", 0]),
    }
    error = only(errors_of(executor, wf))
    assert error.type == "value_not_in_list" and "'negate'" in error.message
    error = only(
        errors_of(executor, {"1": n("Pick", name="z"), "2": n("ShowValue", value=["1", 0])})
    )
    assert error.type == "value_not_in_list" and "'a', 'b', 'c'" in error.message


def test_absurd_sizes(executor: Executor) -> None:
    error = only(
        errors_of(executor, {"1": n("Const"), "2": n("Record", value=["1", 0], label="x" * 51)})
    )
    assert error.type == "value_bigger_than_max" and "51 characters" in error.message
    error = only(
        errors_of(
            executor,
            {"1": n("PrimitiveString", value="x" * 1_000_001), "2": n("ShowValue", value=["1", 0])},
        )
    )
    assert error.type == "value_bigger_than_max"
    assert len(str(error.received)) < 300  # the error does not echo a megabyte back
    executor.limits = type(executor.limits)(max_nodes=10)
    error = only(errors_of(executor, {str(i): n("Const") for i in range(11)}))
    assert error.type == "invalid_prompt" and "limit is 10" in error.message


def test_an_unknown_literal_input_is_ignored_with_a_warning(executor: Executor) -> None:
    """As ComfyUI ignores them (its canvas writes LoadImage's "upload" widget value in)."""
    wf = {"1": n("Const", valeu=3.0, upload="image"), "2": n("Record", value=["1", 0])}
    result = executor.run(wf)
    assert result.ok, result.error
    assert [(w.node_id, w.message) for w in result.warnings] == [
        ("1", "no input 'valeu': ignored. Did you mean 'value'?"),
        ("1", "no input 'upload': ignored."),
    ]
    again = executor.run({**wf, "1": n("Const", value=1.0)})  # the same node without them
    assert set(again.cached) == {"1", "2"}  # ignored inputs are not part of the cache key


def test_an_unknown_linked_input_is_an_error(executor: Executor) -> None:
    wf = {"1": n("Const"), "2": n("Record", value=["1", 0], valeu=["1", 0])}
    error = only(errors_of(executor, wf))
    assert error.type == "invalid_input_name" and "Did you mean 'value'" in error.message


def test_all_errors_at_once_in_comfy_shape(executor: Executor) -> None:
    wf = {
        "1": n("Const", value="x"),
        "2": n("Record", value=["1", 0], label=5),
        "3": n("Nope"),
        "4": n("Record", value=["9", 0]),
    }
    with pytest.raises(ValidationFailed) as caught:
        executor.validate(wf)
    assert len(caught.value.errors) == 4
    body = caught.value.comfy_body()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(body["node_errors"]) == {"1", "2", "3", "4"}
    assert body["node_errors"]["1"]["dependent_outputs"] == ["2"]
    first = body["node_errors"]["1"]["errors"][0]
    assert first["type"] == "invalid_input_type"
    assert first["extra_info"] == {"input_name": "value", "received_value": "x"}
    assert body["node_errors"]["2"]["class_type"] == "Record"
    json.dumps(body)  # serialisable


def test_errors_in_unused_nodes_do_not_block(executor: Executor) -> None:
    wf = {**GOOD, "3": n("Const", value="not a number")}  # feeds no output node
    assert executor.validate(wf).order == ["1", "2"]


def chain(length: int) -> dict[str, Any]:
    wf = {"0": n("PrimitiveInt", value=1)}
    for i in range(1, length):
        wf[str(i)] = n("IntMath", a=[str(i - 1), 0], b=1, op="add")
    wf["out"] = n("ShowValue", value=[str(length - 1), 0])
    return wf


def test_ten_thousand_nodes_and_deep_chains(executor: Executor) -> None:
    plan = executor.validate(chain(20_000))
    assert len(plan.order) == 20_001 and plan.order[0] == "0" and plan.order[-1] == "out"
    result = executor.run(plan)
    assert result.ui["out"] == {"text": ["20000"]}
    wide = {str(i): n("Const", value=float(i)) for i in range(10_000)}
    wide.update({f"r{i}": n("Record", value=[str(i), 0]) for i in range(10_000)})
    assert len(executor.validate(wide).outputs) == 10_000


def test_deep_cycle_is_reported_without_recursion(executor: Executor) -> None:
    wf = chain(5_000)
    wf["0"] = n("IntMath", a=["4999", 0], b=1)
    errors = errors_of(executor, wf)
    assert len(errors) == 5_000 and {e.type for e in errors} == {"dependency_cycle"}
