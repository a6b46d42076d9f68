"""Pictures in and out: LoadImage, SaveImage (PNG with the workflow embedded), PreviewImage."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin

from nodegraph import InputField, Node, NodeContext, Outputs, RunSettings
from nodegraph.files import confined, next_counter, write_unique

from ..devices import resolve_device
from ..values import IMAGE, MASK

# Inputs whose values describe how a picture was made (gathered into the "parameters" chunk).
PARAMETER_INPUTS = (
    "name", "ckpt_name", "text", "seed", "steps", "cfg", "sampler", "sampler_name",
    "scheduler", "strength", "denoise", "width", "height", "batch_size", "image",
)  # fmt: skip


def load_image(path: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (1, H, W, 3) in 0..1, mask (1, H, W)) on `device`.

    The mask is ComfyUI's: 1 where the picture is transparent (1 - alpha), zeros without alpha.
    """
    with Image.open(path) as opened:
        img = ImageOps.exif_transpose(opened)
        img.load()
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    image = torch.from_numpy(rgb)[None]
    if "A" in img.getbands():
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
        mask = 1.0 - torch.from_numpy(alpha)[None]
    else:
        mask = torch.zeros(image.shape[:3], dtype=torch.float32)
    return image.to(device), mask.to(device)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_fingerprint(literals: Mapping[str, Any], settings: RunSettings, name: str) -> Any:
    """A file input's identity for the cache: its path and content digest."""
    try:
        path = settings.resolve_input(literals[name])
        return (str(path), file_digest(path))
    except (OSError, ValueError):
        return ("missing", literals.get(name))


def input_check(
    literals: Mapping[str, Any], settings: RunSettings, name: str, what: str
) -> list[tuple[str, str]]:
    """A file input's problem at validation: outside the input folder, or not there."""
    try:
        path = settings.resolve_input(literals[name])
    except ValueError as exc:  # UnsafePath: outside the input folder
        return [(name, str(exc))]
    return [] if path.is_file() else [(name, f"There is no {what} at {path}.")]


class Loaded(Outputs):
    image: IMAGE
    mask: MASK


class LoadImage(Node):
    """Load a picture: a path (absolute or relative to the workflow file); the server's input
    folder in server mode. RGBA pictures give their transparency as the mask."""

    category = "image"
    display_name = "Load Image"
    image: str = InputField(description="The picture's file.", image_upload=True)

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return input_fingerprint(literals, run.settings, "image")

    @classmethod
    def check(cls, literals: Mapping[str, Any], settings: RunSettings) -> list[tuple[str, str]]:
        return input_check(literals, settings, "image", "picture")

    def invoke(self, ctx: NodeContext) -> Loaded:
        path = ctx.settings.resolve_input(self.image)
        if not path.is_file():
            raise FileNotFoundError(f"no picture at {path}")
        image, mask = load_image(path, resolve_device(ctx.settings.options))
        return Loaded(image=image, mask=mask)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images (batch, H, W, C) in 0..1 as 8-bit PIL pictures (rounded, as diffusers does)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a[..., :3]) for a in arr]


def run_parameters(workflow: Mapping[str, Any], node_id: str) -> dict[str, Any]:
    """How the picture of `node_id` was made: the generation inputs of the nodes it depends on."""
    found: dict[str, Any] = {}
    stack, seen = [node_id], set()
    while stack:
        nid = stack.pop()
        if nid in seen or not isinstance(workflow.get(nid), Mapping):
            continue
        seen.add(nid)
        node = workflow[nid]
        inputs = node.get("inputs", {})
        values = {}
        for k, v in inputs.items():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                stack.append(v[0])
            elif k in PARAMETER_INPUTS:
                values[k] = v
        if values:
            found[nid] = {"class_type": node.get("class_type"), **values}
    return dict(sorted(found.items()))


def png_bytes(image: Image.Image, text: Mapping[str, str], compress_level: int = 4) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


class _Written:
    """Files the save nodes wrote, by (folder, prefix); a deleted one bumps a generation so
    the node's fingerprint changes and it writes again."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, str], list[Path]] = {}
        self._generation: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def generation(self, key: tuple[str, str]) -> int:
        with self._lock:
            files = self._files.get(key, [])
            if any(not f.exists() for f in files):
                self._generation[key] = self._generation.get(key, 0) + 1
                self._files[key] = [f for f in files if f.exists()]
            return self._generation.get(key, 0)

    def add(self, key: tuple[str, str], paths: list[Path]) -> None:
        with self._lock:
            self._files.setdefault(key, []).extend(paths)


WRITTEN = _Written()


def workflow_text(ctx: NodeContext) -> dict[str, str]:
    """What a saved file carries of its run, as ComfyUI writes it: the API workflow ("prompt")
    and each extra_pnginfo entry (the canvas's "workflow"), as JSON."""
    text = {"prompt": json.dumps(ctx.run.workflow)}
    pnginfo = ctx.run.extra.get("extra_pnginfo")
    if isinstance(pnginfo, Mapping):
        text.update({str(key): json.dumps(value) for key, value in pnginfo.items()})
    return text


def saved_fingerprint(literals: Mapping[str, Any], settings: RunSettings) -> Any:
    """A save node's identity for the cache: its folder, and whether a file it wrote is gone
    (then it writes again)."""
    folder = str(Path(settings.output_dir).resolve())
    return (folder, WRITTEN.generation((folder, literals.get("filename_prefix", ""))))


PREFIX_CLOCK = {"%year%": "%Y", "%month%": "%m", "%day%": "%d", "%hour%": "%H",
                "%minute%": "%M", "%second%": "%S"}  # fmt: skip
"""The local time variables a file name prefix may hold (ComfyUI's get_save_image_path)."""


def expand_prefix(prefix: str, width: int = 0, height: int = 0) -> str:
    """A save node's filename_prefix with ComfyUI's variables filled in: %width% / %height% (the
    first picture's; 0 where there is none) and the local time's %year% .. %second%."""
    if "%" not in prefix:
        return prefix
    now = time.localtime()
    prefix = prefix.replace("%width%", str(width)).replace("%height%", str(height))
    for variable, spec in PREFIX_CLOCK.items():
        prefix = prefix.replace(variable, time.strftime(spec, now))
    return prefix


def save_images(
    images: torch.Tensor, folder: Path, prefix: str, text: Mapping[str, str], compress: int
) -> list[dict[str, str]]:
    """Write each image as ComfyUI names it, `<prefix>_<n>_.png` with n one past the highest
    number of the prefix under `folder` and counting up (`%batch_num%` in the prefix: the
    image's place in the batch); a number taken meanwhile is skipped, never overwritten."""
    prefix = expand_prefix(prefix, int(images.shape[2]), int(images.shape[1]))
    target = confined(folder, prefix.strip() or "image")
    sub = target.parent.relative_to(folder.resolve())
    n = next_counter(target.parent, target.name)
    written: list[Path] = []
    try:
        for i, picture in enumerate(to_pil(images)):  # each file whole under its name, or none
            data = png_bytes(picture, text, compress)
            stem = target.name.replace("%batch_num%", str(i))
            written.append(write_unique(target.parent, stem, ".png", data, n))
            n = int(written[-1].name[len(stem) + 1 :].split("_")[0]) + 1
    except BaseException:  # a full disk: none of the batch stays, as the job records none
        for path in written:
            path.unlink(missing_ok=True)
        raise
    subfolder = "" if str(sub) == "." else sub.as_posix()
    return [{"filename": p.name, "subfolder": subfolder, "path": str(p)} for p in written]


class SaveImage(Node):
    """Save pictures as PNG files that embed the workflow (reopen one to get its workflow)."""

    category = "image"
    display_name = "Save Image"
    output_node = True
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    images: IMAGE = InputField(description="The pictures to save.")
    filename_prefix: str = InputField(
        "ComfyUI", description="File name start; may include a subfolder.", max_length=200
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return saved_fingerprint(literals, run.settings)

    def invoke(self, ctx: NodeContext) -> None:
        folder = Path(ctx.settings.output_dir)
        text = workflow_text(ctx)
        parameters: dict[str, Any] = {"nodes": run_parameters(ctx.run.workflow, ctx.node_id)}
        if isinstance(ctx.run.extra.get("parameters"), Mapping):  # e.g. the CLI's sweep values
            parameters["values"] = dict(ctx.run.extra["parameters"])
        text["parameters"] = json.dumps(parameters, default=str)
        saved = save_images(self.images, folder, self.filename_prefix, text, 4)
        WRITTEN.add(
            (str(folder.resolve()), self.filename_prefix), [Path(s.pop("path")) for s in saved]
        )
        ctx.show("images", [{**s, "type": "output"} for s in saved])


class PreviewImage(Node):
    """Show pictures without keeping them (written to the temporary folder)."""

    category = "image"
    display_name = "Preview Image"
    output_node = True
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    images: IMAGE = InputField(description="The pictures to show.")

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        folder = str(Path(run.settings.temp_dir).resolve())
        return (folder, WRITTEN.generation((folder, "preview")))

    def invoke(self, ctx: NodeContext) -> None:
        folder = Path(ctx.settings.temp_dir)
        prefix = f"preview_{uuid.uuid4().hex[:8]}"
        saved = save_images(self.images, folder, prefix, {}, 1)
        WRITTEN.add((str(folder.resolve()), "preview"), [Path(s.pop("path")) for s in saved])
        ctx.show("images", [{**s, "type": "temp"} for s in saved])
