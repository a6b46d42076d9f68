"""Socket value types: the named kinds of value that flow along links.

A socket type is a name (IMAGE, LATENT, MODEL, ...). Node packages define their own with
`socket("NAME")`, which gives an annotation to use on node inputs and outputs. The core gives no
name a meaning beyond compatibility: equal names connect, and `ANY` ("*") connects to anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

ANY = "*"

# Type names of literal inputs, as ComfyUI's /object_info spells them.
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"
COMBO = "COMBO"


@dataclass(frozen=True, slots=True)
class Socket:
    """Annotation marker: the value travels along a link of socket type `name`."""

    name: str


def socket(name: str, python_type: Any = Any) -> Any:
    """An annotation for a socket of type `name`, e.g. `Image = socket("IMAGE", torch.Tensor)`."""
    if not name or not isinstance(name, str):
        raise ValueError("a socket type needs a non-empty name")
    return Annotated[python_type, Socket(name.upper() if name != ANY else ANY)]


Any_ = socket(ANY)
"""A socket that accepts a value of any type (e.g. ShowValue's input)."""

# Which source types a literal input accepts over a link, besides its own.
_WIDENING: dict[str, frozenset[str]] = {
    FLOAT: frozenset({INT}),
    COMBO: frozenset({STRING}),
}


def compatible(source: str, target: str) -> bool:
    """Whether an output of type `source` may feed an input of type `target`."""
    if source == target or ANY in (source, target):
        return True
    return source in _WIDENING.get(target, frozenset())
