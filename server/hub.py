"""Websocket connections by client id: each client gets its own messages, in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

log = logging.getLogger("nodegraph.server")

QUEUE_FRAMES = 4096
"""Frames waiting for one slow connection; past this, previews are dropped, then the client."""


class Connection:
    def __init__(self, client_id: str, ws: web.WebSocketResponse) -> None:
        self.client_id, self.ws = client_id, ws
        self.frames: asyncio.Queue[str | bytes | None] = asyncio.Queue(QUEUE_FRAMES)
        self.sender = asyncio.get_running_loop().create_task(self._send())

    def put(self, frame: str | bytes) -> None:
        if self.frames.qsize() >= QUEUE_FRAMES // 2 and isinstance(frame, bytes):
            return  # a preview for a client that is behind: skip it
        try:
            self.frames.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("client %s is too slow; closing its websocket", self.client_id)
            self.sender.cancel()
            asyncio.get_running_loop().create_task(self.ws.close())

    async def _send(self) -> None:
        while (frame := await self.frames.get()) is not None:
            try:
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                return

    async def close(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.frames.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.sender, 5)


class Hub:
    """Lives on the event loop; the worker reaches it through `loop.call_soon_threadsafe`."""

    def __init__(self) -> None:
        self.clients: dict[str, set[Connection]] = {}

    def __len__(self) -> int:
        return sum(len(c) for c in self.clients.values())

    def add(self, conn: Connection) -> None:
        self.clients.setdefault(conn.client_id, set()).add(conn)

    def remove(self, conn: Connection) -> None:
        conns = self.clients.get(conn.client_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.clients[conn.client_id]

    def send(self, client_id: str | None, frames: list[str | bytes]) -> None:
        """Frames of one prompt to its client; as in ComfyUI, to every client when it has none."""
        if client_id:
            conns = self.clients.get(client_id, ())
        else:
            conns = [c for cs in self.clients.values() for c in cs]
        for conn in conns:
            for frame in frames:
                conn.put(frame)

    def broadcast(self, frame: str) -> None:
        for conns in self.clients.values():
            for conn in conns:
                conn.put(frame)

    async def close_all(self) -> None:
        conns = [c for cs in self.clients.values() for c in cs]
        for conn in conns:
            await conn.close()
            with contextlib.suppress(Exception):
                await conn.ws.close()
        self.clients.clear()
