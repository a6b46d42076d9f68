"""Collects node classes and derives their public catalogue (ComfyUI's /object_info shape)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from .node import InputSpec, Node

PLUGIN_GROUP = "nodegraph.nodes"
"""Entry-point group through which installed packages add node modules."""


class Registry:
    """Node classes by their class_type."""

    def __init__(self, nodes: Iterable[type[Node]] = ()) -> None:
        self._nodes: dict[str, type[Node]] = {}
        self._modules: dict[str, ModuleType] = {}
        for cls in nodes:
            self.register(cls)

    def register(self, cls: type[Node]) -> type[Node]:
        """Add one node class (usable as a decorator). Names must be unique."""
        if not (inspect.isclass(cls) and issubclass(cls, Node) and hasattr(cls, "spec")):
            raise TypeError(f"{cls!r} is not a node class (a Node subclass with invoke)")
        name = cls.spec.type_name
        if self._nodes.get(name, cls) is not cls:
            raise ValueError(f"two node classes are both named '{name}'")
        self._nodes[name] = cls
        return cls

    def register_module(self, module: ModuleType) -> None:
        """Add every node class defined in `module` (and remember it for `configure`)."""
        self._modules[module.__name__] = module
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Node)
                and hasattr(obj, "spec")
                and obj.__module__ == module.__name__
            ):
                self.register(obj)

    def discover(self, package: str) -> None:
        """Import `package` and all its modules, adding the node classes they define."""
        root = importlib.import_module(package)
        self.register_module(root)
        for info in pkgutil.walk_packages(getattr(root, "__path__", []), prefix=f"{package}."):
            self.register_module(importlib.import_module(info.name))

    def discover_plugins(self) -> None:
        """Add node modules that installed packages announce under the `nodegraph.nodes` group."""
        for ep in entry_points(group=PLUGIN_GROUP):
            self.register_module(ep.load())

    def configure(self, options: Mapping[str, Any]) -> None:
        """Hand the host's settings (model folders, device, threads, ...) to node modules.

        A node module that needs them defines `configure(options)`; the CLI and the server call
        this once before validating, so choices found at run time (models) see the settings.
        """
        for module in self._modules.values():
            hook = getattr(module, "configure", None)
            if callable(hook):
                hook(options)

    def _call_hooks(self, name: str) -> None:
        for module in self._modules.values():
            hook = getattr(module, name, None)
            if callable(hook):
                hook()

    def unload_models(self) -> None:
        """Ask node modules to move the models they hold off the compute device (each that
        can defines `unload_models()`; ComfyUI's POST /free `unload_models`)."""
        self._call_hooks("unload_models")

    def free_memory(self) -> None:
        """Ask node modules to drop the models they hold (each that can defines
        `free_memory()`; ComfyUI's POST /free `free_memory`)."""
        self._call_hooks("free_memory")

    def loaded_models(self) -> list[str]:
        """Names of the model files node modules hold loaded now (each module that keeps
        models defines `loaded_models()`); a cluster worker reports them to the router."""
        names: list[str] = []
        for module in self._modules.values():
            hook = getattr(module, "loaded_models", None)
            if callable(hook):
                names.extend(hook())
        return sorted(set(names))

    def get(self, class_type: str) -> type[Node] | None:
        return self._nodes.get(class_type)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._nodes

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def catalogue(self) -> dict[str, dict[str, Any]]:
        return {name: describe(cls) for name, cls in sorted(self._nodes.items())}


def default_registry() -> Registry:
    """The node library in `nodes/` plus installed plugins."""
    registry = Registry()
    registry.discover("nodes")
    registry.discover_plugins()
    return registry


def registry_from(packages: Sequence[str] = (), default_nodes: bool = True) -> Registry:
    """The default library (unless left out) plus node modules or packages named by import
    path: the recipe a server hands its cluster workers, so each builds the same registry."""
    registry = default_registry() if default_nodes else Registry()
    for name in packages:
        module = importlib.import_module(name)
        if hasattr(module, "__path__"):
            registry.discover(name)
        else:
            registry.register_module(module)
    return registry


def _input_entry(spec: InputSpec) -> list[Any]:
    options: dict[str, Any] = {}
    if spec.description:
        options["tooltip"] = spec.description
    if not spec.is_socket and spec.default is not None:
        options["default"] = spec.default
    if spec.ge is not None:
        options["min"] = spec.ge
    if spec.le is not None:
        options["max"] = spec.le
    if spec.step is not None:
        options["step"] = spec.step
    options.update(spec.ui)
    choices = spec.choices()
    if choices is not None:
        return [list(choices), options]
    return [spec.type, options]


def describe(cls: type[Node]) -> dict[str, Any]:
    """One node's catalogue entry, in ComfyUI's /object_info shape."""
    spec = cls.spec
    required = {n: _input_entry(s) for n, s in spec.inputs.items() if not s.optional}
    optional = {n: _input_entry(s) for n, s in spec.inputs.items() if s.optional}
    doc = inspect.getdoc(cls) or ""
    shown = spec.returns is not None and spec.returns.shown_names
    hidden = {"hidden": dict(cls.hidden)} if cls.hidden else {}
    return {
        "input": {
            "required": required,
            **({"optional": optional} if optional else {}),
            **hidden,
        },
        "input_order": {
            "required": list(required),
            **({"optional": list(optional)} if optional else {}),
            **({"hidden": list(cls.hidden)} if cls.hidden else {}),
        },
        "output": [o.type for o in spec.outputs],
        "output_is_list": [False for _ in spec.outputs],
        "output_name": [o.name if shown else o.name.upper() for o in spec.outputs],
        "name": spec.type_name,
        "display_name": cls.display_name or spec.type_name,
        "description": doc,
        "category": cls.category,
        "output_node": cls.output_node,
        "python_module": cls.__module__,
    }
