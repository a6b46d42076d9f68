"""Node definition: the spec and catalogue derived from one pydantic declaration."""

from __future__ import annotations

from typing import Any

import pytest

from nodegraph import InputField, Node, NodeContext, Registry
from nodegraph.registry import describe
from nodegraph.types import ANY, compatible, socket
from tests import core_nodes


def test_catalogue_has_comfyui_shape(registry: Registry) -> None:
    entry = registry.catalogue()["Fill"]
    assert set(entry) >= {
        "input",
        "input_order",
        "output",
        "output_is_list",
        "output_name",
        "name",
        "display_name",
        "description",
        "category",
        "output_node",
    }
    assert entry["input_order"]["required"] == ["width", "height", "level"]
    assert entry["input"]["required"]["width"] == ["INT", {"default": 4, "min": 1, "max": 64}]
    assert entry["input"]["required"]["level"] == ["NUMBER", {}]
    assert entry["output"] == ["TEST_IMAGE"] and entry["output_is_list"] == [False]
    assert entry["description"] == "A grey image of a size."
    assert entry["output_node"] is False


def test_literal_kinds_ranges_steps_choices(registry: Registry) -> None:
    const = registry.catalogue()["Const"]["input"]["required"]["value"]
    assert const == [
        "FLOAT",
        {"tooltip": "The number.", "default": 1.0, "min": -1e6, "max": 1e6, "step": 0.5},
    ]
    invert = registry.catalogue()["Invert"]["input"]["required"]["mode"]
    assert invert == [["negate", "one_minus"], {"default": "negate"}]
    pick = registry.catalogue()["Pick"]["input"]["required"]["name"]
    assert pick[0] == ["a", "b", "c"]
    assert registry.catalogue()["Boom"]["input"]["required"]["fail"][0] == "BOOLEAN"
    text = registry.catalogue()["PrimitiveString"]["input"]["required"]["value"]
    assert text[0] == "STRING" and text[1]["multiline"] is True


def test_optional_inputs_and_output_nodes(registry: Registry) -> None:
    record = registry.catalogue()["Record"]
    assert record["output_node"] is True and record["output"] == []
    assert record["input_order"] == {"required": ["value", "label"], "optional": ["scale"]}


def test_several_named_outputs() -> None:
    entry = describe(core_nodes.Split)
    assert entry["output"] == ["NUMBER", "NUMBER"]
    assert entry["output_name"] == ["POSITIVE", "NEGATIVE"]


def test_literal_outputs_are_typed() -> None:
    assert describe(core_nodes.IntOut)["output"] == ["INT"]
    assert describe(core_nodes.Pick)["output"] == ["STRING"]


def test_declaration_errors_are_caught_at_class_definition() -> None:
    with pytest.raises(TypeError, match="return annotation"):

        class NoReturn(Node):
            def invoke(self, ctx: NodeContext):  # type: ignore[no-untyped-def]
                return 1

    with pytest.raises(TypeError, match="must be int, float, str, bool"):

        class BadInput(Node):
            x: list[int] = InputField([1])

            def invoke(self, ctx: NodeContext) -> int:
                return 1

    with pytest.raises(TypeError, match="outputs must be socket types"):

        class BadOutput(Node):
            def invoke(self, ctx: NodeContext) -> dict[str, Any]:
                return {}


def test_registry_refuses_duplicates_and_non_nodes() -> None:
    reg = Registry([core_nodes.Const])

    class Const(Node):  # same class_type, another class
        def invoke(self, ctx: NodeContext) -> int:
            return 0

    with pytest.raises(ValueError, match="both named 'Const'"):
        reg.register(Const)
    with pytest.raises(TypeError):
        reg.register(int)  # type: ignore[arg-type]


def test_socket_compatibility() -> None:
    assert compatible("IMAGE", "IMAGE") and not compatible("IMAGE", "LATENT")
    assert compatible("LATENT", ANY) and compatible(ANY, "MODEL")
    assert compatible("INT", "FLOAT") and not compatible("FLOAT", "INT")
    assert compatible("STRING", "COMBO")
    with pytest.raises(ValueError):
        socket("")


def test_default_registry_finds_utility_nodes() -> None:
    reg = Registry()
    reg.discover("nodes")
    for name in (
        "PrimitiveInt",
        "PrimitiveFloat",
        "PrimitiveString",
        "PrimitiveBoolean",
        "IntMath",
        "StringConcatenate",
        "ShowValue",
    ):
        assert name in reg
    assert reg.catalogue()["ShowValue"]["input"]["required"]["value"][0] == ANY


def test_configure_hands_host_settings_to_node_modules() -> None:
    import types

    module = types.ModuleType("plugin_with_settings")
    seen: list[dict[str, Any]] = []
    module.configure = seen.append  # type: ignore[attr-defined]
    reg = Registry()
    reg.register_module(module)
    reg.register_module(core_nodes)  # has no configure: skipped
    reg.configure({"models": ["/x"]})
    assert seen == [{"models": ["/x"]}]
