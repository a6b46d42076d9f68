"""Which loaded modules sit on the compute device: a byte budget, as ComfyUI's model management.

Every module a node computes with is asked for through `use(modules, device)`: it is moved to
the device if it was moved off, and when the modules on that device then exceed the budget
(`--vram-budget GB`), the least recently used others go to the CPU. With `--lowvram` each
module goes back to the CPU as soon as its node is done with it. Without a budget, or on the
CPU itself, nothing moves.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

CPU = torch.device("cpu")


def nbytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


class Residency:
    """The modules placed on compute devices, least recently used first."""

    def __init__(self, move: Any = None) -> None:
        self.budget: int | None = None
        self.lowvram = False
        self._move = move or (lambda module, device: module.to(device))
        self._lru: OrderedDict[int, tuple[weakref.ref, int]] = OrderedDict()
        self._lock = threading.RLock()
        self.moves = 0

    def configure(self, options: Mapping[str, Any]) -> None:
        budget = options.get("vram_budget")
        self.budget = None if budget in (None, 0) else int(float(budget) * 2**30)
        self.lowvram = bool(options.get("lowvram"))

    def _place(self, module: torch.nn.Module, device: torch.device) -> None:
        if device_of(module) != device:
            self._move(module, device)
            self.moves += 1

    def resident(self, device: torch.device) -> list[tuple[torch.nn.Module, int]]:
        """(module, bytes) on `device`, least recently used first (dead ones forgotten)."""
        out = []
        for key, (ref, size) in list(self._lru.items()):
            module = ref()
            if module is None:
                del self._lru[key]
            elif device_of(module) == device:
                out.append((module, size))
        return out

    def _fit(self, device: torch.device, keep: Sequence[torch.nn.Module]) -> None:
        if self.budget is None:
            return
        kept = {id(m) for m in keep}
        resident = self.resident(device)
        total = sum(size for _, size in resident)
        for module, size in resident:
            if total <= self.budget:
                break
            if id(module) not in kept:
                self._place(module, CPU)
                total -= size

    @contextmanager
    def use(self, modules: Sequence[torch.nn.Module], device: torch.device) -> Iterator[None]:
        """Run with `modules` on `device`, others moved off it to stay within the budget."""
        if device.type == "cpu" or (self.budget is None and not self.lowvram):
            yield
            return
        with self._lock:
            for module in modules:
                self._lru[id(module)] = (weakref.ref(module), nbytes(module))
                self._lru.move_to_end(id(module))
                self._place(module, device)
            self._fit(device, modules)
            try:
                yield
            finally:
                if self.lowvram:
                    for module in modules:
                        self._place(module, CPU)


RESIDENCY = Residency()


def configure(options: Mapping[str, Any]) -> None:
    """The host's settings: `vram_budget` (GiB) and `lowvram` (called by Registry.configure)."""
    RESIDENCY.configure(options)
