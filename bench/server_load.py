"""Load on the server: N clients at once, each queueing prompts and following its websocket.

    .venv/bin/python bench/server_load.py --clients 32 --prompts 10
    .venv/bin/python bench/server_load.py --crash-after 1.0    # kill -9 and restart midway
    .venv/bin/python bench/server_load.py --shipped --clients 4 --prompts 3  # real diffusion

Starts `python -m server` on a free loopback port with a fresh data folder (or uses --url),
then prints submit latency p50/p99, completed jobs, lost jobs (the goal is none: every
accepted prompt must end in the history exactly once) and the server's memory. Each prompt is
a chain of IntMath nodes with values unique to it, so no run is served from the cache.

With --crash-after the server is killed (SIGKILL) that many seconds in and started again on
the same data; clients retry a submission whose answer was lost under the same prompt_id (a
second answer "already used" means the first was stored), and reconnect their websockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nodes.loading.checkpoints import shipped_size  # noqa: E402

RETRIES = 100
"""Attempts per request while the server is down (0.1 s apart)."""


def shipped_workflow(client: int, n: int, steps: int) -> dict[str, Any]:
    """ComfyUI's default text-to-image graph on the shipped model, a seed of its own."""
    size = shipped_size()
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "nodegraph-shapes"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a red circle"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": client * 1_000_000 + n,
                "steps": steps,
                "cfg": 7.0,
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
    }


def workflow(client: int, n: int, chain: int) -> dict[str, Any]:
    nodes: dict[str, Any] = {
        "0": {"class_type": "PrimitiveInt", "inputs": {"value": client * 1_000_000 + n}}
    }
    for i in range(1, chain + 1):
        nodes[str(i)] = {"class_type": "IntMath", "inputs": {"a": [str(i - 1), 0], "b": i}}
    nodes["out"] = {"class_type": "ShowValue", "inputs": {"value": [str(chain), 0]}}
    return nodes


class Server:
    """`python -m server` with the utility nodes, on a fixed port and data folder."""

    def __init__(self, data: str, port: int, prompts: int, shipped: bool) -> None:
        self.data, self.port, self.prompts, self.shipped = data, port, prompts, shipped
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None
        self.peak_kb = 0

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "server", "--port", str(self.port), "--data", self.data,
            "--max-queue-per-client", str(max(self.prompts, 1)),
        ]  # fmt: skip
        if self.shipped:
            cmd += ["--threads", "1"]
        else:
            cmd += ["--no-default-nodes", "--node-package", "nodes.utility"]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the server did not start: {line!r}")

    def memory(self) -> dict[str, int]:
        fields = {}
        if self.proc is not None:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0])
        return fields

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.peak_kb = max(self.peak_kb, self.memory().get("VmHWM", 0))
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def submit(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[str, float, int]:
    """'accepted' or 'refused', the latency of the attempt that answered, and the attempts."""
    for attempt in range(1, RETRIES + 1):
        start = time.perf_counter()
        try:
            async with session.post(url + "/prompt", json=body) as resp:
                answer = await resp.json()
        except (TimeoutError, aiohttp.ClientError):
            await asyncio.sleep(0.1)  # the server is down: the same prompt_id again
            continue
        latency = time.perf_counter() - start
        if resp.status == 200:
            return "accepted", latency, attempt
        if "already used" in json.dumps(answer):  # stored before the crash ate the answer
            return "accepted", latency, attempt
        return "refused", latency, attempt
    return "unanswered", 0.0, RETRIES


async def one_client(
    session: aiohttp.ClientSession, url: str, client: int, args: argparse.Namespace
) -> dict[str, Any]:
    client_id = f"bench-{client}"
    ws_url = url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
    latencies: list[float] = []
    outcome: dict[str, list[str]] = {"accepted": [], "refused": [], "unanswered": []}
    ends: set[str] = set()
    retried = 0
    deadline = time.monotonic() + args.timeout

    async def follow() -> None:
        for _ in range(RETRIES):
            try:
                async with session.ws_connect(ws_url) as ws:
                    while time.monotonic() < deadline:
                        msg = await ws.receive(timeout=max(deadline - time.monotonic(), 0.1))
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            data = json.loads(msg.data)
                            if data["type"] == "executing" and data["data"]["node"] is None:
                                ends.add(data["data"]["prompt_id"])
                        elif msg.type != aiohttp.WSMsgType.BINARY:
                            break  # closed: the server went away
            except (TimeoutError, aiohttp.ClientError):
                pass
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.1)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    for n in range(args.prompts):
        prompt_id = f"{client_id}-{n}"
        prompt = (
            shipped_workflow(client, n, args.steps)
            if args.shipped
            else workflow(client, n, args.chain)
        )
        body = {"prompt": prompt, "client_id": client_id}
        kind, latency, attempts = await submit(session, url, {**body, "prompt_id": prompt_id})
        outcome[kind].append(prompt_id)
        retried += attempts > 1
        if kind != "unanswered":
            latencies.append(latency)
    accepted = set(outcome["accepted"])
    recorded: set[str] = set()  # ended while this client's websocket was down (a crash)
    last_look = time.monotonic()
    while accepted - ends - recorded and time.monotonic() < deadline and not follower.done():
        await asyncio.sleep(0.05)
        if args.crash_after and time.monotonic() - last_look > 1.0:
            last_look = time.monotonic()
            for prompt_id in accepted - ends - recorded:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{url}/history/{prompt_id}") as resp:
                        if prompt_id in await resp.json():
                            recorded.add(prompt_id)
    follower.cancel()
    return {"latencies": latencies, "ends": ends, "retried": retried, **outcome}


async def final_history(
    session: aiohttp.ClientSession, url: str, accepted: set[str], timeout: float
) -> dict[str, Any]:
    """The history once every accepted prompt is in it (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    history: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            async with session.get(url + "/history") as resp:
                history = await resp.json()
        except aiohttp.ClientError:
            pass
        if accepted <= set(history):
            break
        await asyncio.sleep(0.2)
    return history


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000 if ordered else 0.0


async def run(args: argparse.Namespace, url: str, server: Server | None) -> int:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def crash() -> None:
            await asyncio.sleep(args.crash_after)
            assert server is not None
            await asyncio.to_thread(server.stop, True)
            await asyncio.to_thread(server.start)

        crasher = asyncio.create_task(crash()) if server and args.crash_after else None
        started = time.perf_counter()
        results = await asyncio.gather(
            *(one_client(session, url, c, args) for c in range(args.clients))
        )
        if crasher is not None:
            await crasher
        accepted = {p for r in results for p in r["accepted"]}
        history = await final_history(session, url, accepted, args.timeout)
        wall = time.perf_counter() - started
    latencies = [x for r in results for x in r["latencies"]]
    finished = accepted & set(history)
    completed = {p for p in finished if history[p]["status"]["status_str"] == "success"}
    ended_on_ws = sum(len(r["ends"]) for r in results)
    lost = len(accepted) - len(finished)
    what = (
        f"the shipped model, {shipped_size()}x{shipped_size()}, {args.steps} steps"
        if args.shipped
        else f"IntMath chain of {args.chain}"
    )
    print(f"clients {args.clients} x prompts {args.prompts} ({what})")
    if crasher is not None:
        retried = sum(r["retried"] for r in results)
        print(
            f"server killed (SIGKILL) and restarted {args.crash_after} s in; "
            f"{retried} submissions retried"
        )
    print(
        f"submit latency p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms, "
        f"max {pct(latencies, 1.0):.1f} ms, mean {statistics.fmean(latencies or [0]) * 1000:.1f} ms"
    )
    refused = sum(len(r["refused"]) for r in results)
    unanswered = sum(len(r["unanswered"]) for r in results)
    print(
        f"accepted {len(accepted)}, refused {refused}, unanswered {unanswered}, completed "
        f"{len(completed)}, failed {len(finished) - len(completed)}, lost {lost}, "
        f"end messages seen {ended_on_ws}"
    )
    print(f"wall {wall:.2f} s, {len(finished) / wall:.1f} jobs/s")
    if server is not None:
        mem = server.memory()
        peak = max(server.peak_kb, mem.get("VmHWM", 0))
        print(
            f"server memory: rss {mem.get('VmRSS', 0) / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB"
        )
    return 1 if lost or unanswered else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=10, help="prompts per client")
    parser.add_argument("--chain", type=int, default=20, help="IntMath nodes per prompt")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all")
    parser.add_argument(
        "--shipped", action="store_true", help="run ComfyUI's default graph on the shipped model"
    )
    parser.add_argument("--steps", type=int, default=4, help="sampler steps with --shipped")
    parser.add_argument("--crash-after", type=float, default=0.0, help="kill -9 after seconds")
    parser.add_argument("--url", default=None, help="a running server (default: start one)")
    args = parser.parse_args()
    if args.url:
        return asyncio.run(run(args, args.url.rstrip("/"), None))
    with tempfile.TemporaryDirectory(prefix="nodegraph-bench-") as data:
        server = Server(data, free_port(), args.prompts, args.shipped)
        server.start()
        try:
            return asyncio.run(run(args, server.url, server))
        finally:
            server.stop()


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
