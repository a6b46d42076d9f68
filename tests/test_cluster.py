"""The server on a real local Ray cluster (two logical GPUs on this CPU machine, two worker
actors, the shipped model): spreading, cache-affinity routing of a strength sweep, the same
websocket messages as one machine, a worker killed mid-job, interrupts, a server killed with the
cluster running."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .server_fixtures import (
    REPO,
    LiveServer,
    WebSocket,
    free_port,
    get_json,
    post_json,
    slow,
    start_subprocess,
    wait_until,
    ws_url,
)

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

WORKFLOW = json.loads((REPO / "workflows" / "comfy_txt2img_img2img.json").read_text())
TXT2IMG_NODES = {"3", "4", "5", "6", "7", "8", "9"}
CLUSTER = ["--ray", "local", "--workers", "2", "--ray-gpus", "2", "--threads", "1"]


def cluster_server(data: Path, port: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "server", "--node-package", "tests.server_fixtures"]
    return start_subprocess(data, port, *CLUSTER, command=command)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("cluster")
    port = free_port()
    proc = cluster_server(data, port)
    try:
        yield f"http://127.0.0.1:{port}", data
    finally:
        stop(proc)


def queue(base: str, prompt: dict, client_id: str | None = None) -> str:
    body: dict[str, Any] = {"prompt": prompt}
    if client_id:
        body["client_id"] = client_id
    status, answer = post_json(base, "/prompt", body)
    assert status == 200, answer
    return answer["prompt_id"]


def finished(base: str, prompt_ids: list[str], timeout: float = 120) -> dict[str, Any]:
    def done() -> dict | None:
        history = get_json(base, "/history")
        return history if all(p in history for p in prompt_ids) else None

    return wait_until(done, timeout, 0.2)


def cached_nodes(entry: dict) -> set[str]:
    return {n for kind, data in entry["status"]["messages"] if kind == "execution_cached"
            for n in data["nodes"]}  # fmt: skip


def with_seed(seed: int, prefix: str = "cluster") -> dict:
    workflow = copy.deepcopy(WORKFLOW)
    workflow["3"]["inputs"]["seed"] = seed
    workflow["9"]["inputs"]["filename_prefix"] = f"{prefix}_txt2img"
    workflow["14"]["inputs"]["filename_prefix"] = f"{prefix}_refined"
    return workflow


def test_the_cluster_reports_its_workers(cluster: tuple[str, Path]) -> None:
    base, _ = cluster
    workers = get_json(base, "/cluster")["workers"]
    assert [w["id"] for w in workers] == ["w0", "w1"]
    assert all(w["alive"] and w["device"] == "cpu" for w in workers)
    assert len({w["pid"] for w in workers}) == 2
    assert sorted(w["cuda_visible_devices"] for w in workers) == ["0", "1"]  # one GPU each
    expected = {"id", "pid", "alive", "device", "cuda_visible_devices", "models", "jobs_done",
                "cache_entries", "busy"}  # fmt: skip
    assert expected <= set(workers[0])


def test_jobs_spread_over_both_workers(cluster: tuple[str, Path]) -> None:
    base, _ = cluster
    ids = [queue(base, slow(steps=20, delay=0.05, tag=uuid.uuid4().hex)) for _ in range(2)]
    history = finished(base, ids)
    assert {history[p]["worker"] for p in ids} == {"w0", "w1"}


def test_a_strength_sweep_runs_where_its_txt2img_is_cached(cluster: tuple[str, Path]) -> None:
    base, data = cluster
    workflow = with_seed(101, "affinity")
    first = queue(base, workflow)
    holder = finished(base, [first])[first]["worker"]
    status, answer = post_json(base, "/sweep", {"prompt": workflow, "sweep": [
        {"node": "12", "input": "denoise", "values": [0.3, 0.6]}]})  # fmt: skip
    assert status == 200, answer
    history = finished(base, answer["prompt_ids"])
    routes = {r["prompt_id"]: r for r in get_json(base, "/cluster")["routes"]}
    for prompt_id in answer["prompt_ids"]:
        entry = history[prompt_id]
        assert entry["worker"] == holder
        assert routes[prompt_id]["reason"] == "affinity"
        assert cached_nodes(entry) >= TXT2IMG_NODES  # only the img2img cone ran there
        assert "12" not in cached_nodes(entry)
        for output in entry["outputs"].values():  # the pictures landed in the server's folder
            for image in output["images"]:
                assert (data / "output" / image["subfolder"] / image["filename"]).is_file()
    refined = [history[p]["outputs"]["14"]["images"][0]["filename"] for p in answer["prompt_ids"]]
    assert refined == ["affinity_refined_00002_.png", "affinity_refined_00003_.png"]


def test_an_uploaded_picture_reaches_the_worker_that_runs_its_img2img(
    cluster: tuple[str, Path],
) -> None:
    """The workers share no folder with the server: the input picture travels with the job."""
    base, data = cluster
    workflow = json.loads((REPO / "workflows" / "comfy_img2img.json").read_text())
    picture = REPO / "workflows" / "images" / "white_triangle_on_green.png"
    (data / "input" / "sent_along.png").write_bytes(picture.read_bytes())
    workflow["10"]["inputs"]["image"] = "sent_along.png"
    workflow["9"]["inputs"]["filename_prefix"] = "sent_along"
    prompt_id = queue(base, workflow)
    entry = finished(base, [prompt_id])[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    (image,) = entry["outputs"]["9"]["images"]
    assert (data / "output" / image["filename"]).stat().st_size > 0


def frames_of(base: str, workflow: dict) -> list[Any]:
    client = uuid.uuid4().hex
    ws = WebSocket(ws_url(base, client))
    try:
        ws.recv()  # the status greeting
        prompt_id = queue(base, workflow, client)
        return ws.messages_until_done(prompt_id, timeout=120)
    finally:
        ws.close()


def shape(frames: list[Any]) -> list[tuple[Any, ...]]:
    """Each message's type, node and data keys (times and ids differ between two runs)."""
    out = []
    for frame in frames:
        if isinstance(frame, bytes):
            out.append(("binary",))
            continue
        data = frame["data"]
        if frame["type"] == "status":
            continue
        node = data.get("node") if isinstance(data, dict) else None
        output = data.get("output") if isinstance(data, dict) else None
        out.append((frame["type"], node, tuple(sorted(data)), json.dumps(output, sort_keys=True),
                    tuple(data.get("nodes", ()))))  # fmt: skip
    return out


def test_websocket_messages_are_those_of_one_machine(
    cluster: tuple[str, Path], tmp_path: Path
) -> None:
    """A warm-up job, then the job compared: on the cluster it runs where the warm-up's
    loaders and prompts are cached, as on one machine."""
    base, _ = cluster
    warm_up, workflow = with_seed(303, "warm"), with_seed(404, "same")
    frames_of(base, warm_up)
    on_cluster = frames_of(base, workflow)
    from nodegraph.registry import default_registry

    live = LiveServer(tmp_path, default_registry(), threads=1)
    try:
        frames_of(live.url, warm_up)
        on_one = frames_of(live.url, workflow)
    finally:
        live.close()
    assert shape(on_cluster) == shape(on_one)
    kinds = [f[0] for f in shape(on_one)]
    assert "execution_cached" in kinds and kinds.count("executed") == 2


def test_a_worker_killed_mid_job_has_its_job_retried_on_the_other(
    cluster: tuple[str, Path],
) -> None:
    base, _ = cluster
    prompt_id = queue(base, slow(steps=80, delay=0.05, tag=uuid.uuid4().hex))

    def running_on() -> dict | None:
        for worker in get_json(base, "/cluster")["workers"]:
            if worker["busy"] and prompt_id in worker["jobs"]:
                return worker
        return None

    victim = wait_until(running_on, 60, 0.1)
    time.sleep(0.5)  # mid-job
    os.kill(victim["pid"], signal.SIGKILL)
    entry = finished(base, [prompt_id])[prompt_id]
    assert entry["status"]["status_str"] == "success"
    assert entry["worker"] != victim["id"]

    def back() -> bool:
        workers = {w["id"]: w for w in get_json(base, "/cluster")["workers"]}
        again = workers[victim["id"]]
        return again["alive"] and again["pid"] != victim["pid"]

    wait_until(back, 60, 0.5)  # Ray restarted it, cold


def test_interrupt_reaches_the_worker_within_a_step(cluster: tuple[str, Path]) -> None:
    base, _ = cluster
    client = uuid.uuid4().hex
    ws = WebSocket(ws_url(base, client))
    try:
        prompt_id = queue(base, slow(steps=400, delay=0.05, tag=uuid.uuid4().hex), client)
        while True:
            raw = ws.recv(60)
            if isinstance(raw, str) and json.loads(raw)["type"] == "progress":
                break
        asked = time.monotonic()
        assert post_json(base, "/interrupt", {"prompt_id": prompt_id})[0] == 200
        frames = ws.messages_until_done(prompt_id, 30)
        took = time.monotonic() - asked
    finally:
        ws.close()
    kinds = [f["type"] for f in frames if isinstance(f, dict)]
    assert "execution_interrupted" in kinds
    steps_after = kinds.count("progress")
    assert steps_after <= 5 and took < 2.0, (steps_after, took)  # a step is 0.05 s


def test_free_memory_empties_every_workers_cache_and_drops_its_models(
    cluster: tuple[str, Path],
) -> None:
    base, _ = cluster
    finished(base, [queue(base, slow(steps=1, delay=0.0, tag=uuid.uuid4().hex))])
    assert any(w["cache_entries"] for w in get_json(base, "/cluster")["workers"])
    assert post_json(base, "/free", {"free_memory": True})[0] == 200

    def emptied() -> bool:
        workers = get_json(base, "/cluster")["workers"]
        return all(w["cache_entries"] == 0 and not w["models"] for w in workers)

    wait_until(emptied, 60, 0.2)


def test_a_server_killed_with_its_cluster_running_loses_no_job(tmp_path: Path) -> None:
    port = free_port()
    proc = cluster_server(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        ids = [queue(base, slow(steps=30, delay=0.05, tag=uuid.uuid4().hex)) for _ in range(4)]
        wait_until(lambda: get_json(base, "/queue")["queue_running"], 60, 0.1)
        proc.kill()
        proc.wait(30)
        proc = cluster_server(tmp_path, port)
        history = finished(base, ids)
        assert all(history[p]["status"]["status_str"] == "success" for p in ids)
    finally:
        stop(proc)


def test_joining_a_cluster_started_with_ray_start_needs_its_token(tmp_path: Path) -> None:
    """`ray start --head` (token authentication on), then `serve --ray ADDRESS`: with the
    token the server joins and runs a job there; with a wrong token it stops with one line."""
    ray_port, home = free_port(), tmp_path / "home"
    home.mkdir()
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}
    env = {**os.environ, **token, "HOME": str(home)}
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
         "--port", str(ray_port), "--num-gpus", "1", "--include-dashboard=false",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        address = wait_until(lambda: _head_address(env, ray_port), 60, 0.5)
        wrong = {**env, "RAY_AUTH_TOKEN": "not-the-token", "HOME": str(tmp_path)}
        refused = subprocess.run(
            [sys.executable, "-m", "server", "--data", str(tmp_path / "refused"), "--port",
             str(free_port()), "--ray", address],
            env={**wrong, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert refused.returncode == 2
        assert "cannot join the Ray cluster" in refused.stderr.splitlines()[-1]
        port = free_port()
        proc = cluster_server_at(tmp_path / "joined", port, address, token)
        base = f"http://127.0.0.1:{port}"
        try:
            prompt_id = queue(base, slow(steps=3, delay=0.01, tag=uuid.uuid4().hex))
            assert finished(base, [prompt_id])[prompt_id]["worker"] == "w0"
            assert get_json(base, "/cluster")["workers"][0]["cuda_visible_devices"] == "0"
        finally:
            stop(proc)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(60)


def _head_address(env: dict[str, str], port: int) -> str | None:
    """The head's address as `ray start` printed it to its nodes (its own IP and port)."""
    status = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "status", "--address", f"127.0.0.1:{port}"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return f"127.0.0.1:{port}" if status.returncode == 0 else None


def cluster_server_at(
    data: Path, port: int, address: str, env: dict[str, str]
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "server", "--node-package", "tests.server_fixtures"]
    return start_subprocess(
        data, port, "--ray", address, "--workers", "1", command=command, env=env
    )
