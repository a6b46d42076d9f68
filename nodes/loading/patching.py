"""Patching a live torch module's weights in place for the length of a run, then restoring them.

Like ComfyUI's ModelPatcher: each touched weight is computed in (at least) float32 with every
patch applied in order, cast back to the parameter's dtype once, and the untouched original is
kept as a backup of the same device and dtype that is copied back bit-exactly afterwards.
A HookPatch changes how modules run instead (forward hooks, ComfyUI's attention patches): its
hooks are attached for the same span and removed afterwards.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import torch
from torch.utils.hooks import RemovableHandle

from nodes.formats.lora import Adapter, LoraShapeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch:
    """Adapters by parameter name at one strength; `key` (e.g. path, mtime, strength) is its
    identity for caches, equality and hashing. `model_strength` scales the weight before the
    adapter is added (ComfyUI's strength_model: model merging)."""

    adapters: Mapping[str, Adapter] = field(compare=False, repr=False)
    strength: float = 1.0
    key: Hashable = None
    model_strength: float = 1.0

    @property
    def active(self) -> bool:
        return bool(self.adapters) and (self.strength != 0 or self.model_strength != 1.0)


@dataclass(frozen=True)
class HookPatch(Patch):
    """A patch of how the module runs, not of its weights (it has no adapters, so weight
    merging and patching pass it by): `attach` registers its hooks while the module runs."""

    adapters: Mapping[str, Adapter] = field(default_factory=dict, compare=False, repr=False)

    def attach(self, module: torch.nn.Module) -> list[RemovableHandle]:
        """Register the hooks on `module` (and its children); the handles remove them."""
        raise NotImplementedError


_locks: WeakKeyDictionary[torch.nn.Module, threading.RLock] = WeakKeyDictionary()
_locks_guard = threading.Lock()


def module_lock(module: torch.nn.Module) -> threading.RLock:
    """The re-entrant lock `patched` holds on `module`; hold it to run the module unpatched."""
    with _locks_guard:
        lock = _locks.get(module)
        if lock is None:
            lock = _locks[module] = threading.RLock()
        return lock


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = dict(module.named_buffers(remove_duplicate=False))
    named.update(module.named_parameters(remove_duplicate=False))
    return named


def patched_weight(
    name: str, tensor: torch.Tensor, patches: Sequence[Patch]
) -> tuple[torch.Tensor, bool]:
    """(`tensor`'s weight with every patch touching `name` applied in order, in at least
    float32; whether any touched it). `tensor` itself is not changed."""
    weight = tensor.detach().to(torch.promote_types(tensor.dtype, torch.float32), copy=True)
    applied = False
    for patch in patches:
        adapter = patch.adapters.get(name)
        if adapter is None or not patch.active:
            continue
        if patch.model_strength != 1.0:
            weight = weight * patch.model_strength
            applied = True
        if patch.strength == 0:
            continue
        try:
            weight = adapter.apply(weight, patch.strength)
            applied = True
        except LoraShapeError as error:
            log.warning("patch %r not applied to %s: %s", patch.key, name, error)
    return weight, applied


def _patch_one(name: str, tensor: torch.Tensor, patches: Sequence[Patch]) -> None:
    """Set `tensor` to its weight with every patch touching `name` applied in order."""
    weight, applied = patched_weight(name, tensor, patches)
    if applied:
        with torch.no_grad():
            tensor.copy_(weight)


@contextmanager
def patched(module: torch.nn.Module, patches: Sequence[Patch]) -> Iterator[torch.nn.Module]:
    """Run with `patches` stacked on `module`'s weights; restored exactly on exit or error."""
    active = [patch for patch in patches if patch.active]
    with module_lock(module):
        tensors = _tensors(module)
        backups: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        handles: list[RemovableHandle] = []
        try:
            for name in dict.fromkeys(name for patch in active for name in patch.adapters):
                tensor = tensors.get(name)
                if tensor is None:
                    log.warning(
                        "LoRA target %s is not a parameter of %s", name, type(module).__name__
                    )
                    continue
                if id(tensor) not in backups:
                    backups[id(tensor)] = (tensor, tensor.detach().clone())
                _patch_one(name, tensor, active)
            for patch in patches:
                if isinstance(patch, HookPatch):
                    handles += patch.attach(module)
            yield module
        finally:
            for handle in reversed(handles):
                handle.remove()
            with torch.no_grad():
                for tensor, backup in backups.values():
                    tensor.copy_(backup)
