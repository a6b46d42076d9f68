"""Load on the server: N clients at once, each queueing prompts and following its websocket.

    .venv/bin/python bench/server_load.py --clients 32 --prompts 10

Starts `python -m server` on a free loopback port with a fresh data folder (or uses --url),
then prints submit latency p50/p99, completed jobs, lost jobs (the goal is none: every
accepted prompt must end in the history exactly once) and the server's memory. Each prompt is
a chain of IntMath nodes with values unique to it, so no run is served from the cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent


def workflow(client: int, n: int, chain: int) -> dict[str, Any]:
    nodes: dict[str, Any] = {
        "0": {"class_type": "PrimitiveInt", "inputs": {"value": client * 1_000_000 + n}}
    }
    for i in range(1, chain + 1):
        nodes[str(i)] = {"class_type": "IntMath", "inputs": {"a": [str(i - 1), 0], "b": i}}
    nodes["out"] = {"class_type": "ShowValue", "inputs": {"value": [str(chain), 0]}}
    return nodes


async def one_client(
    session: aiohttp.ClientSession, url: str, client: int, args: argparse.Namespace
) -> dict[str, Any]:
    client_id = f"bench-{client}"
    ws_url = url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
    latencies, submitted, refused = [], [], 0
    ends: set[str] = set()
    async with session.ws_connect(ws_url) as ws:
        for n in range(args.prompts):
            body = {"prompt": workflow(client, n, args.chain), "client_id": client_id}
            start = time.perf_counter()
            async with session.post(url + "/prompt", json=body) as resp:
                answer = await resp.json()
            latencies.append(time.perf_counter() - start)
            if resp.status == 200:
                submitted.append(answer["prompt_id"])
            else:
                refused += 1
        deadline = time.monotonic() + args.timeout
        while set(submitted) - ends and time.monotonic() < deadline:
            msg = await ws.receive(timeout=max(deadline - time.monotonic(), 0.1))
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data["type"] == "executing" and data["data"]["node"] is None:
                    ends.add(data["data"]["prompt_id"])
            elif msg.type != aiohttp.WSMsgType.BINARY:
                break
    return {"latencies": latencies, "submitted": submitted, "ends": ends, "refused": refused}


def memory(pid: int | None) -> str:
    if pid is None:
        return "n/a (server not started here)"
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return f"rss {fields.get('VmRSS')}, peak {fields.get('VmHWM')}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000


async def main_async(args: argparse.Namespace, url: str, pid: int | None) -> int:
    timeout = aiohttp.ClientTimeout(total=args.timeout + 60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(one_client(session, url, c, args) for c in range(args.clients))
        )
        wall = time.perf_counter() - started
        async with session.get(url + "/history") as resp:
            history = await resp.json()
    latencies = [x for r in results for x in r["latencies"]]
    submitted = [p for r in results for p in r["submitted"]]
    finished = [p for p in submitted if p in history]
    completed = [p for p in finished if history[p]["status"]["status_str"] == "success"]
    ended_on_ws = sum(len(r["ends"]) for r in results)
    lost = len(submitted) - len(finished)
    print(f"clients {args.clients} x prompts {args.prompts} (IntMath chain of {args.chain})")
    print(
        f"submit latency p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms, mean {statistics.mean(latencies) * 1000:.1f} ms"
    )
    print(
        f"accepted {len(submitted)}, refused {sum(r['refused'] for r in results)}, completed "
        f"{len(completed)}, failed {len(finished) - len(completed)}, lost {lost}, "
        f"end messages seen {ended_on_ws}"
    )
    print(f"wall {wall:.2f} s, {len(finished) / wall:.1f} jobs/s")
    print(f"server memory: {memory(pid)}")
    return 1 if lost else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=10, help="prompts per client")
    parser.add_argument("--chain", type=int, default=20, help="IntMath nodes per prompt")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all")
    parser.add_argument("--url", default=None, help="a running server (default: start one)")
    args = parser.parse_args()
    if args.url:
        return asyncio.run(main_async(args, args.url.rstrip("/"), None))
    with tempfile.TemporaryDirectory(prefix="nodegraph-bench-") as data:
        cmd = [
            sys.executable, "-m", "server", "--port", "0", "--data", data,
            "--no-default-nodes", "--node-package", "nodes.utility",
            "--max-queue-per-client", str(max(args.prompts, 1)),
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "listening on" not in line:
                print(f"the server did not start: {line}", file=sys.stderr)
                return 2
            url = line.split("listening on ", 1)[1].strip()
            return asyncio.run(main_async(args, url, proc.pid))
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
