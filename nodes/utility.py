"""Small utility nodes: primitives, integer math, strings, and showing any value."""

from __future__ import annotations

from typing import Literal

from nodegraph import InputField, Node, NodeContext
from nodegraph.types import Any_


class PrimitiveInt(Node):
    """One integer feeding many inputs (e.g. a shared seed)."""

    category = "utility/primitive"
    value: int = InputField(0, description="The integer to pass on.")

    def invoke(self, ctx: NodeContext) -> int:
        return self.value


class PrimitiveFloat(Node):
    """One number feeding many inputs."""

    category = "utility/primitive"
    value: float = InputField(0.0, description="The number to pass on.")

    def invoke(self, ctx: NodeContext) -> float:
        return self.value


class PrimitiveString(Node):
    """One text feeding many inputs."""

    category = "utility/primitive"
    value: str = InputField("", description="The text to pass on.", multiline=True)

    def invoke(self, ctx: NodeContext) -> str:
        return self.value


class PrimitiveBoolean(Node):
    """One true/false value feeding many inputs."""

    category = "utility/primitive"
    value: bool = InputField(False, description="The value to pass on.")

    def invoke(self, ctx: NodeContext) -> bool:
        return self.value


class IntMath(Node):
    """Integer arithmetic on two values; div and mod round towards minus infinity."""

    category = "utility/math"
    a: int = InputField(0, description="Left operand.")
    b: int = InputField(0, description="Right operand.")
    op: Literal["add", "sub", "mul", "div", "mod", "min", "max"] = InputField(
        "add", description="The operation."
    )

    def invoke(self, ctx: NodeContext) -> int:
        a, b = self.a, self.b
        if self.op in ("div", "mod") and b == 0:
            raise ValueError(f"cannot {self.op} by zero (b is 0)")
        match self.op:
            case "add":
                return a + b
            case "sub":
                return a - b
            case "mul":
                return a * b
            case "div":
                return a // b
            case "mod":
                return a % b
            case "min":
                return min(a, b)
            case _:
                return max(a, b)


class StringConcatenate(Node):
    """Join two texts with a delimiter between them."""

    category = "utility/string"
    string_a: str = InputField("", description="First text.", multiline=True)
    string_b: str = InputField("", description="Second text.", multiline=True)
    delimiter: str = InputField(" ", description="Put between the two texts.")

    def invoke(self, ctx: NodeContext) -> str:
        return f"{self.string_a}{self.delimiter}{self.string_b}"


class ShowValue(Node):
    """Show any value as text in the run's outputs."""

    category = "utility"
    output_node = True
    value: Any_ = InputField(description="The value to show.")

    def invoke(self, ctx: NodeContext) -> None:
        text = self.value if isinstance(self.value, str) else repr(self.value)
        ctx.show("text", [text])
