"""The public API for node authors: a node is a pydantic model whose fields are its inputs.

    class IntMath(Node):
        '''Integer arithmetic on two values.'''
        category = "utility/math"
        a: int = InputField(0, description="left operand")
        b: int = InputField(0, description="right operand")
        op: Literal["add", "sub"] = InputField("add")

        def invoke(self, ctx: NodeContext) -> int:
            return self.a + self.b if self.op == "add" else self.a - self.b

Literal inputs are int, float, str, bool or a choice (`Literal[...]` or `choices=`); socket inputs
are annotated with a socket type (`nodegraph.types.socket`). Outputs come from the return
annotation of `invoke`: one socket type, a plain int/float/str/bool, `None` (no outputs), or an
`Outputs` model whose fields name several outputs. Everything the registry publishes is derived
from this one declaration.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import types as T  # noqa: N812

if typing.TYPE_CHECKING:
    from .context import NodeContext, RunContext, RunSettings

LITERAL_TYPES: dict[type, str] = {bool: T.BOOLEAN, int: T.INT, float: T.FLOAT, str: T.STRING}
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
"""Integers outside this range are refused everywhere (they cannot reach torch or JSON clients)."""
MAX_STRING = 1_000_000
"""Default longest string literal, in characters."""

Choices = Sequence[str] | Callable[[], Sequence[str]]


def InputField(  # noqa: N802 - reads like pydantic's Field, which it wraps
    default: Any = PydanticUndefined,
    *,
    description: str | None = None,
    ge: float | None = None,
    le: float | None = None,
    step: float | None = None,
    choices: Choices | None = None,
    multiline: bool = False,
    max_length: int | None = None,
    optional: bool = False,
    **ui: Any,
) -> Any:
    """A node input: pydantic's Field plus what a UI needs (step, choices, multiline, ...).

    `choices` may be a callable for choices found at run time (e.g. the installed models).
    `optional` puts the input under `input.optional`; other keyword arguments pass to the UI
    (e.g. `control_after_generate=True` on seeds).
    """
    extra = {"step": step, "choices": choices, "multiline": multiline, "optional": optional, **ui}
    return Field(
        default,
        description=description,
        ge=ge,
        le=le,
        max_length=max_length,
        json_schema_extra={"nodegraph": extra},  # type: ignore[dict-item]
    )


class Outputs(BaseModel):
    """Base for a node's several named outputs: each field is one output, in order.

    /object_info names them in upper case (ComfyUI names outputs by their types), or by the
    field names as written when `shown_names` is set (ComfyUI's RETURN_NAMES)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())
    shown_names: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One input as the engine sees it."""

    name: str
    type: str
    is_socket: bool
    required: bool
    optional: bool
    default: Any
    description: str | None
    ge: float | None = None
    le: float | None = None
    step: float | None = None
    static_choices: tuple[str, ...] | None = None
    dynamic_choices: Callable[[], Sequence[str]] | None = None
    ui: Mapping[str, Any] = field(default_factory=dict)
    adapter: TypeAdapter[Any] | None = None
    memo: dict[tuple[type, Any], Any] = field(default_factory=dict, compare=False, repr=False)
    """Values already validated for this input (see validate.coerce_literal)."""

    def choices(self) -> tuple[str, ...] | None:
        """The allowed values of a choice input, looked up now for dynamic choices."""
        if self.dynamic_choices is not None:
            return tuple(self.dynamic_choices())
        return self.static_choices


@dataclass(frozen=True, slots=True)
class OutputSpec:
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """Everything derived from a node class: its public contract."""

    type_name: str
    inputs: dict[str, InputSpec]
    outputs: tuple[OutputSpec, ...]
    returns: type[Outputs] | None
    """The Outputs model of a node with several outputs, else None."""
    has_fingerprint: bool
    has_check: bool = False
    """Whether the class checks its literals against the host (`Node.check`)."""

    @property
    def dynamic(self) -> bool:
        """Whether validity can change with no change to the workflow (choices found at run
        time): such nodes are checked again on every run."""
        return any(i.dynamic_choices is not None for i in self.inputs.values())


class Node(BaseModel):
    """Base class of every node. Subclass it; fields are inputs; `invoke` computes outputs."""

    model_config = ConfigDict(
        arbitrary_types_allowed=True,
        extra="forbid",
        protected_namespaces=(),
        validate_default=False,
    )

    category: ClassVar[str] = "utility"
    display_name: ClassVar[str | None] = None
    output_node: ClassVar[bool] = False
    """Output nodes write or show results; only they and their ancestors run."""
    node_type: ClassVar[str | None] = None
    """The class_type in workflows; defaults to the class name."""
    hidden: ClassVar[dict[str, str]] = {}
    """What the node reads of its run besides its inputs, as /object_info's hidden inputs
    (ComfyUI's e.g. {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}): shown, not sent."""
    spec: ClassVar[NodeSpec]

    def invoke(self, ctx: NodeContext) -> Any:
        raise NotImplementedError

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: RunContext) -> Hashable:
        """Override when the output depends on something outside the inputs (a file, a clock).

        Called before every run with the node's literal inputs; a changed result re-runs the node.
        """
        return None

    @classmethod
    def check(cls, literals: Mapping[str, Any], settings: RunSettings) -> Iterable[tuple[str, str]]:
        """Override to check literals against the host (a file that must exist, a folder it
        must stay in) when a workflow is validated for a run: the problems as (input, message)."""
        return ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.invoke is not Node.invoke:  # intermediate bases without invoke get no spec
            cls.spec = _derive_spec(cls)


def _derive_spec(cls: type[Node]) -> NodeSpec:
    type_name = cls.__dict__.get("node_type") or cls.__name__
    inputs = {name: _input_spec(cls, name, info) for name, info in cls.model_fields.items()}
    outputs, returns = _output_specs(cls)
    has_fp = cls.fingerprint.__func__ is not Node.fingerprint.__func__  # type: ignore[attr-defined]
    has_check = cls.check.__func__ is not Node.check.__func__  # type: ignore[attr-defined]
    return NodeSpec(type_name, inputs, outputs, returns, has_fp, has_check)


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _socket_of(annotation: Any, metadata: Sequence[Any] = ()) -> str | None:
    for item in (
        *metadata,
        *(get_args(annotation)[1:] if get_origin(annotation) is Annotated else ()),
    ):
        if isinstance(item, T.Socket):
            return item.name
    return None


def _input_spec(cls: type[Node], name: str, info: FieldInfo) -> InputSpec:
    extra = (
        (info.json_schema_extra or {}).get("nodegraph", {})
        if isinstance(info.json_schema_extra, dict)
        else {}
    )
    extra = dict(extra)  # type: ignore[arg-type]
    step, choices = extra.pop("step", None), extra.pop("choices", None)
    multiline, optional = extra.pop("multiline", False), extra.pop("optional", False)
    annotation, nullable = _strip_optional(info.annotation)
    has_default = info.default is not PydanticUndefined
    default = info.default if has_default else None
    where = f"{cls.__name__}.{name}"

    socket_name = _socket_of(annotation, info.metadata)
    if socket_name is not None:
        return InputSpec(
            name,
            socket_name,
            True,
            required=not (has_default or optional or nullable),
            optional=optional or nullable or has_default,
            default=default,
            description=info.description,
            ui=extra,
        )

    static: tuple[str, ...] | None = None
    dynamic = None
    if get_origin(annotation) is Literal:
        static = tuple(get_args(annotation))
        if not all(isinstance(c, str) for c in static):
            raise TypeError(f"{where}: choices must be strings")
        type_name, base = T.COMBO, str
    elif annotation in LITERAL_TYPES:
        base = annotation
        type_name = LITERAL_TYPES[annotation]
        if choices is not None:
            if base is not str:
                raise TypeError(f"{where}: choices need a str field")
            type_name = T.COMBO
            if callable(choices):
                dynamic = choices
            else:
                static = tuple(choices)
    else:
        raise TypeError(
            f"{where}: an input must be int, float, str, bool, a Literal choice or a socket "
            f"type (nodegraph.types.socket), not {annotation!r}"
        )
    ge = le = None
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            ge = m.ge
        elif isinstance(m, annotated_types.Le):
            le = m.le
    if base is int:
        ge = INT_MIN if ge is None else max(ge, INT_MIN)
        le = INT_MAX if le is None else min(le, INT_MAX)
    return InputSpec(
        name,
        type_name,
        False,
        required=not has_default,
        optional=optional,
        default=default,
        description=info.description,
        ge=ge,
        le=le,
        step=step,
        static_choices=static,
        dynamic_choices=dynamic,
        ui={"multiline": True, **extra} if multiline else extra,
        adapter=_literal_adapter(annotation, base, info, ge, le),
    )


def _literal_adapter(
    annotation: Any, base: type, info: FieldInfo, ge: float | None, le: float | None
) -> TypeAdapter[Any]:
    """A strict validator for one literal input (ints stay ints, no NaN, bounds applied)."""
    constraints: list[Any] = [*info.metadata]
    if base is float:
        constraints.append(AllowInfNan(False))
    elif base is int:
        constraints += [annotated_types.Ge(ge), annotated_types.Le(le)]
    elif base is str and not any(isinstance(m, annotated_types.MaxLen) for m in info.metadata):
        constraints.append(annotated_types.MaxLen(MAX_STRING))
    if get_origin(annotation) is not Literal:  # a Literal already matches exactly
        constraints.insert(0, Strict())
    return TypeAdapter(Annotated[annotation, *constraints])


def _output_specs(cls: type[Node]) -> tuple[tuple[OutputSpec, ...], type[Outputs] | None]:
    raw = getattr(cls.invoke, "__annotations__", {})
    if "return" not in raw:
        raise TypeError(f"{cls.__name__}.invoke needs a return annotation (its outputs)")

    def holder() -> None: ...

    holder.__annotations__ = {"return": raw["return"]}
    try:  # resolve only the return annotation: in the module, the class and its nested Outputs
        ret = typing.get_type_hints(
            holder,
            globalns=vars(sys.modules[cls.__module__]),
            localns={**vars(cls), cls.__name__: cls},
            include_extras=True,
        )["return"]
    except Exception as exc:  # a name in the annotation that cannot be resolved
        raise TypeError(f"{cls.__name__}.invoke: cannot read its return annotation: {exc}") from exc
    if ret is None or ret is type(None):
        return (), None
    if inspect.isclass(ret) and issubclass(ret, Outputs):
        specs = []
        for name, info in ret.model_fields.items():
            specs.append(OutputSpec(name, _output_type(info.annotation, info.metadata, cls, name)))
        return tuple(specs), ret
    type_name = _output_type(ret, (), cls, "return")
    return (OutputSpec(type_name.lower() if type_name != T.ANY else "value", type_name),), None


def _output_type(annotation: Any, metadata: Sequence[Any], cls: type, where: str) -> str:
    socket_name = _socket_of(annotation, metadata)
    if socket_name is not None:
        return socket_name
    if annotation in LITERAL_TYPES:
        return LITERAL_TYPES[annotation]
    raise TypeError(f"{cls.__name__}.invoke ({where}): outputs must be socket types or literals")
