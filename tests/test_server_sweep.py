"""POST /sweep: one request, one prompt per value (or X/Y pair), run in order with the shared
part cached, tagged in the history, listed by GET /sweep/{id}; bad sweeps queue nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server_fixtures import (
    LiveServer,
    WebSocket,
    get_json,
    http,
    post_json,
    show,
    wait_until,
    ws_url,
)


def chain(a: int = 2, b: int = 3) -> dict[str, Any]:
    """IntMath(a, b) -> IntMath(+ 10) -> ShowValue: a sweep of node 2's b leaves node 1 alone."""
    return {
        "1": {"class_type": "IntMath", "inputs": {"a": a, "b": b}},
        "2": {"class_type": "IntMath", "inputs": {"a": ["1", 0], "b": 10}},
        **show(["2", 0]),
    }


def results(live: LiveServer, ids: list[str]) -> list[dict[str, Any]]:
    return [get_json(live.url, f"/history/{pid}")[pid] for pid in ids]


def test_a_sweep_queues_one_prompt_per_value_and_reruns_only_the_cone(live: LiveServer) -> None:
    ws = WebSocket(ws_url(live.url, "sweeper"))
    try:
        sweep = [{"node": "2", "input": "b", "values": [10, 20, 30]}]
        status, body = post_json(live.url, "/sweep", {"prompt": chain(), "sweep": sweep,
                                                       "client_id": "sweeper"})  # fmt: skip
        assert status == 200, body
        assert body["values"] == [[10], [20], [30]] and len(body["prompt_ids"]) == 3
        frames = [ws.messages_until_done(pid) for pid in body["prompt_ids"]]
    finally:
        ws.close()
    history = results(live, body["prompt_ids"])
    assert [h["outputs"]["9"]["text"] for h in history] == [["15"], ["25"], ["35"]]
    cached = [[f["data"]["nodes"] for f in run if f["type"] == "execution_cached"]
              for run in frames]  # fmt: skip
    assert cached[0] in ([], [[]]) and cached[1] == [["1"]] and cached[2] == [["1"]]
    tags = [h["prompt"][3]["sweep"] for h in history]
    assert [t["index"] for t in tags] == [0, 1, 2] and {t["id"] for t in tags} == {body["sweep_id"]}
    listed = get_json(live.url, f"/sweep/{body['sweep_id']}")
    assert [r["prompt_id"] for r in listed["runs"]] == body["prompt_ids"]
    assert [r["status"] for r in listed["runs"]] == ["success"] * 3
    assert listed["axes"] == [{"node": "2", "input": "b", "values": [10, 20, 30]}]


def test_two_axes_make_a_grid_and_from_to_count_spreads_values(live: LiveServer) -> None:
    sweep = [{"node": "1", "input": "a", "from": 0, "to": 4, "count": 3},
             {"node": "2", "input": "b", "values": [1, 2]}]  # fmt: skip
    status, body = post_json(live.url, "/sweep", {"prompt": chain(), "sweep": sweep})
    assert status == 200, body
    assert body["values"] == [[0, 1], [0, 2], [2, 1], [2, 2], [4, 1], [4, 2]]  # rows: a
    wanted = [a + 3 + b for a, b in body["values"]]
    for pid, want in zip(body["prompt_ids"], wanted, strict=True):
        wait_until(lambda pid=pid: pid in get_json(live.url, f"/history/{pid}"))
        assert get_json(live.url, f"/history/{pid}")[pid]["outputs"]["9"]["text"] == [str(want)]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ([{"node": "7", "input": "b", "values": [1]}], "no node '7'"),
        ([{"node": "2", "input": "b", "values": []}], "non-empty list"),
        ([{"node": "2", "input": "b", "from": 0, "to": 1, "count": 65}], "limit is 64"),
        ([{"node": "2", "input": "b", "values": [1, "x"]}], "sweep run 1 (values ['x'])"),
        ([], "1 to 2 axes"),
    ],
)
def test_a_bad_sweep_is_refused_whole(live: LiveServer, sweep: Any, message: str) -> None:
    status, body = post_json(live.url, "/sweep", {"prompt": chain(), "sweep": sweep})
    assert status == 400 and message in body["error"]["message"], body
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    assert get_json(live.url, "/queue") == {"queue_running": [], "queue_pending": []}
    assert http(live.url, "GET", "/sweep/nope")[0] == 404
