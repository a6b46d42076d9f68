"""Reading a single-file checkpoint's tensors: names and shapes first, weights when asked.

A `.safetensors` file is opened lazily (its header gives every name and shape without reading
weights); a pickle is loaded whole with `torch.load(weights_only=True)` and only after the
caller's explicit opt-in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or understood; the message names the file."""


class Tensors(Mapping[str, torch.Tensor]):
    """A checkpoint's tensors by name; `shape(name)` without reading the weights."""

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]], read: Any) -> None:
        self.path = path
        self.shapes = shapes
        self._read = read
        self._cache: dict[str, torch.Tensor] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.shapes:
            raise KeyError(key)
        if key not in self._cache:
            self._cache[key] = self._read(key)
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.shapes[key]

    def with_prefix(self, prefix: str) -> list[str]:
        return [k for k in self.shapes if k.startswith(prefix)]

    def count(self, prefix: str) -> int:
        return sum(1 for k in self.shapes if k.startswith(prefix))

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors (read now), without keeping them here."""
        return {k: self._cache.pop(k) if k in self._cache else self._read(k) for k in keys}


def open_safetensors(path: Path) -> Tensors:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name} is not a readable .safetensors file: {exc}") from exc

    def read(key: str) -> torch.Tensor:
        try:
            return handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name}: cannot read tensor {key}: {exc}") from exc

    return Tensors(path, shapes, read)


def open_pickle(path: Path) -> Tensors:
    """A pickle checkpoint's tensors (torch.load with weights_only=True: no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise CheckpointError(f"{path.name} cannot be loaded as weights: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} holds no state dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return Tensors(path, {k: tuple(v.shape) for k, v in tensors.items()}, tensors.__getitem__)
