"""How long GET /history takes with a full history (ComfyUI clients poll it).

    .venv/bin/python bench/server_history.py                  # 5,000 entries
    .venv/bin/python bench/server_history.py --entries 10000 --repeat 20

Fills a fresh data folder with finished jobs through the store (each one ComfyUI's default
text-to-image graph with its SaveImage output, as a real run records it), starts
`python -m server` on it (the store keeps 10,000 entries by default; more are kept until the
next job ends), then times `/history` (everything), `/history?max_items=64` (what
ComfyUI's web page asks for) and `/history/{prompt_id}` over HTTP, each answer read whole.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.server_load import Server, free_port, shipped_workflow  # noqa: E402
from server.store import SUCCESS, Outcome, Store  # noqa: E402


def record(prompt_id: str, n: int) -> Outcome:
    """What a finished SaveImage run leaves in the history."""
    now = int(time.time() * 1000)
    image = {"filename": f"ComfyUI_{n:05d}_.png", "subfolder": "", "type": "output"}
    messages = [
        ["execution_start", {"prompt_id": prompt_id, "timestamp": now}],
        ["execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": now}],
        ["execution_success", {"prompt_id": prompt_id, "timestamp": now + 900}],
    ]
    meta = {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}
    return Outcome(SUCCESS, {"9": {"images": [image]}}, messages, {"9": meta})


def fill(db: Path, entries: int) -> list[str]:
    """`entries` finished jobs in the store at `db`; their prompt ids, oldest first."""
    store = Store(db, max_history=entries)
    ids = []
    try:
        for n in range(entries):
            prompt_id = f"bench-{n:06d}"
            store.add(
                prompt_id,
                shipped_workflow(0, n, 20),
                client_id="bench",
                extra_data={"client_id": "bench"},
                outputs=["9"],
            )
            job = store.claim_next()
            assert job is not None and job.prompt_id == prompt_id
            store.finish(prompt_id, record(prompt_id, n))
            ids.append(prompt_id)
    finally:
        store.close()
    return ids


def timed_get(url: str) -> tuple[float, int, Any]:
    """(seconds, bytes, decoded JSON) of one GET, the body read whole."""
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        body = resp.read()
    seconds = time.perf_counter() - start
    return seconds, len(body), json.loads(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=5000, help="finished jobs in the history")
    parser.add_argument("--repeat", type=int, default=10, help="requests per route")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nodegraph-history-") as data:
        started = time.perf_counter()
        ids = fill(Path(data) / "queue.sqlite3", args.entries)
        print(f"filled {len(ids)} entries in {time.perf_counter() - started:.1f} s")
        server = Server(data, free_port(), prompts=1, shipped=False)
        server.start()
        try:
            routes = {
                "/history": len(ids),
                "/history?max_items=64": min(64, len(ids)),
                f"/history/{ids[len(ids) // 2]}": 1,
            }
            failed = False
            for route, expected in routes.items():
                times, size = [], 0
                for _ in range(args.repeat):
                    seconds, size, answer = timed_get(server.url + route)
                    times.append(seconds)
                    failed |= len(answer) != expected
                print(
                    f"GET {route}: {len(answer)} entries, {size / 1e6:.2f} MB, "
                    f"first {times[0] * 1000:.1f} ms, median {statistics.median(times) * 1000:.1f}"
                    f" ms, max {max(times) * 1000:.1f} ms"
                )
            return 1 if failed else 0
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
