"""Each safety rule of the server, attacked over real HTTP and websockets on 127.0.0.1: every
attack gets its 4xx, nothing leaks, and nothing is written outside its folder."""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import threading
import urllib.parse
import zlib
from http.client import HTTPConnection
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from server.cli import add_arguments, run
from tests.server_fixtures import (
    LiveServer,
    WebSocket,
    add,
    get_json,
    http,
    post_json,
    show,
    slow,
    wait_until,
    with_limits,
    ws_url,
)

SECRET = b"top secret contents"


def png_bytes(color: tuple[int, int, int] = (1, 2, 3), size: tuple[int, int] = (4, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = "----nodegraphtestboundary"
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + f"{value}\r\n".encode()
        )
    parts.append(
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def upload(live: LiveServer, filename: str, content: bytes, **fields: str) -> tuple[int, dict]:
    body, ctype = multipart(fields, filename, content)
    status, _, raw = http(
        live.url, "POST", "/upload/image", data=body, headers={"Content-Type": ctype}
    )
    return status, json.loads(raw)


def types_of(frames: list) -> list[str]:
    return [f["type"] for f in frames if isinstance(f, dict)]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# -- who may connect -------------------------------------------------------------------------------


def test_binding_off_loopback_needs_a_token(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("NODEGRAPH_TOKEN", raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--host", "0.0.0.0", "--data", str(tmp_path / "d"), "--port", "0"])
    assert run(args) == 2
    assert "token" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before touching anything


def test_a_token_is_required_when_set(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "data", token="s3cret-token")
    try:
        assert http(live.url, "GET", "/queue")[0] == 401
        assert http(live.url, "GET", "/queue", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, _, _ = http(
            live.url, "GET", "/queue", headers={"Authorization": "Bearer s3cret-token"}
        )
        assert status == 200
        assert http(live.url, "GET", "/queue?token=s3cret-token")[0] == 200
        status, body = post_json(live.url, "/prompt", {"prompt": add(1, 2)})
        assert status == 401 and get_json(live.url, "/prompt?token=s3cret-token") == {
            "exec_info": {"queue_remaining": 0}
        }
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            WebSocket(ws_url(live.url, "x"))
        assert err.value.status == 401
        sock = WebSocket(ws_url(live.url, "x") + "&token=s3cret-token")
        assert json.loads(sock.recv())["type"] == "status"
        sock.close()
        status, headers, _ = http(live.url, "GET", "/?token=s3cret-token")
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"]
    finally:
        live.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},  # another port of this machine is another origin
        {"Origin": "file://"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": "rebind.evil.example"},  # DNS rebinding
        {"Host": "rebind.evil.example:8188"},
    ],
)
def test_cross_site_requests_are_refused(live: LiveServer, headers: dict[str, str]) -> None:
    if "{port}" in str(headers):
        headers = {k: v.format(port=live.port) for k, v in headers.items()}
    assert http(live.url, "GET", "/queue", headers=headers)[0] == 403
    assert http(live.url, "GET", "/history", headers=headers)[0] == 403
    status, _ = post_json(live.url, "/prompt", {"prompt": add(1, 2)}, headers=headers)
    assert status == 403
    assert post_json(live.url, "/interrupt", {}, headers=headers)[0] == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        WebSocket(ws_url(live.url, "evil"), headers=headers)
    assert err.value.status == 403
    assert get_json(live.url, "/queue") == {"queue_running": [], "queue_pending": []}
    assert get_json(live.url, "/history") == {}


def test_same_origin_and_plain_local_clients_pass(live: LiveServer) -> None:
    own = {"Origin": live.url, "Sec-Fetch-Site": "same-origin"}
    assert http(live.url, "GET", "/queue", headers=own)[0] == 200
    localhost = {"Host": f"localhost:{live.port}", "Origin": f"http://localhost:{live.port}"}
    assert http(live.url, "GET", "/queue", headers=localhost)[0] == 200
    assert http(live.url, "GET", "/queue")[0] == 200  # curl-like: no Origin at all
    sock = WebSocket(ws_url(live.url, "mine"), headers={"Origin": live.url})
    assert json.loads(sock.recv())["type"] == "status"
    sock.close()


def test_configured_hosts_and_origins_pass(tmp_path: Path) -> None:
    live = LiveServer(
        tmp_path / "data",
        allowed_hosts=("studio.lan",),
        allowed_origins=("http://localhost:5173",),
    )
    try:
        assert http(live.url, "GET", "/queue", headers={"Host": "studio.lan"})[0] == 200
        assert http(live.url, "GET", "/queue", headers={"Host": "other.lan"})[0] == 403
        dev = {"Origin": "http://localhost:5173"}
        assert http(live.url, "GET", "/queue", headers=dev)[0] == 200
        assert (
            http(live.url, "GET", "/queue", headers={"Origin": "http://localhost:5174"})[0] == 403
        )
    finally:
        live.close()


def test_a_browsers_post_bodies_must_be_json_or_multipart(live: LiveServer) -> None:
    body = json.dumps({"prompt": add(1, 2)}).encode()
    # a browser (it sends Origin / Sec-Fetch-*) cannot use a simple type, even same-origin
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream"):
        browser = {"Content-Type": ctype, "Origin": live.url, "Sec-Fetch-Mode": "no-cors"}
        assert http(live.url, "POST", "/prompt", data=body, headers=browser)[0] == 415
        fetched = {"Content-Type": ctype, "Sec-Fetch-Site": "same-origin"}
        assert http(live.url, "POST", "/prompt", data=body, headers=fetched)[0] == 415
    assert get_json(live.url, "/queue")["queue_pending"] == []
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    browser = {**form, "Origin": live.url, "Sec-Fetch-Mode": "no-cors"}
    untyped = {**browser}
    del untyped["Content-Type"]
    assert raw_post(live, "/prompt", body, untyped) == 415
    assert get_json(live.url, "/queue")["queue_pending"] == []
    # scripts may send any type, as ComfyUI accepts: urllib's default (ComfyUI's published
    # examples), none (requests.post(url, data=...)), aiohttp's for bytes and for strings
    for ctype in ("application/x-www-form-urlencoded", "application/octet-stream", "text/plain"):
        typed = {"Content-Type": ctype}
        assert http(live.url, "POST", "/prompt", data=body, headers=typed)[0] == 200
    assert raw_post(live, "/prompt", body, {}) == 200


def raw_post(live: LiveServer, path: str, body: bytes, headers: dict[str, str]) -> int:
    """A POST with exactly these headers (urllib would add a Content-Type)."""
    conn = HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        conn.putrequest("POST", path)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        return conn.getresponse().status
    finally:
        conn.close()


# -- files -----------------------------------------------------------------------------------------


@pytest.fixture
def planted(live: LiveServer, tmp_path: Path) -> Path:
    """A secret outside the data folder, symlinks to it inside output/, and an HTML file."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    out = live.config.output_dir
    (out / "link.png").symlink_to(secret)
    (out / "linkdir").symlink_to(tmp_path)
    (out / "page.html").write_text("<script>alert(1)</script>")
    (out / "image.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>")
    (out / "ok.png").write_bytes(png_bytes())
    return secret


@pytest.mark.parametrize(
    "query",
    [
        "filename=../secret.txt",
        "filename=secret.txt&subfolder=..",
        "filename=secret.txt&subfolder=../",
        "filename=%2e%2e%2fsecret.txt",
        "filename=secret.txt&subfolder=%2e%2e",
        "filename=..%5csecret.txt",
        "filename=secret.txt&subfolder=..%5c",
        "filename={secret}",
        "filename=secret.txt&subfolder={secret_dir}",
        "filename=link.png",
        "filename=secret.txt&subfolder=linkdir",
        "filename=secret.txt&type=input&subfolder=../..",
        "filename=queue.sqlite3&subfolder=..",
        "filename=%252e%252e%252fsecret.txt",
        "filename=secret.txt&type=../..",
    ],
)
def test_view_stays_in_its_folder(live: LiveServer, planted: Path, query: str) -> None:
    query = query.format(
        secret=urllib.parse.quote(str(planted)), secret_dir=urllib.parse.quote(str(planted.parent))
    )
    status, _, body = http(live.url, "GET", "/view?" + query)
    assert 400 <= status < 500 and SECRET not in body and b"SQLite" not in body


def test_view_serves_images_inline_and_nothing_else(live: LiveServer, planted: Path) -> None:
    status, headers, body = http(live.url, "GET", "/view?filename=ok.png&type=output")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in headers["Content-Security-Policy"]
    for name in ("page.html", "image.svg"):
        status, headers, body = http(live.url, "GET", f"/view?filename={name}")
        assert status == 200
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"].startswith("attachment")
    status, headers, body = http(live.url, "GET", "/view?filename=ok.png&preview=webp;50")
    assert status == 200 and headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(body)).size == (4, 4)
    assert http(live.url, "GET", "/view?filename=missing.png")[0] == 404


def test_upload_names_overwrite_and_confinement(live: LiveServer, tmp_path: Path) -> None:
    inputs = live.config.input_dir
    status, body = upload(live, "cat.png", png_bytes((1, 1, 1)))
    assert (status, body) == (200, {"name": "cat.png", "subfolder": "", "type": "input"})
    assert upload(live, "cat.png", png_bytes((1, 1, 1)))[1]["name"] == "cat.png"  # same file
    assert upload(live, "cat.png", png_bytes((2, 2, 2)))[1]["name"] == "cat (1).png"
    assert upload(live, "cat.png", png_bytes((3, 3, 3)), overwrite="true")[1]["name"] == "cat.png"
    assert Image.open(inputs / "cat.png").getpixel((0, 0)) == (3, 3, 3)
    status, body = upload(live, "dog.png", png_bytes(), subfolder="pets")
    assert (status, body["subfolder"]) == (200, "pets") and (inputs / "pets" / "dog.png").is_file()
    status, body = upload(live, "t.png", png_bytes(), type="temp")
    assert status == 200 and (live.config.temp_dir / "t.png").is_file()
    before = files_under(tmp_path)
    attacks = [
        ("../evil.png", {}),
        ("..\\\\evil.png", {}),  # a quoted-string escape: the server reads ..\\evil.png
        ("/tmp/evil.png", {}),
        ("evil.png", {"subfolder": "../.."}),
        ("evil.png", {"subfolder": "/tmp"}),
        ("evil.png", {"subfolder": "..\\.."}),
        ("evil.png", {"type": "../output"}),
    ]
    for name, fields in attacks:
        status, _ = upload(live, name, png_bytes(), **fields)
        assert 400 <= status < 500, (name, fields, status)
    (inputs / "escape").symlink_to(tmp_path)
    assert 400 <= upload(live, "evil.png", png_bytes(), subfolder="escape")[0] < 500
    assert files_under(tmp_path) == before


def test_uploads_must_be_images_of_bounded_size(tmp_path: Path) -> None:
    limits = with_limits(max_upload_bytes=200_000, max_image_pixels=1000 * 1000)
    live = LiveServer(tmp_path / "data", limits=limits)
    try:
        assert upload(live, "page.html", b"<script>alert(1)</script>")[0] == 415
        assert upload(live, "x.svg", b"<svg/>")[0] == 415
        assert upload(live, "fake.png", b"<html><script>alert(1)</script>")[0] == 415
        assert upload(live, "big.png", png_bytes(size=(1001, 1000)))[0] == 413
        assert upload(live, "bomb.png", _bomb_png(100_000, 100_000))[0] == 413
        assert upload(live, "huge.png", b"\x89PNG" + b"\0" * 300_000)[0] == 413
        assert upload(live, "fine.png", png_bytes(size=(1000, 1000)))[0] == 200
        assert files_under(live.config.input_dir) == {"fine.png"}
    finally:
        live.close()


def _bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims a huge picture (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 10000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_node_inputs_are_confined_to_the_input_folder(live: LiveServer, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    (live.config.input_dir / "ok.txt").write_bytes(b"12345")
    (live.config.input_dir / "link.txt").symlink_to(secret)
    sock = WebSocket(ws_url(live.url, "reader"))
    try:
        good = post_json(
            live.url,
            "/prompt",
            {
                "prompt": {"1": {"class_type": "ReadInput", "inputs": {"name": "ok.txt"}}},
                "client_id": "reader",
            },
        )[1]["prompt_id"]
        sock.messages_until_done(good)
        assert get_json(live.url, f"/history/{good}")[good]["outputs"]["1"]["text"] == ["5"]
        for name in (
            "../secret.txt",
            str(secret),
            "link.txt",
            "..\\secret.txt",
            "%2e%2e/secret.txt",
        ):
            status, body = post_json(
                live.url,
                "/prompt",
                {
                    "prompt": {"1": {"class_type": "ReadInput", "inputs": {"name": name}}},
                    "client_id": "reader",
                },
            )
            assert status == 200
            frames = sock.messages_until_done(body["prompt_id"])
            errors = [
                f["data"] for f in frames if isinstance(f, dict) and f["type"] == "execution_error"
            ]
            assert errors and errors[0]["node_id"] == "1", name
            assert "executed" not in types_of(frames)  # nothing about the file came back
    finally:
        sock.close()


def test_load_image_refuses_names_outside_the_input_folder(tmp_path: Path) -> None:
    images = pytest.importorskip("nodes.images.io", reason="the diffusion nodes are not there yet")
    from nodegraph.registry import Registry
    from server import ServerConfig, create_app  # noqa: F401 - the same app, another registry

    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    live = LiveServer(tmp_path / "data")
    try:
        registry = Registry()
        registry.register_module(images)
        live.server.registry = registry
        live.server.executor.registry = registry
        (live.config.input_dir / "link.png").symlink_to(secret)
        for name in ("../secret.png", str(secret), "link.png", "..\\secret.png"):
            prompt = {
                "1": {"class_type": "LoadImage", "inputs": {"image": name}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            }
            status, body = post_json(live.url, "/prompt", {"prompt": prompt})
            assert status == 400, (name, body)
            (error,) = body["node_errors"]["1"]["errors"]
            assert error["extra_info"]["input_name"] == "image", error
            assert "folder" in error["message"] or "relative" in error["message"], error
        assert files_under(live.config.temp_dir) == set()
    finally:
        live.close()


def test_a_resize_past_the_pixel_limit_fails_its_job_only(tmp_path: Path) -> None:
    images = pytest.importorskip("nodes.images.io", reason="the diffusion nodes are not there yet")
    from nodegraph.registry import Registry
    from nodes.images import resize

    live = LiveServer(tmp_path / "data", limits=with_limits(max_image_pixels=64 * 64))
    try:
        registry = Registry()
        for module in (images, resize):
            registry.register_module(module)
        live.server.registry = registry
        live.server.executor.registry = registry
        (live.config.input_dir / "tall.png").write_bytes(png_bytes(size=(4, 40)))

        def resized(width: int, height: int) -> dict:
            return {
                "1": {"class_type": "LoadImage", "inputs": {"image": "tall.png"}},
                "2": {
                    "class_type": "ImageScale",
                    "inputs": {"image": ["1", 0], "width": width, "height": height},
                },
                "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
            }

        status, body = post_json(live.url, "/prompt", {"prompt": resized(128, 128)})
        assert status == 400 and "max-image-pixels" in json.dumps(body)  # known at validation
        ids = [
            post_json(live.url, "/prompt", {"prompt": resized(w, 0)})[1]["prompt_id"]
            for w in (32, 6)
        ]
        for pid in ids:
            wait_until(lambda pid=pid: get_json(live.url, f"/history/{pid}"))
        big, small = (get_json(live.url, f"/history/{pid}")[pid]["status"] for pid in ids)
        assert big["status_str"] == "error"  # 32 x 320 pixels: found when it runs
        assert "the limit is 4096" in big["messages"][-1][1]["exception_message"]
        assert small["status_str"] == "success"  # 6 x 60
    finally:
        live.close()


# -- limits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"prompt": {"1": {"inputs": {"v": NaN}}}}', "line 1 column 35"),
        ('{"prompt": {\n  "1": {"inputs": {"v": -Infinity}}}}', "line 2 column 25"),
        ('{"prompt": {"1": {"inputs": {"v": 1,}}}}', "line 1 column 37"),
    ],
)
def test_a_body_that_is_not_json_is_refused_with_its_line_and_column(
    live: LiveServer, text: str, where: str
) -> None:
    status, _, raw = http(live.url, "POST", "/prompt", data=text.encode(),
                          headers={"Content-Type": "application/json"})  # fmt: skip
    error = json.loads(raw)["error"]
    assert status == 400 and where in error["message"], error["message"]
    assert set(error) == {"type", "message", "details", "extra_info"}  # ComfyUI's shape


def test_workflow_limits(tmp_path: Path) -> None:
    limits = with_limits(
        max_nodes=5, max_body_bytes=20_000, max_image_pixels=2048 * 2048, max_compute=10**9
    )
    live = LiveServer(tmp_path / "data", limits=limits)
    try:
        many = {str(i): {"class_type": "PrimitiveInt", "inputs": {"value": i}} for i in range(6)}
        status, body = post_json(live.url, "/prompt", {"prompt": many | show(["1", 0])})
        assert status == 400 and "limit is 5" in body["error"]["message"]
        for text in (
            '{"prompt": {"1": {"class_type": "PrimitiveFloat", "inputs": {"value": NaN}}}}',
            '{"prompt": {"1": {"class_type": "PrimitiveFloat", "inputs": {"value": 1e999}}}}',
            '{"prompt": {"1": {"class_type": "PrimitiveFloat", "inputs": {"value": -Infinity}}}}',
        ):
            status, _, raw = http(
                live.url,
                "POST",
                "/prompt",
                data=text.encode(),
                headers={"Content-Type": "application/json"},
            )
            error = json.loads(raw)["error"]
            assert status == 400 and (
                "finite" in error["message"] or "JSON number" in error["message"]
            )
        status, body = post_json(live.url, "/prompt", {"prompt": add(1, 2), "number": 10**30})
        assert status == 400 and "number" in body["error"]["message"]
        big = {"prompt": add(1, 2), "extra_data": {"pad": "x" * 30_000}}
        assert post_json(live.url, "/prompt", big)[0] == 413
        wide = {"1": {"class_type": "EmptyLatentLike", "inputs": {"width": 4096, "height": 4096}}}
        status, body = post_json(live.url, "/prompt", {"prompt": wide | show(["1", 0])})
        assert status == 400 and "max-image-pixels" in json.dumps(body)
        linked = {
            "w": {"class_type": "PrimitiveInt", "inputs": {"value": 4096}},
            "1": {"class_type": "EmptyLatentLike", "inputs": {"width": ["w", 0], "height": 4096}},
        }
        status, body = post_json(live.url, "/prompt", {"prompt": linked | show(["1", 0])})
        assert status == 400 and body["node_errors"]["1"]["dependent_outputs"] == ["9"]
        costly = {
            "1": {
                "class_type": "EmptyLatentLike",
                "inputs": {"width": 1024, "height": 1024, "batch_size": 8},
            },
            "2": {"class_type": "SlowCount", "inputs": {"steps": 200, "delay": 0.0}},
            "8": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}},
            **show(["2", 0]),
        }
        status, body = post_json(live.url, "/prompt", {"prompt": costly})
        assert status == 400 and "compute budget" in json.dumps(body)
        costly["2"]["inputs"]["steps"] = 100
        assert post_json(live.url, "/prompt", {"prompt": costly})[0] == 200
    finally:
        live.close()


def test_queue_and_connection_limits(tmp_path: Path) -> None:
    limits = with_limits(max_queue_per_client=2, max_queue_total=4, max_ws_clients=2)
    live = LiveServer(tmp_path / "data", limits=limits)
    sockets = []
    try:

        def submit(client: str, n: int) -> int:
            body = {"prompt": slow(steps=1000, delay=0.02, tag=f"{client}{n}"), "client_id": client}
            return post_json(live.url, "/prompt", body)[0]

        assert [submit("a", 0), submit("a", 1), submit("a", 2)] == [200, 200, 429]
        assert [submit("b", 0), submit("b", 1), submit("c", 0)] == [200, 200, 429]
        sockets = [WebSocket(ws_url(live.url, f"w{i}")) for i in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            WebSocket(ws_url(live.url, "w3"))
        assert err.value.status == 429
        post_json(live.url, "/queue", {"clear": True})
        post_json(live.url, "/interrupt", {})
        wait_until(lambda: get_json(live.url, "/prompt")["exec_info"]["queue_remaining"] == 0)
        assert submit("a", 3) == 200
    finally:
        for sock in sockets:
            sock.close()
        live.close()


def test_the_web_canvas_is_served_with_a_strict_policy(tmp_path: Path) -> None:
    web = tmp_path / "dist"
    (web / "assets").mkdir(parents=True)
    (web / "index.html").write_text(
        "<!doctype html><script type=module src=/assets/app.js></script>"
    )
    (web / "assets" / "app.js").write_text("console.log(1)")
    (web / "assets" / "app.css").write_text("body{}")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    live = LiveServer(tmp_path / "data", web_dir=web)
    try:
        status, headers, body = http(live.url, "GET", "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert (
            "unsafe-inline"
            not in headers["Content-Security-Policy"].split("script-src")[1].split(";")[0]
        )
        assert http(live.url, "GET", "/assets/app.js")[1]["Content-Type"].startswith(
            "text/javascript"
        )
        assert http(live.url, "GET", "/assets/app.css")[1]["Content-Type"].startswith("text/css")
        for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/..%2f..%2fsecret.txt"):
            status, _, body = http(live.url, "GET", path)
            assert status == 404 and SECRET not in body
        assert get_json(live.url, "/queue") == {"queue_running": [], "queue_pending": []}
    finally:
        live.close()
    assert os.path.exists(web / "index.html")


def test_queue_limits_hold_under_concurrent_submissions(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "data", limits=with_limits(max_queue_per_client=3))
    try:
        statuses: list[int] = []

        def submit(n: int) -> None:
            body = {"prompt": slow(steps=1000, delay=0.02, tag=str(n)), "client_id": "greedy"}
            statuses.append(post_json(live.url, "/prompt", body)[0])

        threads = [threading.Thread(target=submit, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(statuses) == [200] * 3 + [429] * 9
        assert get_json(live.url, "/prompt")["exec_info"]["queue_remaining"] == 3
        post_json(live.url, "/queue", {"clear": True})
        post_json(live.url, "/interrupt", {})
    finally:
        live.close()


def test_load_images_choices_are_the_input_folders_pictures(tmp_path: Path) -> None:
    from tests.diffusion_fixtures import diffusion_registry

    live = LiveServer(tmp_path / "data", registry=diffusion_registry())
    try:

        def choices() -> list[str]:
            entry = get_json(live.url, "/object_info/LoadImage")["LoadImage"]
            kind, options = entry["input"]["required"]["image"]
            assert options["image_upload"] is True
            return kind

        assert choices() == []
        for name in ("b.png", "a.png"):
            assert upload(live, name, png_bytes())[0] == 200
        (live.config.input_dir / "notes.txt").write_text("not a picture")
        assert choices() == ["a.png", "b.png"]  # sorted, pictures only, as ComfyUI lists them
        whole = get_json(live.url, "/object_info")["LoadImage"]["input"]["required"]["image"]
        assert whole[0] == ["a.png", "b.png"]
    finally:
        live.close()
