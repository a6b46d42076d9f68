"""Finding, loading and keeping models: diffusers folders and single-file checkpoints, offline.

Models are looked for in the shipped model's folder, in folders given with `--models` (the
run's `options["models"]`, or `use_model_dirs`) and in the `NODEGRAPH_MODELS` environment
variable (folders separated by os.pathsep). A diffusers folder (one with model_index.json) is
named by its path relative to the models folder; a single file by its file name.

Single-file checkpoints in the original Stable Diffusion key layout load with diffusers'
single-file loader and a local configuration folder (never a hub call): `<file stem>.config/`
beside the file, or the folder in `options["single_file_config"]`. Pickle-based weights
(.ckpt, .pt, .pth, .bin) can run code when loaded, so they are refused unless
`options["allow_pickle"]` is true; then they load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from nodegraph import InputField, Node, NodeContext, Outputs

from .preview import fit_latent_rgb
from .values import CLIP, MODEL, VAE, Clip, Model, Vae

SHIPPED_NAME = "nodegraph-shapes"
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped_model"
ENV_VAR = "NODEGRAPH_MODELS"
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_MAX_DEPTH = 4
_STORE_SIZE = 3

_configured: list[str] = []
_lock = threading.Lock()



def shipped_size() -> int:
    """The shipped model's native picture size (its UNet's latent size x 8)."""
    unet = json.loads((SHIPPED_DIR / "unet" / "config.json").read_text())
    return int(unet["sample_size"]) * 8

class PickleRefused(RuntimeError):
    """A pickle-based checkpoint was asked for without the explicit opt-in."""


def use_model_dirs(dirs: Iterable[str | os.PathLike[str]]) -> None:
    """Add model folders for this process (the CLI's and server's `--models`)."""
    with _lock:
        for d in dirs:
            if str(d) not in _configured:
                _configured.append(str(d))


def configure(options: Mapping[str, Any]) -> None:
    """The host's settings (called through `Registry.configure` by the CLI and the server)."""
    use_model_dirs(options.get("models", ()))
    threads = int(options.get("threads") or 0)
    if threads > 0:
        torch.set_num_threads(threads)


def model_dirs(extra_dirs: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """The folders searched for models, in order: given, configured, then the env variable."""
    env = [d for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    seen: dict[Path, None] = {}
    for d in (*extra_dirs, *_configured, *env):
        seen.setdefault(Path(d).expanduser(), None)
    return list(seen)


def _format_of(path: Path) -> str | None:
    if path.is_dir():
        return "diffusers" if (path / "model_index.json").is_file() else None
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        return "safetensors"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    return None


def _scan(root: Path) -> Iterable[tuple[str, Path, str]]:
    fmt = _format_of(root)
    if fmt == "diffusers":
        yield root.name, root, fmt
        return
    if not root.is_dir():
        return

    def walk(folder: Path, depth: int) -> Iterable[tuple[str, Path, str]]:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith(".config"):
                continue  # a single file's configuration folder is not a model of its own
            kind = _format_of(entry)
            if kind is not None:
                yield entry.relative_to(root).as_posix(), entry, kind
            elif entry.is_dir() and depth < _MAX_DEPTH:
                yield from walk(entry, depth + 1)

    yield from walk(root, 1)


def list_models(extra_dirs: list[str] | None = None) -> list[dict[str, str]]:
    """Every model found: [{"name", "path", "format"}], the shipped model first.

    `format` is "diffusers" (a folder), "safetensors" (a single file) or "pickle" (listed so
    that choosing it gives a clear refusal).
    """
    found: dict[str, dict[str, str]] = {}
    if (SHIPPED_DIR / "model_index.json").is_file():
        shipped = {"name": SHIPPED_NAME, "path": str(SHIPPED_DIR), "format": "diffusers"}
        found[SHIPPED_NAME] = shipped
    for root in model_dirs(extra_dirs or ()):
        for name, path, fmt in _scan(root):
            if name not in found:
                found[name] = {"name": name, "path": str(path), "format": fmt}
    return list(found.values())


def model_names() -> list[str]:
    """The names CheckpointLoader accepts (its choices)."""
    return [m["name"] for m in list_models()]


def find_model(name: str, extra_dirs: Iterable[str] = ()) -> dict[str, str]:
    for m in list_models(list(extra_dirs)):
        if m["name"] == name:
            return m
    raise FileNotFoundError(f"no model named '{name}' in the model folders")


# --------------------------------------------------------------------------- devices


def resolve_device(options: Mapping[str, Any] | None = None) -> torch.device:
    """The device of a run: options["device"], "auto" meaning CUDA, else MPS, else CPU."""
    wanted = str((options or {}).get("device") or "auto")
    if wanted != "auto":
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    """Half precision on CUDA, full precision elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32


# --------------------------------------------------------------------------- loading


def _pipeline_class() -> Any:
    import transformers

    # Importing the pipeline imports the safety checker's image processors, which warn that
    # torchvision is missing: we load no safety checker, so the warning only misleads users.
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        from diffusers import StableDiffusionPipeline
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    return StableDiffusionPipeline


def _single_file_config(path: Path, options: Mapping[str, Any]) -> Path:
    candidates = [path.with_name(path.stem + ".config")]
    if options.get("single_file_config"):
        candidates.append(Path(options["single_file_config"]).expanduser())
    for c in candidates:
        if (c / "model_index.json").is_file():
            return c
    raise FileNotFoundError(
        f"{path.name} is a single-file checkpoint and needs a local diffusers configuration "
        f"folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ configs) "
        f"to load offline: put one at {candidates[0]}"
    )


def _load_pipeline(path: Path, fmt: str, options: Mapping[str, Any]) -> Any:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    cls = _pipeline_class()
    common = {"local_files_only": True, "dtype": torch.float32}
    if fmt == "diffusers":
        return cls.from_pretrained(str(path), safety_checker=None, **common)
    if fmt == "pickle":
        if not options.get("allow_pickle"):
            raise PickleRefused(
                f"refusing to load {path.name}: pickle-based weights (.ckpt, .pt, .pth, .bin) can "
                "run arbitrary code when loaded. Convert it to .safetensors, or opt in "
                "(allow_pickle) to load it with torch.load(weights_only=True)."
            )
        return _load_pickle(path, options, cls, common)
    config = _single_file_config(path, options)
    return cls.from_single_file(str(path), config=str(config), safety_checker=None, **common)


def _load_pickle(path: Path, options: Mapping[str, Any], cls: Any, common: dict) -> Any:
    from safetensors.torch import save_file

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} holds no state dict")
    tensors = {k: v.contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    config = _single_file_config(path, options)
    with tempfile.TemporaryDirectory() as tmp:
        converted = Path(tmp) / (path.stem + ".safetensors")
        save_file(tensors, str(converted))
        return cls.from_single_file(
            str(converted), config=str(config), safety_checker=None, **common
        )


class _Store:
    """Loaded models, keyed by path, modification time, device and dtype (a few kept)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple, tuple[Model, Clip, Vae]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(
        self, name: str, path: Path, fmt: str, device: torch.device, options: Mapping[str, Any]
    ) -> tuple[Model, Clip, Vae]:
        key = (str(path.resolve()), _mtime(path), str(device), bool(options.get("allow_pickle")))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            bundle = _bundle(name, _load_pipeline(path, fmt, options), device)
            self.loads += 1
            self._items[key] = bundle
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return bundle

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _mtime(path: Path) -> float:
    if path.is_dir():
        return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=0.0)
    return path.stat().st_mtime


def _place(module: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if module.dtype != dtype:
        module = module.to(dtype=dtype)
    return module.to(device=device).eval()


def _bundle(name: str, pipe: Any, device: torch.device) -> tuple[Model, Clip, Vae]:
    dtype = compute_dtype(device)
    unet = _place(pipe.unet, device, dtype)
    text_encoder = _place(pipe.text_encoder, device, dtype)
    vae_dtype = torch.float32 if getattr(pipe.vae.config, "force_upcast", False) else dtype
    vae = _place(pipe.vae, device, vae_dtype)
    config = dict(pipe.scheduler.config)
    vae_bundle = Vae(vae, device, vae_dtype, name)
    return (
        Model(unet, config, device, dtype, name, fit_latent_rgb(vae_bundle)),
        Clip(pipe.tokenizer, text_encoder, device, dtype, name),
        vae_bundle,
    )


STORE = _Store(_STORE_SIZE)


def load_checkpoint(name: str, options: Mapping[str, Any]) -> tuple[Model, Clip, Vae]:
    """The model, text encoder and VAE of the named checkpoint, loaded once and kept."""
    found = find_model(name, options.get("models") or ())
    return STORE.get(name, Path(found["path"]), found["format"], resolve_device(options), options)


class Checkpoint(Outputs):
    model: MODEL
    clip: CLIP
    vae: VAE


class CheckpointLoader(Node):
    """Load a Stable Diffusion checkpoint (a diffusers folder or a single .safetensors file)."""

    category = "loaders"
    display_name = "Load Checkpoint"
    name: str = InputField(
        SHIPPED_NAME, description="The model, among those found.", choices=model_names
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        options = run.settings.options
        try:
            found = find_model(literals["name"], options.get("models") or ())
        except FileNotFoundError:
            return None
        return (found["path"], _mtime(Path(found["path"])), str(resolve_device(options)))

    def invoke(self, ctx: NodeContext) -> Checkpoint:
        model, clip, vae = load_checkpoint(self.name, ctx.settings.options)
        return Checkpoint(model=model, clip=clip, vae=vae)
