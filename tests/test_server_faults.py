"""The server under faults made real: a full disk (a tiny tmpfs), kill -9 while pictures are
written, a garbage or truncated queue database, a read-only data folder, a client websocket
frame without a mask; and /history's paging. Mounts need root; those tests skip without it."""

from __future__ import annotations

import base64
import contextlib
import errno
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph import Node, NodeContext
from nodegraph.files import remove_leftovers
from nodes.images.io import save_images
from server.store import ERROR, SUCCESS, Outcome, Store
from tests.server_fixtures import (
    REPO,
    LiveServer,
    add,
    free_port,
    get_json,
    http,
    make_registry,
    post_json,
    slow,
    start_subprocess,
    wait_until,
)

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a tmpfs (a full or read-only disk)"
)
NUMBERED = re.compile(r"^[a-z]+_\d{5}_\.png$")
SERVER = [sys.executable, "-m", "server", "--no-default-nodes"]


# -- helpers ---------------------------------------------------------------------------------


def mount(*args: str) -> None:
    """`mount ARGS`; skips the test where mounting is not allowed (no CAP_SYS_ADMIN)."""
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount ({' '.join(args)}): {done.stderr.strip()}")


@contextlib.contextmanager
def mounted(path: Path, *args: str) -> Iterator[Path]:
    """`mount ARGS path` for the duration (lazily unmounted after)."""
    path.mkdir(parents=True, exist_ok=True)
    mount(*args, str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def tmpfs(path: Path, size: str) -> contextlib.AbstractContextManager[Path]:
    """A tmpfs of `size` mounted at `path`."""
    return mounted(path, "-t", "tmpfs", "-o", f"size={size}", "tmpfs")


def fill_disk(folder: Path) -> Path:
    """A file taking every free byte of the file system that holds `folder`."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    chunk = 1 << 16
    try:
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk //= 16  # the last pages too
    finally:
        os.close(fd)
    return filler


def noise_png(size: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def check_whole_pictures(folder: Path) -> list[Path]:
    """Every file in `folder` is a numbered PNG that decodes whole; returns them."""
    files = sorted(folder.iterdir())
    for path in files:
        assert NUMBERED.match(path.name), f"not a finished picture: {path.name}"
        with Image.open(path) as image:
            image.load()  # a truncated or empty file raises here
    return files


# -- pictures: never empty or partial under their final name ----------------------------------


@needs_root
def test_save_image_on_a_full_disk_leaves_no_file(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        out = disk / "output"
        out.mkdir()
        filler = fill_disk(disk)
        os.truncate(filler, filler.stat().st_size - 300_000)  # room for one picture, not two
        pictures = torch.rand(2, 256, 256, 3)  # noise: ~200 kB of PNG each
        with pytest.raises(OSError) as failed:
            save_images(pictures, out, "full", {}, 4)
        assert failed.value.errno == errno.ENOSPC
        assert list(out.iterdir()) == []  # not the first picture, not a temporary file
        filler.unlink()
        saved = save_images(pictures, out, "full", {}, 4)
        assert [s["filename"] for s in saved] == ["full_00001_.png", "full_00002_.png"]
        assert len(check_whole_pictures(out)) == 2


WRITER = """
import sys
from pathlib import Path
from nodegraph.files import write_unique
data = Path(sys.argv[2]).read_bytes()
while True:
    write_unique(Path(sys.argv[1]), "crash", ".png", data)
    print("wrote", flush=True)
"""


def test_kill_9_while_writing_leaves_only_whole_pictures(tmp_path: Path) -> None:
    out, source = tmp_path / "out", tmp_path / "source.png"
    out.mkdir()
    source.write_bytes(noise_png(512, 1))
    rng = random.Random(5)
    for _ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(out), str(source)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline() == "wrote\n"
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    remove_leftovers(out)  # what the server does at start: a killed write's temporary file
    pictures = check_whole_pictures(out)
    assert len(pictures) >= 8
    assert all(p.read_bytes() == source.read_bytes() for p in pictures)


def save_job(n: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": f"src_{n}.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "kill"}},
    }


def test_kill_9_during_save_image_jobs_history_and_files_agree(tmp_path: Path) -> None:
    """SaveImage in the real server, killed mid-run: after a restart every job is recorded once,
    every picture it lists is whole, and no empty or temporary file is left."""
    data, jobs = tmp_path / "data", 16
    (data / "input").mkdir(parents=True)
    sources = {n: noise_png(384, n) for n in range(jobs)}
    for n, png in sources.items():
        (data / "input" / f"src_{n}.png").write_bytes(png)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [*SERVER, "--node-package", "nodes.images"]
    proc = start_subprocess(data, port, command=command)
    try:
        for n in range(jobs):
            assert (
                post_json(url, "/prompt", {"prompt": save_job(n), "prompt_id": f"j{n}"})[0] == 200
            )
        # the moment a second picture's name appears: the worst time for a name that comes
        # before its content (an empty file claims the number while the PNG is encoded)
        wait_until(lambda: len(list((data / "output").glob("kill_*.png"))) >= 2, interval=0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = start_subprocess(data, port, command=command)
        wait_until(lambda: len(get_json(url, "/history")) == jobs)
        history = get_json(url, "/history")
    finally:
        proc.kill()
        proc.wait(10)
    listed = set()
    for n in range(jobs):
        entry = history[f"j{n}"]
        assert entry["status"]["status_str"] == "success"
        (image,) = entry["outputs"]["2"]["images"]
        listed.add(image["filename"])
        with Image.open(data / "output" / image["filename"]) as saved:
            expected = Image.open(io.BytesIO(sources[n]))
            assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(expected))
    files = {p.name for p in check_whole_pictures(data / "output")}
    # the killed run's own finished pictures may remain (its job ran again), never a broken one
    assert listed <= files and len(files - listed) <= 1


# -- a full disk under the server -----------------------------------------------------------------


@needs_root
def test_a_full_disk_answers_507_and_loses_no_job(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "8m") as disk:
        live = LiveServer(disk / "data")
        try:
            url = live.url
            first = {"prompt": slow(steps=20, delay=0.05, tag="first"), "prompt_id": "first"}
            assert post_json(url, "/prompt", first)[0] == 200
            queued = {"prompt": write_output(7), "prompt_id": "queued"}
            assert post_json(url, "/prompt", queued)[0] == 200
            wait_until(lambda: live.server.worker.current is not None)
            filler = fill_disk(disk)

            status, answer = post_json(url, "/prompt", {"prompt": slow(1, 0.0, "late")})
            assert status == 507, answer
            assert set(answer) == {"error", "node_errors"} and answer["node_errors"] == {}
            assert set(answer["error"]) == {"type", "message", "details", "extra_info"}
            assert answer["error"]["type"] == "disk_full"
            assert "full" in answer["error"]["message"]

            time.sleep(1.5)  # "first" has ended, and could not be recorded
            queue = get_json(url, "/queue")
            assert [item[1] for item in queue["queue_running"]] == ["first"]
            assert [item[1] for item in queue["queue_pending"]] == ["queued"]
            assert get_json(url, "/history") == {}

            filler.unlink()  # space again: the result is recorded, the queue goes on
            wait_until(lambda: len(get_json(url, "/history")) == 2, timeout=15)
            status, answer = post_json(url, "/prompt", {"prompt": slow(1, 0.0, "after")})
            assert status == 200, answer
            wait_until(lambda: answer["prompt_id"] in get_json(url, "/history"))
            history = get_json(url, "/history")
            assert {e["status"]["status_str"] for e in history.values()} == {SUCCESS}
            assert history["first"]["outputs"] == {"9": {"text": ["20"]}}
            (image,) = history["queued"]["outputs"]["1"]["images"]
            assert check_whole_pictures(disk / "data" / "output") == [
                disk / "data" / "output" / image["filename"]
            ]
        finally:
            live.close()


def write_output(value: int) -> dict[str, Any]:
    return {"1": {"class_type": "WriteOutput", "inputs": {"value": value, "prefix": "out"}}}


@needs_root
def test_an_upload_to_a_full_disk_is_a_507_and_leaves_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        live = LiveServer(disk / "data")
        try:
            filler = fill_disk(disk)
            os.truncate(filler, filler.stat().st_size - 100_000)
            body, boundary = multipart_image(noise_png(256, 2))
            status, _, raw = http(
                live.url,
                "POST",
                "/upload/image",
                data=body,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            assert status == 507, raw
            assert json.loads(raw)["error"]["type"] == "disk_full"
            assert list((disk / "data" / "input").iterdir()) == []
        finally:
            live.close()


class ShowsAnObject(Node):
    """Shows something that is not JSON: its outputs cannot be stored."""

    category = "testing"
    output_node = True

    def invoke(self, ctx: NodeContext) -> None:
        ctx.show("text", [object()])


def test_outputs_that_cannot_be_stored_fail_the_job_and_the_queue_goes_on(tmp_path: Path) -> None:
    registry = make_registry()
    registry.register(ShowsAnObject)
    live = LiveServer(tmp_path / "data", registry=registry)
    try:
        bad = {"prompt": {"1": {"class_type": "ShowsAnObject", "inputs": {}}}, "prompt_id": "bad"}
        assert post_json(live.url, "/prompt", bad)[0] == 200
        assert post_json(live.url, "/prompt", {"prompt": add(2, 3), "prompt_id": "next"})[0] == 200
        wait_until(lambda: len(get_json(live.url, "/history")) == 2)
        history = get_json(live.url, "/history")
        assert history["next"]["status"]["status_str"] == SUCCESS
        failed = history["bad"]
        assert failed["status"]["status_str"] == ERROR and failed["outputs"] == {}
        last = failed["status"]["messages"][-1]
        assert last[0] == "execution_error"
        assert "could not be stored" in last[1]["exception_message"]
    finally:
        live.close()


def multipart_image(png: bytes) -> tuple[bytes, str]:
    boundary = "faultboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="up.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + png + f"\r\n--{boundary}--\r\n".encode(), boundary


# -- start-up: one line, exit 2 ------------------------------------------------------------------


def start_fails(data: Path) -> str:
    """Start the server on `data`; it must exit 2 with one line of error, which is returned."""
    done = subprocess.run(
        [*SERVER, "--node-package", "nodes.utility", "--port", "0", "--data", str(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def make_history(db: Path, entries: int) -> None:
    store = Store(db)
    for n in range(entries):
        store.add(f"p{n}", {"1": {"class_type": "X", "inputs": {"t": "x" * 2000}}},
                  client_id=None, extra_data={}, outputs=["1"])  # fmt: skip
        assert store.claim_next() is not None
        store.finish(f"p{n}", Outcome(SUCCESS, {}, [], {}))
    store.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_queue_database_is_one_line_and_exit_2(tmp_path: Path, damage: str) -> None:
    db = tmp_path / "data" / "queue.sqlite3"
    db.parent.mkdir()
    if damage == "garbage":
        db.write_bytes(os.urandom(8192))
    else:
        make_history(db, 100)
        os.truncate(db, db.stat().st_size // 2)
    line = start_fails(tmp_path / "data")
    assert str(db) in line
    expected = "file is not a database" if damage == "garbage" else "malformed"
    assert expected in line


@needs_root
def test_a_read_only_data_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        make_history(disk / "data" / "queue.sqlite3", 3)
        mount("-o", "remount,ro", str(disk))
        line = start_fails(disk / "data")
        assert str(disk / "data" / "server.lock") in line and "Read-only file system" in line
        line = start_fails(disk / "new")  # a folder that cannot be made
        assert str(disk / "new") in line and "Read-only file system" in line


@needs_root
def test_a_read_only_output_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    output = tmp_path / "data" / "output"
    with mounted(output, "--bind", str(output)):
        mount("-o", "remount,bind,ro", str(output))
        line = start_fails(tmp_path / "data")
        assert f"cannot write in {output}: Read-only file system" in line


# -- what a crash leaves is removed at start ------------------------------------------------------


def test_the_server_removes_what_a_crash_left_at_start(tmp_path: Path) -> None:
    out = tmp_path / "data" / "output"
    (out / "sub").mkdir(parents=True)
    (out / ".nodegraph-k2j3.tmp").write_bytes(b"half a picture")
    (out / "sub" / ".ComfyUI_00003_.png.x8a.tmp").write_bytes(b"an older version's")
    (out / "ComfyUI_00001_.png").write_bytes(b"")  # an older version's claimed number
    kept = noise_png(16, 4)
    (out / "ComfyUI_00002_.png").write_bytes(kept)
    (out / "notes.txt").write_bytes(b"")
    live = LiveServer(tmp_path / "data")
    live.close()
    remaining = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert remaining == ["ComfyUI_00002_.png", "notes.txt"]
    assert (out / "ComfyUI_00002_.png").read_bytes() == kept


# -- websocket frames -----------------------------------------------------------------------------


def ws_connect(port: int, early: bytes = b"") -> tuple[socket.socket, bytes]:
    """A raw websocket handshake (plus `early` bytes in the same packet); (socket, leftover)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws?clientId=raw HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode() + early)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(4096)
    head, _, rest = buffer.partition(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n")[0], head
    return sock, rest


def server_frames(sock: socket.socket, buffer: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each frame the server sends, until it closes the connection."""
    while True:
        while len(buffer) >= 2 and len(buffer) >= 2 + frame_length(buffer)[1]:
            start, length = frame_length(buffer)
            yield buffer[0] & 0x0F, buffer[start : start + length]
            buffer = buffer[start + length :]
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk


def frame_length(buffer: bytes) -> tuple[int, int]:
    """(header size, payload size) of an unmasked server frame (payload size 1<<62 if unknown)."""
    length = buffer[1] & 0x7F
    if length < 126:
        return 2, length
    size = 4 if length == 126 else 10
    if len(buffer) < size:
        return size, 1 << 62
    return size, int.from_bytes(buffer[2:size], "big")


def client_frame(opcode: int, payload: bytes, masked: bool = True) -> bytes:
    assert len(payload) < 126
    if not masked:
        return bytes([0x80 | opcode, len(payload)]) + payload
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def close_code(sock: socket.socket, rest: bytes) -> int | None:
    """The code of the server's close frame (None if the connection ended without one)."""
    for opcode, payload in server_frames(sock, rest):
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big")
    return None


PING, TEXT = 0x9, 0x1


def test_a_masked_client_frame_is_answered(live: LiveServer) -> None:
    sock, rest = ws_connect(live.port)
    with sock:
        frame = client_frame(PING, b"are you there")
        for byte in frame:  # byte by byte: the mask check follows frames across reads
            sock.sendall(bytes([byte]))
        frames = server_frames(sock, rest)
        assert next(frames)[0] == TEXT  # the status message
        assert next(frames) == (0xA, b"are you there")  # the pong


@pytest.mark.parametrize("where", ["alone", "after a masked frame", "with the handshake"])
def test_an_unmasked_client_frame_closes_with_1002(live: LiveServer, where: str) -> None:
    unmasked = client_frame(TEXT, b'{"hello": 1}', masked=False)
    if where == "with the handshake":
        sock, rest = ws_connect(live.port, early=unmasked)
    else:
        sock, rest = ws_connect(live.port)
        before = client_frame(TEXT, b"{}") if where == "after a masked frame" else b""
        sock.sendall(before + unmasked)
    with sock:
        assert close_code(sock, rest) == 1002
    assert get_json(live.url, "/prompt") == {"exec_info": {"queue_remaining": 0}}


# -- /history: paging and shape -------------------------------------------------------------------


def test_history_pages_newest_last_in_comfyui_shape(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.sqlite3", max_history=40)
    ids = [f"café-{n}" for n in range(45)]  # the oldest 5 are pruned
    for n, prompt_id in enumerate(ids):
        number = store.add(prompt_id, {"n": n}, client_id="c", extra_data={"e": n},
                           outputs=["1"], number=n + 0.5 if n == 44 else None)  # fmt: skip
        assert store.claim_next() is not None
        state = ERROR if n % 7 == 0 else SUCCESS
        store.finish(prompt_id, Outcome(state, {"1": {"n": [n]}}, [["m", {"n": n}]], {"k": n}))

    def history(**query: Any) -> dict[str, Any]:
        return json.loads(store.history_json(**query))

    everything = history()
    assert list(everything) == ids[5:]
    assert everything[ids[10]] == {
        "prompt": [11, ids[10], {"n": 10}, {"e": 10}, ["1"]],
        "outputs": {"1": {"n": [10]}},
        "status": {"status_str": "success", "completed": True, "messages": [["m", {"n": 10}]]},
        "meta": {"k": 10},
    }
    assert everything[ids[14]]["status"]["completed"] is False
    assert everything[ids[44]]["prompt"][0] == 44.5 == number
    assert list(history(max_items=3)) == ids[-3:]
    assert list(history(max_items=3, offset=2)) == ids[7:10]
    assert list(history(offset=38)) == ids[-2:]
    assert history(max_items=0) == {} and history(offset=100) == {}
    assert list(history(prompt_id=ids[20])) == [ids[20]] and history(prompt_id=ids[0]) == {}
    # entries are rendered once and kept: a deleted id used again shows its new job
    store.delete_history([ids[10]])
    store.add(ids[10], {"again": 1}, client_id="c", extra_data={}, outputs=["2"])
    assert store.claim_next() is not None
    store.finish(ids[10], Outcome(SUCCESS, {}, [], {}))
    again = history()
    assert list(again) == [*ids[6:10], *ids[11:], ids[10]]  # ids[5] pruned, ids[10] newest
    assert again[ids[10]]["prompt"][2:] == [{"again": 1}, {}, ["2"]]
    assert history(max_items=1) == {ids[10]: again[ids[10]]}
    store.close()
