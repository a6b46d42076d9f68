"""Where the loaded models' weights are: a byte budget, as ComfyUI's model management.

Every module a node computes with is asked for through `use(modules, device)`, and a module
whose weights are only read (a model merged into another) through `present(modules)`. With a
budget (`--vram-budget GB`) room is made first: the least recently used modules not in use
leave the device until the incoming ones fit. On an accelerator they go to the CPU, and models
load onto the CPU, reaching the device when first used; `--lowvram` sends each back as soon as
its node is done. On the CPU the same budget bounds the memory the weights take: a module that
can be read again from its file (`track`) lets its weights go (to the meta device) and gets them
back from the file, exactly as loaded, when next used. Without a budget nothing moves.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils import swap_tensors

from .folders import modified

log = logging.getLogger(__name__)
CPU = torch.device("cpu")
META = torch.device("meta")


def nbytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def device_of(module: torch.nn.Module) -> torch.device | None:
    """Where the module's weights are (None: it has none, so it is anywhere)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return None


class ModelFileChanged(RuntimeError):
    """A let-go module's file changed on disk since it was loaded."""


@dataclass(frozen=True)
class Source:
    """Where a module's weights can be read again: `rebuild` makes it anew from `path`."""

    rebuild: Callable[[], torch.nn.Module]
    path: Path
    stamp: float
    """The file's modification time when the module was loaded."""


@dataclass(eq=False)
class _Entry:
    ref: weakref.ref
    source: Source | None = None
    released: bool = False
    pins: int = 0
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = dict(module.named_buffers())
    named.update(module.named_parameters())
    return named


def _swap(own: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """Give `own` (a parameter or buffer, kept as the same object) the tensor `data`; returns
    the tensor now holding what `own` held."""
    if isinstance(own, torch.nn.Parameter):
        data = torch.nn.Parameter(data, requires_grad=own.requires_grad)
    swap_tensors(own, data)
    return data


class Residency:
    """The modules placed for computing, least recently used first."""

    def __init__(self, move: Any = None) -> None:
        self.budget: int | None = None
        self.lowvram = False
        self._move = move or (lambda module, device: module.to(device))
        self._lru: OrderedDict[int, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.moves = 0
        self.releases = 0
        self.restores = 0

    def configure(self, options: Mapping[str, Any]) -> None:
        """Set the budget (`vram_budget`, GiB) and `lowvram`; without a budget every module
        let go gets its weights back."""
        budget = options.get("vram_budget")
        self.budget = None if budget in (None, 0) else int(float(budget) * 2**30)
        self.lowvram = bool(options.get("lowvram"))
        if self.budget is None:
            with self._lock:
                for entry, module in self._living():
                    if entry.released:
                        with suppress(ModelFileChanged):  # told when next used
                            self._restore(entry, module)

    @property
    def managed(self) -> bool:
        """Whether modules move at all (a budget or --lowvram)."""
        return self.budget is not None or self.lowvram

    def load_device(self, device: torch.device) -> torch.device:
        """Where a model is put when loaded for computing on `device`: the CPU when its place
        is managed (it reaches the device when first used), else the device itself."""
        return CPU if self.managed else device

    # ----------------------------------------------------------------- bookkeeping

    def _entry(self, module: torch.nn.Module) -> _Entry:
        key = id(module)
        entry = self._lru.get(key)
        if entry is None or entry.ref() is not module:
            entry = self._lru[key] = _Entry(weakref.ref(module, self._forget(key)))
        self._lru.move_to_end(key)
        return entry

    def _forget(self, key: int) -> Callable[[weakref.ref], None]:
        def forget(ref: weakref.ref) -> None:
            entry = self._lru.get(key)
            if entry is not None and entry.ref is ref:
                self._lru.pop(key, None)

        return forget

    def track(
        self, module: torch.nn.Module, rebuild: Callable[[], torch.nn.Module], path: Path
    ) -> None:
        """Note that `rebuild()` makes `module` anew from the file at `path` (same names,
        shapes and values, in the dtype it was built in), so on the CPU it may let go of its
        weights past the budget."""
        with self._lock:
            self._entry(module).source = Source(rebuild, Path(path), modified(Path(path)))

    def resident(self, device: torch.device) -> list[tuple[torch.nn.Module, int]]:
        """(module, bytes) on `device`, least recently used first (dead ones forgotten)."""
        return [(m, nbytes(m)) for _, m in self._living() if device_of(m) == device]

    def _living(self) -> list[tuple[_Entry, torch.nn.Module]]:
        out = []
        for key, entry in list(self._lru.items()):
            module = entry.ref()
            if module is None:
                del self._lru[key]
            else:
                out.append((entry, module))
        return out

    def released(self) -> list[torch.nn.Module]:
        """The modules whose weights are let go, on the CPU past the budget."""
        with self._lock:
            return [m for e, m in self._living() if e.released]

    # ----------------------------------------------------------------- moving

    def _place(self, module: torch.nn.Module, device: torch.device) -> None:
        if device_of(module) not in (device, None):
            self._move(module, device)
            self.moves += 1

    def _release(self, entry: _Entry, module: torch.nn.Module) -> bool:
        """Let go of the module's weights (False, and nothing changed, where a tensor is held
        elsewhere: an autograd graph, say)."""
        tensors = _tensors(module)
        held: dict[str, torch.Tensor] = {}
        try:
            for name, t in tensors.items():
                held[name] = _swap(t, torch.empty_like(t, device=META))
        except RuntimeError as exc:
            for name, data in held.items():
                _swap(tensors[name], data)
            log.warning("keeping %s's weights: %s", type(module).__name__, exc)
            return False
        entry.dtypes = {name: t.dtype for name, t in tensors.items()}
        entry.released = True
        self.releases += 1
        return True

    def _restore(self, entry: _Entry, module: torch.nn.Module) -> None:
        source = entry.source
        assert source is not None
        if not source.path.exists() or modified(source.path) != source.stamp:
            raise ModelFileChanged(
                f"{source.path.name} changed on disk since it was loaded: its weights, let go to "
                "keep within the memory budget, cannot be read again; run the prompt again to "
                "load the new file"
            )
        fresh = _tensors(source.rebuild())
        own = _tensors(module)
        if fresh.keys() != own.keys():
            name = type(module).__name__
            raise RuntimeError(f"rebuilt from {source.path.name}, {name} has other tensors")
        for name, t in own.items():
            _swap(t, fresh.pop(name).detach().to(dtype=entry.dtypes[name]))
        entry.released = False
        self.restores += 1

    def _evict(self, entry: _Entry, module: torch.nn.Module, device: torch.device) -> bool:
        """Free `module`'s bytes on `device`: let go on the CPU, move to the CPU elsewhere."""
        if entry.pins:
            return False
        if device.type != "cpu":
            self._place(module, CPU)
            return True
        if entry.source is None:
            return False  # nothing to read it again from: it stays
        return self._release(entry, module)

    def _make_room(self, device: torch.device, incoming: int) -> None:
        if self.budget is None:
            return
        resident = [(e, m, nbytes(m)) for e, m in self._living() if device_of(m) == device]
        total = incoming + sum(size for _, _, size in resident)
        for entry, module, size in resident:
            if total <= self.budget:
                return
            if self._evict(entry, module, device):
                total -= size

    def reserve(self, device: torch.device, size: int) -> None:
        """Make room for `size` bytes about to be loaded for computing on `device` (on the CPU:
        elsewhere models load onto the CPU, outside the budget, and make room when used)."""
        if device.type == "cpu":
            with self._lock:
                self._make_room(CPU, size)

    @contextmanager
    def _held(
        self, modules: Sequence[torch.nn.Module], device: torch.device | None
    ) -> Iterator[None]:
        """`modules` pinned (never evicted meanwhile) with their weights, on `device` (None:
        where they are)."""
        with self._lock:
            entries = [self._entry(m) for m in modules]
            for entry in entries:
                entry.pins += 1
            try:
                moving = [(e, m) for e, m in zip(entries, modules, strict=True)
                          if e.released or self._elsewhere(m, device)]
                if moving or device is not None:  # only reading: room only to give back
                    self._make_room(device or CPU, sum(nbytes(m) for _, m in moving))
                for entry, module in moving:
                    if entry.released:
                        self._restore(entry, module)
                    if device is not None:
                        self._place(module, device)
            except BaseException:
                self._unpin(entries)
                raise
        try:
            yield
        finally:
            with self._lock:
                self._unpin(entries)
                if self.lowvram and device is not None and device.type != "cpu":
                    for module in modules:
                        self._place(module, CPU)

    @staticmethod
    def _elsewhere(module: torch.nn.Module, device: torch.device | None) -> bool:
        """Whether the module's weights are to be moved to `device` (None: stay)."""
        return device is not None and device_of(module) not in (device, None)

    @staticmethod
    def _unpin(entries: list[_Entry]) -> None:
        for entry in entries:
            entry.pins -= 1

    def unload_all(self) -> None:
        """Every module not in use off its compute device: to the CPU from an accelerator; on
        the CPU its weights let go, if it can read them again (ComfyUI's unload_all_models)."""
        with self._lock:
            for entry, module in self._living():
                where = device_of(module)
                if not entry.released and where is not None:
                    self._evict(entry, module, where)

    @contextmanager
    def use(self, modules: Sequence[torch.nn.Module], device: torch.device) -> Iterator[None]:
        """Run with `modules` on `device`, others moved off it to stay within the budget."""
        with self._held(modules, device):
            yield

    @contextmanager
    def present(self, modules: Sequence[torch.nn.Module]) -> Iterator[None]:
        """Read `modules`' weights where they are (given back first if they were let go)."""
        with self._held(modules, None):
            yield


RESIDENCY = Residency()


def configure(options: Mapping[str, Any]) -> None:
    """The host's settings: `vram_budget` (GiB) and `lowvram` (called by Registry.configure)."""
    RESIDENCY.configure(options)


def unload_models() -> None:
    """Registry.unload_models: every model not in use off its device, the device's cache
    emptied."""
    RESIDENCY.unload_all()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
