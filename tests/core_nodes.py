"""Small nodes of the core tests' own: arithmetic, tiny image ops, and probes of the executor."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Hashable, Mapping
from typing import Any, Literal

import numpy as np

from nodegraph import InputField, Node, NodeContext, Outputs, RunContext
from nodegraph.types import socket

Image = socket("TEST_IMAGE", np.ndarray)
Number = socket("NUMBER", float)

CALLS: Counter[str] = Counter()
"""How often each test node class ran (reset by the `calls` fixture)."""


class Const(Node):
    """A number."""

    value: float = InputField(1.0, ge=-1e6, le=1e6, step=0.5, description="The number.")

    def invoke(self, ctx: NodeContext) -> Number:
        CALLS["Const"] += 1
        return self.value


class Add(Node):
    """Sum of two numbers."""

    a: Number = InputField(description="left")
    b: Number = InputField(description="right")

    def invoke(self, ctx: NodeContext) -> Number:
        CALLS["Add"] += 1
        return self.a + self.b


class Split(Node):
    """A number and its negation: two named outputs."""

    class Result(Outputs):
        positive: Number
        negative: Number

    x: Number = InputField()

    def invoke(self, ctx: NodeContext) -> Split.Result:
        CALLS["Split"] += 1
        return Split.Result(positive=abs(self.x), negative=-abs(self.x))


class Fill(Node):
    """A grey image of a size."""

    width: int = InputField(4, ge=1, le=64)
    height: int = InputField(4, ge=1, le=64)
    level: Number = InputField()

    def invoke(self, ctx: NodeContext) -> Image:
        CALLS["Fill"] += 1
        return np.full((self.height, self.width), self.level, dtype=np.float32)


class Invert(Node):
    image: Image = InputField()
    mode: Literal["negate", "one_minus"] = InputField("negate")

    def invoke(self, ctx: NodeContext) -> Image:
        CALLS["Invert"] += 1
        return -self.image if self.mode == "negate" else 1.0 - self.image


class Mean(Node):
    """The mean of an image, as a number."""

    image: Image = InputField()

    def invoke(self, ctx: NodeContext) -> Number:
        CALLS["Mean"] += 1
        return float(self.image.mean())


class Record(Node):
    """Output node: shows a number."""

    output_node = True
    value: Number = InputField()
    label: str = InputField("", max_length=50)
    scale: float | None = InputField(None, optional=True)

    def invoke(self, ctx: NodeContext) -> None:
        CALLS["Record"] += 1
        ctx.show("text", [f"{self.label}{self.value}"])


class Steps(Node):
    """Reports progress per step; sleeps a little per step."""

    x: Number = InputField()
    steps: int = InputField(5, ge=1, le=1000)
    delay: float = InputField(0.0, ge=0, le=1)

    def invoke(self, ctx: NodeContext) -> Number:
        CALLS["Steps"] += 1
        for i in range(self.steps):
            time.sleep(self.delay)
            ctx.progress(i + 1, self.steps)
        return self.x


class Boom(Node):
    """Raises when `fail` is true."""

    x: Number = InputField()
    fail: bool = InputField(True)

    def invoke(self, ctx: NodeContext) -> Number:
        CALLS["Boom"] += 1
        if self.fail:
            raise RuntimeError("boom: asked to fail")
        return self.x


class Warn(Node):
    x: Number = InputField()

    def invoke(self, ctx: NodeContext) -> Number:
        ctx.warn("this is a warning")
        return self.x


class ReadFile(Node):
    """A file's length; its fingerprint is the file's content."""

    path: str = InputField("data.txt")

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: RunContext) -> Hashable:
        return run.settings.resolve_input(literals["path"]).read_bytes()

    def invoke(self, ctx: NodeContext) -> Number:
        CALLS["ReadFile"] += 1
        return float(len(ctx.settings.resolve_input(self.path).read_bytes()))


PICK_CHOICES = ["a", "b", "c"]


class Pick(Node):
    """A choice found at run time."""

    name: str = InputField("a", choices=lambda: list(PICK_CHOICES))

    def invoke(self, ctx: NodeContext) -> str:
        return self.name


class IntOut(Node):
    value: int = InputField(3)

    def invoke(self, ctx: NodeContext) -> int:
        return self.value


class FloatIn(Node):
    output_node = True
    value: float = InputField(0.5, ge=0.0, le=1.0)

    def invoke(self, ctx: NodeContext) -> None:
        ctx.show("text", [str(self.value)])
