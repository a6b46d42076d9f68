"""Textual-inversion embeddings: finding `embedding:name` in the embeddings folders and reading
the vectors for one text tower from the file formats users have (as comfy/sd1_clip.load_embed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .tensors import CheckpointError

EXTENSIONS = (".safetensors", ".pt", ".bin")
TOWER_KEYS = {"l": "clip_l", "h": "clip_h", "g": "clip_g"}
"""The key of a tower's vectors in a multi-tower (SDXL) embedding file."""


def _folders(roots: Sequence[Path]) -> list[Path]:
    """Every embeddings folder and, after them, all their sub-folders (as ComfyUI searches)."""
    found = list(roots)
    for root in roots:
        found += sorted(Path(d) for d, _, _ in os.walk(root) if Path(d) != root)
    return found


def find_embedding(name: str, roots: Sequence[Path]) -> Path | None:
    """The file `name` names: as given, or with .safetensors / .pt / .bin; never outside a root."""
    for folder in _folders(roots):
        base = (folder / name).resolve()
        if not base.is_relative_to(folder.resolve()):
            continue
        for candidate in (base, *(base.with_name(base.name + e) for e in EXTENSIONS)):
            if candidate.is_file():
                return candidate
    return None


def embedding_names(roots: Sequence[Path]) -> list[str]:
    """Every embedding under the roots as a prompt names it: its path without extension, with
    "/" (ComfyUI's /embeddings)."""
    names: dict[str, None] = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.suffix.lower() in EXTENSIONS and path.is_file():
                names.setdefault(path.relative_to(root).with_suffix("").as_posix(), None)
    return list(names)


def read_embedding_file(path: Path) -> Any:
    """A file's content: safetensors, or a torch file through the weights-only unpickler."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the file holds, say which file it was
        raise CheckpointError(f"embedding {path.name} cannot be read: {exc}") from exc


def _bundled(content: Mapping[str, Any], key: str) -> torch.Tensor | None:
    """A LoRA-bundled embedding (`bundle_emb.<name>.<key>`)."""
    for name, value in content.items():
        if name.startswith("bundle_emb.") and (
            name.endswith(f".{key}") or ".string_to_param." in name
        ):
            return value
    return None


def embedding_vectors(content: Any, tower: str, width: int) -> torch.Tensor | None:
    """(n, width) vectors for a tower from a file's content, in ComfyUI's order of preference;
    None when the vectors found have another width."""
    key = TOWER_KEYS.get(tower, tower)
    vectors: torch.Tensor | None = None
    if isinstance(content, Mapping) and "string_to_param" in content:
        vectors = next(iter(content["string_to_param"].values()))
    elif isinstance(content, list):
        rows = [t.reshape(-1, t.shape[-1]) for d in content for t in d.values()
                if torch.is_tensor(t) and t.shape[-1] == width]  # fmt: skip
        vectors = torch.cat(rows) if rows else None
    elif isinstance(content, Mapping) and key in content:
        vectors = content[key]
    elif isinstance(content, Mapping):
        vectors = _bundled(content, key)
        if vectors is None:
            vectors = next((v for v in content.values() if torch.is_tensor(v)), None)
    if vectors is None or not torch.is_tensor(vectors) or vectors.shape[-1] != width:
        return None
    return vectors.reshape(-1, width).float()
