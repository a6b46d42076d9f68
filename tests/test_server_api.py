"""The server's ComfyUI API against a live server on a free loopback port: routes, websocket
messages, history shapes, failures, interrupts and many clients at once."""

from __future__ import annotations

import io
import json
import struct
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

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
    ws_url,
)


@pytest.fixture
def ws(live: LiveServer) -> Iterator[WebSocket]:
    sock = WebSocket(ws_url(live.url, "client-a"))
    yield sock
    sock.close()


def submit(live: LiveServer, prompt: dict, client_id: str = "client-a", **extra) -> str:
    status, body = post_json(
        live.url, "/prompt", {"prompt": prompt, "client_id": client_id, **extra}
    )
    assert status == 200, body
    return body["prompt_id"]


def types(frames: list) -> list[str]:
    return [f["type"] if isinstance(f, dict) else "binary" for f in frames]


def test_a_prompt_runs_and_sends_comfyui_messages(live: LiveServer, ws: WebSocket) -> None:
    first = json.loads(ws.recv())
    assert first == {
        "type": "status",
        "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "client-a"},
    }
    prompt_id = str(uuid.uuid4())
    status, body = post_json(
        live.url,
        "/prompt",
        {"prompt": add(2, 3), "client_id": "client-a", "prompt_id": prompt_id},
    )
    assert status == 200
    assert body == {"prompt_id": prompt_id, "number": body["number"], "node_errors": {}}
    frames = [f for f in ws.messages_until_done(prompt_id) if f["type"] != "status"]
    assert types(frames) == [
        "execution_start",
        "executing",
        "executing",
        "executed",
        "execution_success",
        "executing",
    ]
    assert frames[1]["data"] == {"node": "1", "display_node": "1", "prompt_id": prompt_id}
    assert frames[3]["data"] == {
        "node": "9",
        "display_node": "9",
        "output": {"text": ["5"]},
        "prompt_id": prompt_id,
    }
    history = get_json(live.url, f"/history/{prompt_id}")[prompt_id]
    assert history["outputs"] == {"9": {"text": ["5"]}}
    assert history["status"]["status_str"] == "success"
    assert history["status"]["completed"] is True
    assert [m[0] for m in history["status"]["messages"]] == ["execution_start", "execution_success"]
    number, pid, prompt, extra, outputs = history["prompt"]
    assert (pid, prompt, extra, outputs) == (prompt_id, add(2, 3), {"client_id": "client-a"}, ["9"])

    # the same prompt again: every node comes from the cache
    again = submit(live, add(2, 3))
    frames = [f for f in ws.messages_until_done(again) if f["type"] != "status"]
    assert types(frames) == [
        "execution_start",
        "execution_cached",
        "executed",
        "execution_success",
        "executing",
    ]
    assert frames[1]["data"]["nodes"] == ["1", "9"]  # as ComfyUI: every node the cache holds


def test_every_route_is_also_under_api(live: LiveServer) -> None:
    for path in ("/prompt", "/queue", "/history", "/object_info", "/system_stats", "/models"):
        assert get_json(live.url, path) == get_json(live.url, "/api" + path) or path in (
            "/system_stats",
        )
    assert get_json(live.url, "/api/prompt") == {"exec_info": {"queue_remaining": 0}}
    status, body = post_json(live.url, "/api/prompt", {"prompt": add(1, 1)})
    assert status == 200 and body["prompt_id"]


def test_object_info_system_stats_and_models(live: LiveServer) -> None:
    info = get_json(live.url, "/object_info")
    assert {"IntMath", "ShowValue", "SlowCount"} <= set(info)
    one = get_json(live.url, "/object_info/IntMath")
    assert one == {"IntMath": info["IntMath"]}
    assert one["IntMath"]["input_order"] == {"required": ["a", "b", "op"]}
    assert get_json(live.url, "/object_info/NoSuchNode") == {}
    stats = get_json(live.url, "/system_stats")
    assert stats["system"]["python_version"] and stats["devices"][0]["type"]
    assert "argv" not in stats["system"]  # a token given on the command line must not leak
    assert get_json(live.url, "/models") == []
    assert http(live.url, "GET", "/models/checkpoints")[0] == 404


def test_embeddings_lists_the_models_folders_embeddings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nodes.loading import folders

    monkeypatch.setattr(folders, "_configured", [])  # only this server's folders
    monkeypatch.delenv(folders.ENV_VAR, raising=False)
    models = tmp_path / "models"
    for name in ("embeddings/ink.pt", "embeddings/xl/both.safetensors", "loras/not_one.pt"):
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        (models / name).write_bytes(b"x")
    live = LiveServer(tmp_path / "data", model_dirs=(models,))
    try:
        assert get_json(live.url, "/embeddings") == ["ink", "xl/both"]  # as prompts name them
        assert get_json(live.url, "/api/embeddings") == ["ink", "xl/both"]
    finally:
        live.close()


def test_validation_errors_have_comfyui_shapes(live: LiveServer) -> None:
    bad = {
        "1": {"class_type": "IntMath", "inputs": {"a": 1.5, "b": ["7", 0]}},
        **show(["1", 0]),
    }
    status, body = post_json(live.url, "/prompt", {"prompt": bad})
    assert status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    node = body["node_errors"]["1"]
    assert node["class_type"] == "IntMath" and node["dependent_outputs"] == ["9"]
    kinds = {(e["type"], e["extra_info"]["input_name"]) for e in node["errors"]}
    assert kinds == {("invalid_input_type", "a"), ("bad_linked_input", "b")}

    status, body = post_json(live.url, "/prompt", {"prompt": add(1, 2) | {"9": {}}})
    assert status == 400
    status, body = post_json(live.url, "/prompt", {"prompt": {"1": add(1, 2)["1"]}})
    assert (status, body["error"]["type"]) == (400, "prompt_no_outputs")
    status, body = post_json(live.url, "/prompt", {"client_id": "x"})
    assert (status, body["error"]["type"]) == (400, "no_prompt")
    status, _, raw = http(
        live.url,
        "POST",
        "/prompt",
        data=b'{"prompt": {',
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_prompt"
    cycle = {
        "1": {"class_type": "IntMath", "inputs": {"a": ["2", 0], "b": 1}},
        "2": {"class_type": "IntMath", "inputs": {"a": ["1", 0], "b": 1}},
        **show(["2", 0]),
    }
    status, body = post_json(live.url, "/prompt", {"prompt": cycle})
    assert status == 400 and set(body["node_errors"]) == {"1", "2"}
    assert get_json(live.url, "/queue") == {"queue_running": [], "queue_pending": []}
    assert get_json(live.url, "/history") == {}


def test_duplicate_prompt_id_is_refused(live: LiveServer) -> None:
    assert submit(live, add(1, 1), prompt_id="same") == "same"
    status, body = post_json(live.url, "/prompt", {"prompt": add(1, 2), "prompt_id": "same"})
    assert status == 400 and "already used" in body["error"]["message"]
    for bad in ("a/b", "x" * 300, "new\nline", 7):
        assert post_json(live.url, "/prompt", {"prompt": add(1, 2), "prompt_id": bad})[0] == 400


def test_queue_order_delete_clear_and_history_routes(live: LiveServer, ws: WebSocket) -> None:
    blocker = submit(live, slow(steps=3000, delay=0.01))
    wait_until(lambda: get_json(live.url, "/queue")["queue_running"])
    a = submit(live, add(1, 1))
    b = submit(live, add(1, 2))
    c = submit(live, add(1, 3), front=True)
    queue = get_json(live.url, "/queue")
    assert [item[1] for item in queue["queue_running"]] == [blocker]
    assert [item[1] for item in queue["queue_pending"]] == [c, a, b]
    assert queue["queue_pending"][0][0] < 0  # front: a negative number runs first
    assert get_json(live.url, "/prompt") == {"exec_info": {"queue_remaining": 4}}
    assert post_json(live.url, "/queue", {"delete": [a]})[0] == 200
    assert [i[1] for i in get_json(live.url, "/queue")["queue_pending"]] == [c, b]
    assert post_json(live.url, "/queue", {"clear": True})[0] == 200
    assert get_json(live.url, "/queue")["queue_pending"] == []
    assert post_json(live.url, "/interrupt", {})[0] == 200
    ws.messages_until_done(blocker)
    for n in range(4):
        ws.messages_until_done(submit(live, add(10, n)))
    history = get_json(live.url, "/history")
    assert list(history)[0] == blocker and len(history) == 5
    assert history[blocker]["status"]["status_str"] == "error"
    last_two = get_json(live.url, "/history?max_items=2")
    assert list(last_two) == list(history)[-2:]
    assert list(get_json(live.url, "/history?max_items=2&offset=1")) == list(history)[1:3]
    assert http(live.url, "GET", "/history?max_items=x")[0] == 400
    assert post_json(live.url, "/history", {"delete": [blocker]})[0] == 200
    assert get_json(live.url, f"/history/{blocker}") == {}
    assert len(get_json(live.url, "/history")) == 4
    assert post_json(live.url, "/history", {"clear": True})[0] == 200
    assert get_json(live.url, "/history") == {}


def test_a_failing_node_reports_and_the_worker_goes_on(live: LiveServer, ws: WebSocket) -> None:
    failing = {
        "1": {"class_type": "IntMath", "inputs": {"a": 4, "b": 5}},
        "2": {"class_type": "Boom", "inputs": {"value": ["1", 0]}},
        **show(["2", 0]),
    }
    prompt_id = submit(live, failing)
    frames = [f for f in ws.messages_until_done(prompt_id) if f["type"] != "status"]
    error = next(f["data"] for f in frames if f["type"] == "execution_error")
    assert error["prompt_id"] == prompt_id and error["node_id"] == "2"
    assert error["node_type"] == "Boom" and error["exception_message"] == "boom 9"
    assert error["exception_type"] == "RuntimeError" and error["executed"] == ["1"]
    assert isinstance(error["traceback"], list) and error["timestamp"] > 0
    assert "execution_success" not in types(frames)
    entry = get_json(live.url, f"/history/{prompt_id}")[prompt_id]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_error"

    # the worker goes on, and the cache kept IntMath(4, 5) from the failed run
    nxt = submit(live, {"1": failing["1"], **show(["1", 0])})
    frames = [f for f in ws.messages_until_done(nxt) if f["type"] != "status"]
    assert types(frames)[:2] == ["execution_start", "execution_cached"]
    assert frames[1]["data"]["nodes"] == ["1"]
    assert get_json(live.url, f"/history/{nxt}")[nxt]["outputs"] == {"9": {"text": ["9"]}}


def test_a_node_that_exits_fails_its_job_only(live: LiveServer, ws: WebSocket) -> None:
    prompt_id = submit(live, {"1": {"class_type": "Exits", "inputs": {}}})
    frames = [f for f in ws.messages_until_done(prompt_id) if f["type"] != "status"]
    assert types(frames) == ["execution_start", "executing", "execution_error", "executing"]
    assert frames[2]["data"]["exception_type"] == "SystemExit"
    assert (frames[2]["data"]["node_id"], frames[2]["data"]["node_type"]) == ("1", "Exits")
    ws.messages_until_done(nxt := submit(live, add(2, 2)))
    assert get_json(live.url, f"/history/{nxt}")[nxt]["outputs"] == {"9": {"text": ["4"]}}


def test_interrupt_stops_within_a_step_and_only_the_named_prompt(
    live: LiveServer, ws: WebSocket
) -> None:
    prompt_id = submit(live, slow(steps=2000, delay=0.01))
    follower = submit(live, add(3, 3))
    ws_frames = []
    for _ in range(400):  # wait for the first progress message
        msg = json.loads(ws.recv())
        ws_frames.append(msg)
        if msg["type"] == "progress":
            break
    assert ws_frames[-1]["data"] == {"value": 1, "max": 2000, "prompt_id": prompt_id, "node": "1"}
    # naming another prompt (queued, not running) interrupts nothing
    assert post_json(live.url, "/interrupt", {"prompt_id": follower})[0] == 200
    assert post_json(live.url, "/interrupt", {"prompt_id": prompt_id})[0] == 200
    frames = ws.messages_until_done(prompt_id, timeout=10)
    interrupted = next(f["data"] for f in frames if f["type"] == "execution_interrupted")
    assert interrupted["node_id"] == "1" and interrupted["node_type"] == "SlowCount"
    steps = [f["data"]["value"] for f in frames if f["type"] == "progress"]
    assert max(steps) < 1000  # stopped within a step, not at the end
    entry = get_json(live.url, f"/history/{prompt_id}")[prompt_id]
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    ws.messages_until_done(follower)
    assert get_json(live.url, f"/history/{follower}")[follower]["status"]["status_str"] == "success"


def test_a_client_that_reconnects_learns_the_running_node(live: LiveServer, ws: WebSocket) -> None:
    prompt_id = submit(live, slow(steps=3000, delay=0.01))
    for _ in range(100):
        if json.loads(ws.recv())["type"] == "progress":
            break
    again = WebSocket(ws_url(live.url, "client-a"))
    try:
        assert json.loads(again.recv())["type"] == "status"
        assert json.loads(again.recv()) == {
            "type": "executing",
            "data": {"node": "1", "display_node": "1", "prompt_id": prompt_id},
        }
        post_json(live.url, "/interrupt", {})
        again.messages_until_done(prompt_id)
    finally:
        again.close()


@pytest.mark.parametrize("kind", ["image", "latent"])
def test_previews_come_as_binary_frames_when_asked(
    live: LiveServer, ws: WebSocket, kind: str
) -> None:
    quiet = submit(live, slow(steps=3, delay=0.0, preview=kind))
    assert not [f for f in ws.messages_until_done(quiet) if isinstance(f, bytes)]
    asked = {"preview_method": "default"}  # the server's: none (delays differ: no cache hits)
    quiet = submit(live, slow(steps=3, delay=0.001, preview=kind), extra_data=asked)
    assert not [f for f in ws.messages_until_done(quiet) if isinstance(f, bytes)]
    asked = {"preview_method": "auto"}
    prompt_id = submit(live, slow(steps=3, delay=0.002, preview=kind), extra_data=asked)
    frames = ws.messages_until_done(prompt_id)
    binary = [f for f in frames if isinstance(f, bytes)]
    assert len(binary) == 3
    event, fmt = struct.unpack(">II", binary[0][:8])
    assert (event, fmt) == (1, 1)  # a preview image, JPEG
    picture = Image.open(io.BytesIO(binary[0][8:]))
    assert picture.format == "JPEG" and picture.size == ((16, 16) if kind == "image" else (64, 64))


def test_many_clients_get_only_their_own_events(live: LiveServer) -> None:
    n = 4
    sockets = [WebSocket(ws_url(live.url, f"c{i}")) for i in range(n)]
    try:
        ids = [
            submit(live, slow(steps=3, delay=0.01, tag=f"t{i}"), client_id=f"c{i}")
            for i in range(n)
        ]
        # client 1's failure and interrupt do not touch the others
        failing = submit(live, {"1": {"class_type": "Boom", "inputs": {}}, **show(["1", 0])}, "c1")
        results: dict[int, list] = {}

        def follow(i: int) -> None:
            last = failing if i == 1 else ids[i]
            results[i] = sockets[i].messages_until_done(last)

        threads = [threading.Thread(target=follow, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i in range(n):
            seen = {
                f["data"].get("prompt_id")
                for f in results[i]
                if isinstance(f, dict) and f["type"] != "status"
            }
            expected = {ids[i], failing} if i == 1 else {ids[i]}
            assert seen == expected, (i, seen)
        history = get_json(live.url, "/history")
        assert all(history[p]["status"]["status_str"] == "success" for p in ids)
        assert history[failing]["status"]["status_str"] == "error"
    finally:
        for sock in sockets:
            sock.close()


def test_a_prompt_without_client_id_reaches_every_client(live: LiveServer) -> None:
    sockets = [WebSocket(ws_url(live.url, name)) for name in ("x", "y")]
    try:
        status, body = post_json(live.url, "/prompt", {"prompt": add(4, 5)})
        assert status == 200, body
        for sock in sockets:
            frames = [
                f for f in sock.messages_until_done(body["prompt_id"]) if f["type"] != "status"
            ]
            assert types(frames)[0] == "execution_start"
            executed = [f["data"] for f in frames if f["type"] == "executed"]
            assert executed[0]["output"] == {"text": ["9"]}
    finally:
        for sock in sockets:
            sock.close()


def test_outputs_are_listed_and_viewable(live: LiveServer, ws: WebSocket) -> None:
    prompt = {"1": {"class_type": "WriteOutput", "inputs": {"value": 1}}}
    first, second = (
        submit(live, prompt),
        submit(live, prompt | {"1": {"class_type": "WriteOutput", "inputs": {"value": 2}}}),
    )
    ws.messages_until_done(second)
    names = []
    for pid in (first, second):
        images = get_json(live.url, f"/history/{pid}")[pid]["outputs"]["1"]["images"]
        for image in images:
            status, headers, body = http(
                live.url,
                "GET",
                f"/view?filename={image['filename']}&subfolder={image['subfolder']}&type=output",
            )
            assert status == 200 and headers["Content-Type"] == "image/png"
            assert body.startswith(b"\x89PNG")
            names.append(image["filename"])
    assert len(set(names)) == 2  # names do not collide


def test_a_body_that_arrives_in_pieces_is_read_whole(live: LiveServer) -> None:
    import socket
    import time

    body = json.dumps({"prompt": add(2, 3), "client_id": "pieces", "pad": "x" * 30_000}).encode()
    head = (
        f"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as conn:
        conn.sendall(head + body[:10_000])
        time.sleep(0.2)  # the rest comes later, as from a slow network
        conn.sendall(body[10_000:])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 200 " in status_line, answer[:300]
    assert "prompt_id" in json.loads(rest.partition(b"\r\n\r\n")[2])


def test_workflow_convert_refuses_what_is_no_workflow(live: LiveServer) -> None:
    status, body = post_json(live.url, "/workflow/convert", {"workflow": [1, 2], "to": "api"})
    assert status == 400 and body["error"]["type"] == "invalid_workflow"
    status, body = post_json(live.url, "/workflow/convert", {"workflow": add(1, 2), "to": "ui"})
    assert status == 200 and [n["type"] for n in body["workflow"]["nodes"]] == [
        "IntMath",
        "ShowValue",
    ]
    status, body = post_json(live.url, "/workflow/convert", {"workflow": body["workflow"],
                                                             "to": "api"})  # fmt: skip
    assert status == 200 and body["workflow"]["1"]["inputs"] == {"a": 1, "b": 2, "op": "add"}
