"""nodegraph: a typed node-graph engine with a cached executor (knows nothing about diffusion)."""

from .context import NodeContext, RunContext, RunSettings
from .errors import Interrupted, NodeError, ValidationFailed
from .node import InputField, Node, Outputs
from .registry import Registry
from .types import socket

__all__ = [
    "InputField",
    "Interrupted",
    "Node",
    "NodeContext",
    "NodeError",
    "Outputs",
    "Registry",
    "RunContext",
    "RunSettings",
    "ValidationFailed",
    "socket",
]
