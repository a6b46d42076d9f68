"""/view, /upload/image and /upload/mask: files confined to input/, output/ and temp/, images
only inline."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from PIL import Image, PngImagePlugin

from nodegraph.files import Staged, UnsafePath, atomic_write, confined

from .config import CONFIG, Limits, ServerConfig
from .guard import refuse

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}
"""Served inline; anything else (HTML, SVG, scripts, ...) is an attachment of unknown type."""


def input_pictures(folder: Path) -> list[str]:
    """The pictures directly in the input folder, sorted (ComfyUI's LoadImage choices)."""
    try:
        return sorted(
            p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_TYPES
        )
    except OSError:
        return []


UPLOAD_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}
VIEW_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "no-cache",
}


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def response(self) -> web.Response:
        return refuse(self.status, self.message)


def resolve(config: ServerConfig, kind: str, subfolder: str, filename: str) -> Path:
    """The real path of a file named by /view or /upload, inside its folder, or Refused."""
    root = config.folder(kind or "output")
    if root is None:
        raise Refused(400, f"type must be input, output or temp, not '{kind}'.")
    if not filename or "/" in filename:
        raise Refused(400, "filename must be a plain file name.")
    name = f"{subfolder.strip('/')}/{filename}" if subfolder.strip("/") else filename
    if subfolder.startswith("/"):
        raise Refused(403, f"'{subfolder}' is not a relative folder.")
    try:
        return confined(root, name)
    except UnsafePath as exc:
        raise Refused(403, str(exc)) from None


def check_image(data: bytes, limits: Limits) -> str:
    """The format of an uploaded image, or Refused: not an image (415), too many pixels (413)."""
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        frames = getattr(image, "n_frames", 1)
        if width * height * max(frames, 1) > limits.max_image_pixels:
            raise Refused(
                413,
                f"The image has {width} x {height} pixels x {frames} frames; "
                f"the limit is {limits.max_image_pixels} (--max-image-pixels).",
            )
        if image.format not in UPLOAD_FORMATS:
            raise Refused(415, f"{image.format} images are not accepted.")
        image.verify()
        return image.format
    except Image.DecompressionBombError:
        raise Refused(413, "The image is a decompression bomb (far too many pixels).") from None
    except Refused:
        raise
    except Exception:
        text = "The upload is not a readable image (PNG, JPEG, WebP, GIF, BMP)."
        raise Refused(415, text) from None


async def view(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    q = request.query
    try:
        path = resolve(
            config, q.get("type", "output"), q.get("subfolder", ""), q.get("filename", "")
        )
    except Refused as exc:
        return exc.response()
    if not path.is_file():
        return refuse(404, "No such file.")
    content_type = IMAGE_TYPES.get(path.suffix.lower())
    headers = dict(VIEW_HEADERS)
    preview, channel = q.get("preview"), q.get("channel", "rgba")
    if content_type and (preview or channel in ("rgb", "a")):
        try:
            body, content_type = await _convert(path, preview, channel, config.limits)
        except Refused as exc:
            return exc.response()
        return web.Response(body=body, content_type=content_type, headers=headers)
    if content_type is None:
        content_type = "application/octet-stream"
        headers["Content-Disposition"] = f'attachment; filename="{_ascii(path.name)}"'
    else:
        headers["Content-Disposition"] = f'inline; filename="{_ascii(path.name)}"'
    headers["Content-Type"] = content_type
    return web.FileResponse(path, headers=headers)


def _ascii(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)


async def _convert(
    path: Path, preview: str | None, channel: str, limits: Limits
) -> tuple[bytes, str]:
    def work() -> tuple[bytes, str]:
        with Image.open(path) as image:
            if image.width * image.height > limits.max_image_pixels:
                raise Refused(413, "The image has too many pixels to convert.")
            image = image.convert("RGBA")
            if channel == "rgb":
                image = image.convert("RGB")
            elif channel == "a":
                alpha = image.getchannel("A")
                image = Image.merge("RGBA", (alpha, alpha, alpha, alpha))
            fmt, quality = "PNG", 90
            if preview:
                kind, _, q = preview.partition(";")
                fmt = {"webp": "WEBP", "jpeg": "JPEG", "jpg": "JPEG"}.get(kind.lower(), "PNG")
                with contextlib.suppress(ValueError):
                    quality = max(1, min(int(q), 100))
            if fmt == "JPEG":
                image = image.convert("RGB")
            buf = io.BytesIO()
            image.save(buf, format=fmt, quality=quality)
            return buf.getvalue(), {"PNG": "image/png", "WEBP": "image/webp"}.get(fmt, "image/jpeg")

    return await asyncio.to_thread(work)


async def _read_upload(
    request: web.Request, names: tuple[str, ...]
) -> tuple[dict[str, str], bytes, str]:
    """The multipart fields named in `names`, the `image` part's bytes and file name, or Refused."""
    limits = request.app[CONFIG].limits
    if request.content_type != "multipart/form-data":
        raise Refused(415, "Upload with multipart/form-data.")
    fields: dict[str, str] = {}
    data, filename = None, None
    try:
        reader = await request.multipart()
        async for part in reader:
            if part.name == "image" and part.filename is not None:
                filename = part.filename
                data = await _read_limited(part, limits.max_upload_bytes)
            elif part.name in names:
                fields[part.name] = (await _read_limited(part, 4096)).decode("utf-8", "replace")
            else:
                await _read_limited(part, limits.max_upload_bytes)
    except (ValueError, AssertionError):
        raise Refused(400, "The multipart body is malformed.") from None
    if data is None or not filename:
        raise Refused(400, "No image: send the file in the multipart field 'image'.")
    return fields, data, filename


async def _save_upload(
    config: ServerConfig,
    fields: dict[str, str],
    filename: str,
    make: Callable[[Path], bytes],
) -> web.Response:
    """Store what `make(target)` returns (called once the target is checked) under the form's
    type/subfolder and name; the answer is ComfyUI's `{"name", "subfolder", "type"}`."""
    kind, subfolder = fields.get("type", "input") or "input", fields.get("subfolder", "")
    overwrite = fields.get("overwrite", "").lower() in ("true", "1", "yes")
    try:
        if Path(filename).suffix.lower() not in IMAGE_TYPES:
            raise Refused(415, f"'{filename}' is not an image file name (.png, .jpg, .webp, ...).")
        target = resolve(config, kind, subfolder, filename)
        data = await asyncio.to_thread(make, target)
        name = await asyncio.to_thread(_store, target, data, overwrite)
    except Refused as exc:
        return exc.response()
    return web.json_response({"name": name, "subfolder": subfolder.strip("/"), "type": kind})


async def upload_image(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    try:
        fields, data, filename = await _read_upload(request, ("type", "subfolder", "overwrite"))
    except Refused as exc:
        return exc.response()

    def make(_target: Path) -> bytes:
        check_image(data, config.limits)
        return data

    return await _save_upload(config, fields, filename, make)


async def upload_mask(request: web.Request) -> web.Response:
    """ComfyUI's mask upload: the picture `original_ref` names (a JSON `{"filename", "subfolder",
    "type"}`; type "output" unless given or the name ends ` [input]` / ` [output]` / ` [temp]`)
    with the uploaded image's alpha channel as its alpha, saved like an /upload/image upload."""
    config = request.app[CONFIG]
    try:
        fields, data, filename = await _read_upload(
            request, ("type", "subfolder", "overwrite", "original_ref")
        )
    except Refused as exc:
        return exc.response()

    def make(target: Path) -> bytes:
        check_image(data, config.limits)
        original = _original_path(config, fields.get("original_ref", ""))
        return _with_alpha(original, data, target.suffix.lower(), config.limits)

    return await _save_upload(config, fields, filename, make)


def _original_path(config: ServerConfig, ref_text: str) -> Path:
    """The existing picture a mask upload's `original_ref` names, or Refused."""
    try:
        ref = json.loads(ref_text)
    except ValueError:
        ref = None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise Refused(400, "original_ref must be a JSON object with the original's filename.")
    name, kind = ref["filename"], ref.get("type") or "output"
    for folder in ("input", "output", "temp"):
        if name.endswith(f" [{folder}]"):
            name, kind = name[: -len(folder) - 3], folder
    path = resolve(config, str(kind), str(ref.get("subfolder") or ""), name)
    if not path.is_file():
        raise Refused(404, f"The original picture '{name}' is not in {kind}/.")
    return path


def _with_alpha(original: Path, mask: bytes, suffix: str, limits: Limits) -> bytes:
    """The original picture (its PNG text kept) with the mask's alpha, encoded for `suffix`."""
    with Image.open(original) as image:
        if image.width * image.height > limits.max_image_pixels:
            raise Refused(413, "The original picture has too many pixels.")
        info = PngImagePlugin.PngInfo()
        for key, value in getattr(image, "text", {}).items():
            info.add_text(key, value)
        picture = image.convert("RGBA")
    with Image.open(io.BytesIO(mask)) as m:
        alpha = m.convert("RGBA").getchannel("A")
    if alpha.size != picture.size:
        raise Refused(
            400,
            f"The mask is {alpha.size[0]} x {alpha.size[1]}; the original is "
            f"{picture.width} x {picture.height}.",
        )
    picture.putalpha(alpha)
    fmt = Image.registered_extensions().get(suffix, "PNG")
    buf = io.BytesIO()
    try:
        if fmt == "PNG":
            picture.save(buf, format="PNG", compress_level=4, pnginfo=info)
        else:
            picture.save(buf, format=fmt)
    except OSError:
        raise Refused(415, f"A mask cannot be saved as {fmt} (it has an alpha channel).") from None
    return buf.getvalue()


async def _read_limited(part: object, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(65536):  # type: ignore[attr-defined]
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"The upload is over {limit} bytes (--max-upload-bytes).")
        chunks.append(chunk)
    return b"".join(chunks)


def _store(target: Path, data: bytes, overwrite: bool) -> str:
    """Write the upload; without overwrite, other content under the same name gets `name (n)`.

    The file is complete before its name appears (never an empty or partial upload)."""
    if overwrite:
        atomic_write(target, data)
        return target.name
    digest = hashlib.sha256(data).digest()
    stem, suffix = target.stem, target.suffix
    with Staged(target.parent, data) as staged:
        for n in range(10_000):
            path = target if n == 0 else target.with_name(f"{stem} ({n}){suffix}")
            if staged.publish(path):
                return path.name
            if path.is_file() and not path.is_symlink() and _digest(path) == digest:
                return path.name  # the same file is already there
    raise Refused(409, "Too many files with this name.")


def _digest(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()
