"""The cluster: throughput of a mixed queue with 1, 2 and 4 CPU workers, how often jobs were
routed to where their upstream was, model loads avoided; and the router's cost per job as a
simulated cluster grows to 16 (and 64) workers.

    .venv/bin/python bench/cluster.py                 # both parts
    .venv/bin/python bench/cluster.py --workers 1 2   # the real part, chosen sizes
    .venv/bin/python bench/cluster.py --simulate-only

The real part starts `python -m server --ray local --workers N` on a free loopback port (the
shipped model, CPU workers, one torch thread each) and queues, at once: 3 users' txt2img jobs, 2
strength sweeps (4 values each, POST /sweep on a txt2img -> img2img workflow) and 3 img2img jobs
on uploaded pictures (POST /upload/image). On a CPU machine the workers share its cores, so
throughput grows only up to the core count; on GPUs each worker has its own device and the same
routing applies. The simulated part runs the real Router against workers that "sleep" on a
virtual clock (no Ray, no sampling) and times Router.assign per job.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from server.cluster.router import Needs, Router  # noqa: E402

TXT2IMG = json.loads((REPO / "workflows" / "comfy_txt2img.json").read_text())
CHAIN = json.loads((REPO / "workflows" / "comfy_txt2img_img2img.json").read_text())
IMG2IMG = json.loads((REPO / "workflows" / "comfy_img2img.json").read_text())
PICTURES = sorted((REPO / "workflows" / "images").glob("*.png"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    request = urllib.request.Request(base + path, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


async def _upload(base: str, path: Path) -> str:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("image", path.read_bytes(), filename=path.name, content_type="image/png")
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + "/upload/image", data=form) as answer,
    ):
        return (await answer.json())["name"]


def start(workers: int, data: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    command = [sys.executable, "-m", "server", "--port", str(port), "--data", str(data),
               "--ray", "local", "--workers", str(workers), "--worker-gpus", "0",
               "--threads", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            return proc, f"http://127.0.0.1:{port}"
    raise SystemExit("the server did not start")


def mixed_queue(base: str) -> list[str]:
    """Queue the mix at once; the prompt ids."""
    ids: list[str] = []
    for user in range(3):
        workflow = copy.deepcopy(TXT2IMG)
        for node in workflow.values():
            if node["class_type"] == "KSampler":
                node["inputs"]["seed"] = 1000 + user
        ids.append(call(base, "/prompt", {"prompt": workflow, "client_id": f"user{user}"})[
            "prompt_id"])  # fmt: skip
    for sweep in range(2):
        workflow = copy.deepcopy(CHAIN)
        workflow["3"]["inputs"]["seed"] = 2000 + sweep
        body = {"prompt": workflow, "client_id": f"sweeper{sweep}",
                "sweep": [{"node": "12", "input": "denoise", "values": [0.3, 0.45, 0.6, 0.75]}]}
        ids += call(base, "/sweep", body)["prompt_ids"]
    for index, picture in enumerate(PICTURES[:3]):
        name = asyncio.run(_upload(base, picture))
        workflow = copy.deepcopy(IMG2IMG)
        workflow["10"]["inputs"]["image"] = name
        workflow["3"]["inputs"]["seed"] = 3000 + index
        ids.append(call(base, "/prompt", {"prompt": workflow, "client_id": "uploader"})[
            "prompt_id"])  # fmt: skip
    return ids


def real(workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        proc, base = start(workers, Path(folder))
        try:
            started = time.perf_counter()
            ids = mixed_queue(base)
            while True:
                history = call(base, "/history")
                if all(p in history for p in ids):
                    break
                time.sleep(0.2)
            seconds = time.perf_counter() - started
            cluster = call(base, "/cluster")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    routes = [r for r in cluster["routes"] if r["prompt_id"] in ids]
    upstream_somewhere = [r for r in routes if r["held_anywhere"] > 0]
    where_it_was = [r for r in upstream_somewhere if r["affinity"] == r["held_anywhere"]]
    loads = sum(len(w["models"]) for w in cluster["workers"])
    failed = [p for p in ids if history[p]["status"]["status_str"] != "success"]
    return {
        "workers": workers, "jobs": len(ids), "seconds": seconds, "failed": len(failed),
        "jobs_per_min": 60 * len(ids) / seconds,
        "upstream_somewhere": len(upstream_somewhere), "routed_to_it": len(where_it_was),
        "spread": sum(r["reason"] == "spread" for r in routes),
        "model_loads": loads, "loads_avoided": len(ids) - loads,
    }  # fmt: skip


def simulate(workers: int, jobs: int = 4000, seed: int = 0) -> dict[str, float]:
    """The real Router, workers that sleep on a virtual clock: a job takes 1 (its own cone)
    plus 2 per upstream node not held where it runs. Times Router.assign per placed job."""
    rng = random.Random(seed)
    router = Router([f"w{i}" for i in range(workers)])
    queue: list[tuple[str, Needs]] = []
    for j in range(jobs):
        if rng.random() < 0.6:  # a sweep value over one of 40 shared txt2img parts
            base = rng.randrange(40)
            keys = {f"t{base}-{n}" for n in range(7)} | {f"j{j}-a", f"j{j}-b"}
        else:
            keys = {f"j{j}-{n}" for n in range(9)}
        queue.append((f"p{j}", Needs(frozenset(keys), frozenset({"model"}))))
    running: dict[str, tuple[float, str, Needs]] = {}
    clock = spent = 0.0
    placed_count = held = 0
    while queue or running:
        started = time.perf_counter()
        placed = router.assign(queue[:64])
        spent += time.perf_counter() - started
        placed_count += len(placed)
        taken = {a.prompt_id for a in placed}
        for a in placed:
            needs = dict(queue)[a.prompt_id] if len(queue) < 64 else next(
                n for p, n in queue[:64] if p == a.prompt_id)  # fmt: skip
            held += a.affinity == a.held_anywhere
            missing = len(needs.keys - router.workers[a.worker].held)
            running[a.prompt_id] = (clock + 1 + 2 * missing / 7, a.worker, needs)
        queue = [q for q in queue if q[0] not in taken]
        if not running:
            break
        prompt_id, (end, worker, needs) = min(running.items(), key=lambda kv: kv[1][0])
        clock = end
        del running[prompt_id]
        state = router.workers[worker]
        router.report(worker, state.held | needs.keys, ["model"])
        router.finished(worker, prompt_id)
    return {"workers": workers, "jobs": placed_count, "us_per_job": 1e6 * spent / placed_count,
            "virtual_time": clock, "where_upstream_was": held / placed_count}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--simulate-only", action="store_true")
    args = parser.parse_args()
    if not args.simulate_only:
        print("mixed queue on the shipped model (CPU workers on this machine's cores):")
        baseline = None
        for n in args.workers:
            r = real(n)
            baseline = baseline or r["jobs_per_min"]
            print(f"  {n} worker(s): {r['jobs']} jobs in {r['seconds']:.1f} s = "
                  f"{r['jobs_per_min']:.1f} jobs/min (x{r['jobs_per_min'] / baseline:.2f}), "
                  f"{r['failed']} failed; routed to where their upstream was: "
                  f"{r['routed_to_it']}/{r['upstream_somewhere']} ({r['spread']} spread "
                  f"to idle workers); model loads {r['model_loads']} "
                  f"(avoided {r['loads_avoided']} of {r['jobs']})")  # fmt: skip
    print("simulated cluster (real router, sleeping workers, 4000 jobs):")
    for n in (1, 4, 16, 64):
        s = simulate(n)
        print(f"  {n:2d} workers: router {s['us_per_job']:.0f} us per job, "
              f"{100 * s['where_upstream_was']:.0f}% placed where the most of their upstream "
              f"was, virtual makespan {s['virtual_time']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
