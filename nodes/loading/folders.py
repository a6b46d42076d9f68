"""The models folders: where checkpoints, LoRAs, VAEs, embeddings, ... are found, and their names.

A models root is either a folder laid out as ComfyUI's `models/` (a sub-folder per kind:
`checkpoints/`, `loras/`, `vae/`, ...), a flat folder (today's layout: every model in it is a
checkpoint), or a ComfyUI `extra_model_paths.yaml` naming folders per kind. Roots come from
`--models` (the run's `options["models"]`, or `use_model_dirs`), then the `NODEGRAPH_MODELS`
environment variable (roots separated by os.pathsep), then the output folder's `checkpoints/`,
`loras/`, `vae/`, `clip/` and `diffusion_models/` (as ComfyUI); the shipped model is always a
checkpoint, and its scribble ControlNet (when exported) always a controlnet.

A model is named as ComfyUI names it: its path relative to its kind's folder, with `/`; a
diffusers folder by its path relative to that folder too. The first root holding a name wins.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SHIPPED_NAME = "nodegraph-shapes"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "shipped_model"
# The shipped model's scribble ControlNet (tools/train_controlnet.py), a diffusers folder.
SHIPPED_CONTROLNET_NAME = "nodegraph-shapes-scribble"
SHIPPED_CONTROLNET_DIR = SHIPPED_DIR / "controlnet"
ENV_VAR = "NODEGRAPH_MODELS"
SAFE_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl")
YAML_SUFFIXES = (".yaml", ".yml")
_MAX_DEPTH = 6

# kind -> the folder names that hold it under a ComfyUI models/ folder (aliases after the first)
KINDS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "loras": ("loras",),
    "vae": ("vae",),
    "embeddings": ("embeddings",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "upscale_models": ("upscale_models",),
    "clip_vision": ("clip_vision",),
    "hypernetworks": ("hypernetworks",),
    "gligen": ("gligen",),
    "diffusers": ("diffusers",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("diffusion_models", "unet"),
}
FOLDER_KIND = {folder: kind for kind, folders in KINDS.items() for folder in folders}

OUTPUT_KINDS: dict[str, str] = {
    "checkpoints": "checkpoints",
    "text_encoders": "clip",
    "vae": "vae",
    "diffusion_models": "diffusion_models",
    "loras": "loras",
}
"""The output folder's sub-folders searched for models after the roots (ComfyUI's main.py adds
them, so what CheckpointSave and the like write there loads back by name)."""

_configured: list[str] = []
_output: list[tuple[str, Path]] = []
_lock = threading.Lock()


@dataclass(frozen=True)
class ModelFile:
    """One model found: its kind, its ComfyUI name, where it is and its storage format.

    `format` is "diffusers" (a folder with model_index.json: a whole pipeline), "component" (a
    folder with config.json: one diffusers model, a VAE say), "safetensors" or "pickle".
    """

    kind: str
    name: str
    path: Path
    format: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "path": str(self.path), "format": self.format}


def use_model_dirs(dirs: Iterable[str | os.PathLike[str]]) -> None:
    """Add models roots for this process (the CLI's and server's `--models`)."""
    with _lock:
        for d in dirs:
            if str(d) not in _configured:
                _configured.append(str(d))


def use_output_dir(folder: str | os.PathLike[str]) -> None:
    """Search the output folder's model sub-folders (OUTPUT_KINDS) too, after the roots."""
    base = Path(folder).expanduser()
    with _lock:
        for kind, name in OUTPUT_KINDS.items():
            if (kind, base / name) not in _output:
                _output.append((kind, base / name))


def check_root(root: str | os.PathLike[str]) -> None:
    """A ModelsConfigError for a models root that is not there or an unreadable yaml."""
    path = Path(root).expanduser()
    if not path.exists():
        raise ModelsConfigError(f"models folder {path} does not exist")
    if path.is_file() and path.suffix.lower() in YAML_SUFFIXES:
        _yaml_folders(path)
    elif not path.is_dir():
        raise ModelsConfigError(f"{path} is neither a models folder nor an extra_model_paths.yaml")


def configure(options: Mapping[str, Any]) -> None:
    """The host's settings (called through `Registry.configure` by the CLI and the server)."""
    for root in options.get("models", ()):
        check_root(root)
    use_model_dirs(options.get("models", ()))
    if options.get("output_dir"):
        use_output_dir(options["output_dir"])
    threads = int(options.get("threads") or 0)
    if threads > 0:
        torch.set_num_threads(threads)


def model_roots(extra: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """The roots searched, in order: given, configured, then the environment variable."""
    env = [d for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    seen: dict[Path, None] = {}
    for d in (*extra, *_configured, *env):
        seen.setdefault(Path(d).expanduser(), None)
    return list(seen)


def format_of(path: Path) -> str | None:
    """The storage format of a model file or folder, None when it is none."""
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return "diffusers"
        return "component" if (path / "config.json").is_file() else None
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        return "safetensors"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    return None


# --------------------------------------------------------------------------- roots -> folders


class ModelsConfigError(ValueError):
    """An extra_model_paths.yaml that cannot be read."""


def _yaml_folders(path: Path) -> list[tuple[str, Path]]:
    """(kind, folder) pairs of a ComfyUI extra_model_paths.yaml, `is_default` sections first."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        cause = getattr(exc, "problem", None) or exc
        raise ModelsConfigError(f"cannot read the models config {path}: {cause}{where}") from exc
    if not isinstance(data, dict):
        raise ModelsConfigError(f"{path}: expected sections of folder names, not {type(data)}")
    first: list[tuple[str, Path]] = []
    rest: list[tuple[str, Path]] = []
    for section, entries in data.items():
        if not isinstance(entries, dict):
            raise ModelsConfigError(f"{path}: section '{section}' is not a mapping")
        base = path.parent
        if entries.get("base_path"):
            base = path.parent / Path(os.path.expandvars(str(entries["base_path"]))).expanduser()
        pairs = []
        for folder, value in entries.items():
            if folder in ("base_path", "is_default") or value is None:
                continue
            kind = FOLDER_KIND.get(str(folder), str(folder))
            for line in str(value).splitlines():
                if line.strip():
                    where = Path(os.path.expandvars(line.strip())).expanduser()
                    pairs.append((kind, base / where))
        (first if entries.get("is_default") else rest).extend(pairs)
    return first + rest


def kind_folders(root: Path) -> list[tuple[str, Path, bool]]:
    """(kind, folder, walk_kind_folders) for one root: a yaml, a ComfyUI layout or a flat folder.

    A flat folder is a checkpoints folder whose walk skips folders named after other kinds.
    """
    if root.suffix.lower() in YAML_SUFFIXES and root.is_file():
        return [(kind, folder, True) for kind, folder in _yaml_folders(root)]
    if format_of(root) == "diffusers":
        return [("checkpoints", root.parent, True)]  # a pipeline folder given by itself
    folders = [(FOLDER_KIND[e.name], e, True) for e in _entries(root) if e.name in FOLDER_KIND]
    return [*folders, ("checkpoints", root, False)]


def search_folders(extra: Iterable[str | os.PathLike[str]] = ()) -> list[tuple[str, Path, bool]]:
    """(kind, folder, walk_kind_folders) of every root in order, then the output folder's."""
    folders = [entry for root in model_roots(extra) for entry in kind_folders(root)]
    with _lock:
        return folders + [(kind, folder, True) for kind, folder in _output]


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def _walk(folder: Path, skip_kind_folders: bool) -> Iterator[tuple[str, Path, str]]:
    """(name relative to `folder`, path, format) for every model below `folder`, sorted."""

    def walk(current: Path, depth: int) -> Iterator[tuple[str, Path, str]]:
        for entry in _entries(current):
            if entry.name.startswith("."):
                continue
            if skip_kind_folders and current == folder and entry.name in FOLDER_KIND:
                continue
            fmt = format_of(entry)
            if fmt is not None:
                yield entry.relative_to(folder).as_posix(), entry, fmt
            elif entry.is_dir() and depth < _MAX_DEPTH:
                yield from walk(entry, depth + 1)

    yield from walk(folder, 1)


def _wanted(kind: str, fmt: str) -> bool:
    """Whether a model of this format can be of this kind."""
    if fmt == "diffusers":
        return kind in ("checkpoints", "diffusers")
    if fmt == "component":
        return kind in ("vae", "controlnet", "diffusion_models", "text_encoders")
    return True


def list_models(kind: str | None = None, extra: Iterable[str] = ()) -> list[ModelFile]:
    """Every model found (of one kind, or all), the shipped model first; names unique per kind."""
    found: dict[tuple[str, str], ModelFile] = {}
    if kind in (None, "checkpoints") and (SHIPPED_DIR / "model_index.json").is_file():
        shipped = ModelFile("checkpoints", SHIPPED_NAME, SHIPPED_DIR, "diffusers")
        found[("checkpoints", SHIPPED_NAME)] = shipped
    if kind in (None, "controlnet") and (SHIPPED_CONTROLNET_DIR / "config.json").is_file():
        found[("controlnet", SHIPPED_CONTROLNET_NAME)] = ModelFile(
            "controlnet", SHIPPED_CONTROLNET_NAME, SHIPPED_CONTROLNET_DIR, "component"
        )
    for folder_kind, folder, whole in search_folders(extra):
        if (
            kind is not None
            and folder_kind != kind
            and not (kind == "checkpoints" and folder_kind == "diffusers")
        ):
            continue
        for name, path, fmt in _walk(folder, skip_kind_folders=not whole):
            listed_as = "checkpoints" if folder_kind == "diffusers" else folder_kind
            if _wanted(listed_as, fmt):
                found.setdefault((listed_as, name), ModelFile(listed_as, name, path, fmt))
    return list(found.values())


def kind_dirs(kind: str, extra: Iterable[str] = ()) -> list[Path]:
    """The folders holding models of one kind, in search order (e.g. every embeddings folder)."""
    found: dict[Path, None] = {}
    for folder_kind, folder, _ in search_folders(extra):
        if folder_kind == kind and folder.is_dir():
            found.setdefault(folder, None)
    return list(found)


def model_names(kind: str = "checkpoints") -> list[str]:
    """The names a loader of this kind accepts (its choices), in listing order."""
    return [m.name for m in list_models(kind)]


def find_model(kind: str, name: str, extra: Iterable[str] = ()) -> ModelFile:
    for m in list_models(kind, extra):
        if m.name == name:
            return m
    raise FileNotFoundError(f"no {kind} model named '{name}' in the model folders")


def modified(path: Path) -> float:
    """The newest modification time of a file, or of any file in a folder."""
    if path.is_dir():
        return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=0.0)
    return path.stat().st_mtime
