"""Requests that published ComfyUI client libraries (PyPI) send, reproduced without them: each
test is one library's exact request and the answer it relies on, as ComfyUI's server gives it.

comfy-ui-client and comfy-headless upload masks (`POST /upload/mask`); comfy-ui-client lists
front-end extensions (`GET /extensions`) and reads model metadata (`GET /view_metadata/...`);
comfy-api-simplified posts a prompt with no Content-Type and comfy-ui-client with urllib's
default form type."""

from __future__ import annotations

import io
import json
import struct
from http.client import HTTPConnection
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from tests.server_fixtures import TIMEOUT, LiveServer, add, get_json, http


def png(size: tuple[int, int], color: tuple[int, ...], mode: str = "RGB", text: str = "") -> bytes:
    image = Image.new(mode, size, color)
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("prompt", text)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    """A form as requests builds it: the text fields, then the file in the field `image`."""
    boundary = "----nodegraphclientsboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"'
        "\r\nContent-Type: image/png\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_form(
    live: LiveServer, path: str, fields: dict[str, str], filename: str, content: bytes
) -> tuple[int, dict]:
    body, ctype = multipart(fields, filename, content)
    status, _, raw = http(live.url, "POST", path, data=body, headers={"Content-Type": ctype})
    return status, json.loads(raw)


def mask_png(size: tuple[int, int]) -> bytes:
    """A mask as ComfyUI's mask editor (and these libraries) send it: black, alpha = the mask."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.putpixel((1, 2), (0, 0, 0, 0))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def test_upload_mask_puts_the_masks_alpha_on_the_original(live: LiveServer) -> None:
    # comfy-ui-client: upload_image(ImageRef("photo.png", "sub"), ...) then upload_mask with
    # original_ref = ImageRef.to_json() and overwrite=str(True); no subfolder field for the mask
    status, up = post_form(
        live,
        "/upload/image",
        {"subfolder": "sub"},
        "photo.png",
        png((8, 6), (200, 30, 30), text="p"),
    )
    assert status == 200 and up == {"name": "photo.png", "subfolder": "sub", "type": "input"}
    ref = json.dumps({"filename": "photo.png", "subfolder": "sub", "type": "input"})
    fields = {"original_ref": ref, "overwrite": "True"}
    status, body = post_form(live, "/upload/mask", fields, "photo.png", mask_png((8, 6)))
    assert status == 200, body
    assert body == {"name": "photo.png", "subfolder": "", "type": "input"}
    saved = live.config.data_dir / "input" / "photo.png"
    with Image.open(saved) as image:
        assert image.mode == "RGBA" and image.size == (8, 6)
        assert image.getpixel((0, 0)) == (200, 30, 30, 255)  # the original's colour
        assert image.getpixel((1, 2)) == (200, 30, 30, 0)  # the mask's alpha
        assert image.text.get("prompt") == "p"  # the original's PNG text is kept
    # comfy-headless: original_ref is the upload_image answer; the mask goes to its own name
    ref = json.dumps({"filename": "photo.png", "subfolder": "sub", "type": "input"})
    status, body = post_form(
        live, "/upload/mask", {"original_ref": ref, "type": "input"}, "mask.png", mask_png((8, 6))
    )
    assert status == 200 and body == {"name": "mask.png", "subfolder": "", "type": "input"}


def test_upload_mask_finds_the_original_as_comfyui_does(live: LiveServer) -> None:
    post_form(live, "/upload/image", {}, "base.png", png((4, 4), (0, 90, 0)))
    mask = mask_png((4, 4))
    # a name annotated " [input]" (ComfyUI's canvas) is looked up in input/
    ref = json.dumps({"filename": "base.png [input]"})
    status, body = post_form(live, "/upload/mask", {"original_ref": ref}, "m1.png", mask)
    assert status == 200, body
    # without a type or an annotation the original is an output (ComfyUI's default): none here
    status, body = post_form(
        live, "/upload/mask", {"original_ref": json.dumps({"filename": "base.png"})}, "m2.png", mask
    )
    assert status == 404 and body["error"]["message"]
    # a mask of another size, no original_ref, an original outside the folders: refused
    ref = json.dumps({"filename": "base.png", "type": "input"})
    status, body = post_form(
        live, "/upload/mask", {"original_ref": ref}, "m3.png", mask_png((5, 4))
    )
    assert status == 400 and "4 x 4" in body["error"]["message"]
    assert post_form(live, "/upload/mask", {}, "m4.png", mask)[0] == 400
    ref = json.dumps({"filename": "base.png", "subfolder": "../..", "type": "input"})
    assert post_form(live, "/upload/mask", {"original_ref": ref}, "m5.png", mask)[0] == 403
    assert not (live.config.data_dir / "input" / "m2.png").exists()
    assert http(live.url, "POST", "/api/upload/mask", data=b"x")[0] == 415  # also under /api


def test_extensions_lists_no_front_end_scripts(live: LiveServer) -> None:
    # comfy-ui-client.get_extensions(): GET /extensions, a JSON list of script URLs
    assert get_json(live.url, "/extensions") == []
    assert get_json(live.url, "/api/extensions") == []


def safetensors(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def test_view_metadata_answers_a_safetensors_models_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nodes.loading import folders

    monkeypatch.setattr(folders, "_configured", [])  # only this server's folders
    monkeypatch.delenv(folders.ENV_VAR, raising=False)
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    meta = {"ss_network_dim": "4", "modelspec.title": "tiny"}
    (models / "loras" / "tiny.safetensors").write_bytes(
        safetensors(
            {"__metadata__": meta, "w": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}
        )
    )
    (models / "loras" / "bare.safetensors").write_bytes(safetensors({}))
    (models / "loras" / "old.pt").write_bytes(b"x")
    live = LiveServer(tmp_path / "data", model_dirs=(models,))
    try:
        # comfy-ui-client.view_metadata("loras", name): GET /view_metadata/loras?filename=name
        assert get_json(live.url, "/view_metadata/loras?filename=tiny.safetensors") == meta
        assert get_json(live.url, "/api/view_metadata/loras?filename=tiny.safetensors") == meta
        for path in (
            "/view_metadata/loras?filename=bare.safetensors",  # no __metadata__
            "/view_metadata/loras?filename=old.pt",  # not safetensors
            "/view_metadata/loras?filename=none.safetensors",
            "/view_metadata/checkpoints?filename=tiny.safetensors",  # another folder
            "/view_metadata/loras",
        ):
            status, _, raw = http(live.url, "GET", path)
            assert status == 404 and json.loads(raw)["error"]["message"], path
    finally:
        live.close()


def test_a_prompt_without_a_json_content_type_is_accepted(live: LiveServer) -> None:
    body = json.dumps({"prompt": add(1, 2), "client_id": "c"}).encode()
    # comfy-api-simplified: requests.post(url, data=bytes) sends no Content-Type (urllib would
    # add one, so http.client)
    conn = HTTPConnection("127.0.0.1", live.port, timeout=TIMEOUT)
    try:
        conn.request("POST", "/prompt", body=body)
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["prompt_id"]
    finally:
        conn.close()
    # comfy-ui-client: urllib.request.Request(url, data=bytes) sends a form type
    ctype = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, raw = http(live.url, "POST", "/prompt", data=body, headers=ctype)
    assert status == 200 and json.loads(raw)["prompt_id"]
