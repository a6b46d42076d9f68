"""The canvas's "live" strength slider: the time from queueing a changed strength to the new
picture, on the shipped model (what the canvas waits for when a slider is released).

    .venv/bin/python bench/live_requeue.py [--steps 20] [--threads 2]

Starts `python -m server` on a free loopback port, runs the txt2img -> img2img workflow once
(cold: model load, txt2img; img2img at 0.3), then queues it again with the img2img denoise at
0.5, 0.45, 0.55, 0.6, 0.4 and times each from POST /prompt to the websocket's `executed` for the
final SaveImage, printing which nodes ran (only the img2img cone should) and the goal (under 1 s
for 20 steps at 0.5 on CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = json.loads((REPO / "workflows" / "comfy_txt2img_img2img.json").read_text())
GOAL_SECONDS = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one(session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, base: str,
              client: str, workflow: dict) -> tuple[float, list[str]]:  # fmt: skip
    """Seconds from queueing to the last node's `executed`; the nodes that ran."""
    started = time.perf_counter()
    async with session.post(base + "/prompt", json={"prompt": workflow, "client_id": client}) as r:
        prompt_id = (await r.json())["prompt_id"]
    ran: list[str] = []
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        data = json.loads(msg.data)
        body = data["data"]
        if body.get("prompt_id") != prompt_id:
            continue
        if data["type"] == "executing" and body["node"] is not None:
            ran.append(body["node"])
        if data["type"] == "executed" and body["node"] == "14":
            return time.perf_counter() - started, ran
        if data["type"] == "execution_error":
            raise SystemExit(f"the run failed: {body.get('exception_message')}")
    raise SystemExit("the websocket closed")


async def measure(base: str, steps: int) -> None:
    client = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session, session.ws_connect(
        base.replace("http", "ws") + f"/ws?clientId={client}"
    ) as ws:
        workflow = copy.deepcopy(WORKFLOW)
        workflow["12"]["inputs"]["steps"] = steps
        workflow["12"]["inputs"]["denoise"] = 0.3  # so that 0.5 below is a new value
        cold, _ = await one(session, ws, base, client, workflow)
        print(f"first run (model load, txt2img, img2img): {cold:.2f} s")
        times = []
        for denoise in (0.5, 0.45, 0.55, 0.6, 0.4):
            workflow = copy.deepcopy(workflow)
            workflow["12"]["inputs"]["denoise"] = denoise
            seconds, ran = await one(session, ws, base, client, workflow)
            times.append(seconds)
            print(f"  denoise {denoise:.2f} ({round(steps * denoise)} of {steps} steps): "
                  f"{seconds:.3f} s, ran {ran}")  # fmt: skip
        at_half = times[0]
        print(f"released slider -> new picture: {at_half:.3f} s at 0.5 (median over all "
              f"{statistics.median(times):.3f} s); goal < {GOAL_SECONDS:.1f} s: "
              f"{'met' if at_half < GOAL_SECONDS else 'NOT met'}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        command = [sys.executable, "-m", "server", "--port", str(port), "--data", data]
        if args.threads:
            command += ["--threads", str(args.threads)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "listening on" in line:
                    break
            asyncio.run(measure(f"http://127.0.0.1:{port}", args.steps))
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
