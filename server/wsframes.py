"""RFC 6455 section 5.1: a client's frames must be masked, and a server must close a connection
that sends one without a mask (close code 1002). aiohttp's frame reader serves both sides and
does not check this, so the bytes pass through `MaskedFrames` on their way to it."""

from __future__ import annotations

from typing import Any

from aiohttp import WebSocketError, WSCloseCode, web

_FAILED = (True, b"")
"""What aiohttp's reader answers on a protocol error: stop reading."""


class MaskedFrames:
    """Follows frame boundaries in a client's byte stream; an unmasked frame ends the stream
    with a protocol error, which makes aiohttp close the connection with 1002."""

    def __init__(self, reader: Any, queue: Any) -> None:
        self.reader, self.queue = reader, queue
        self._header = bytearray()
        self._payload_left = 0
        self._failed = False

    def feed_eof(self) -> None:
        self.reader.feed_eof()

    def feed_data(self, data: bytes | bytearray | memoryview) -> tuple[bool, bytes]:
        if self._failed:
            return _FAILED
        data = bytes(data)
        pos = 0
        while pos < len(data):
            if self._payload_left:
                step = min(self._payload_left, len(data) - pos)
                self._payload_left -= step
                pos += step
                continue
            start = pos - len(self._header)  # where this header began (< 0: an earlier read)
            self._header.append(data[pos])
            pos += 1
            if len(self._header) == 2 and not self._header[1] & 0x80:
                return self._fail(data[: max(start, 0)])
            if len(self._header) >= 2 and len(self._header) == _header_size(self._header):
                self._payload_left = _payload_size(self._header)
                self._header.clear()
        return self.reader.feed_data(data)

    def _fail(self, before: bytes) -> tuple[bool, bytes]:
        """Hand over the frames before the unmasked one, then the protocol error."""
        self._failed = True
        if before:
            self.reader.feed_data(before)
        error = WebSocketError(WSCloseCode.PROTOCOL_ERROR, "Received a frame without a mask")
        self.queue.set_exception(error)
        return _FAILED


def _header_size(header: bytearray) -> int:
    """Bytes of a (masked) frame header, known from its first two bytes."""
    length = header[1] & 0x7F
    return 2 + {126: 2, 127: 8}.get(length, 0) + 4


def _payload_size(header: bytearray) -> int:
    length = header[1] & 0x7F
    if length < 126:
        return length
    return int.from_bytes(header[2 : 4 if length == 126 else 10], "big")


class ClientWebSocket(web.WebSocketResponse):
    """aiohttp's server websocket, refusing frames a client sent without a mask.

    It puts `MaskedFrames` between the connection and aiohttp's reader, which needs three of
    aiohttp's private names (aiohttp is pinned; tests/test_server_faults.py sends such frames).
    """

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        connection = request.protocol
        # bytes that came with the handshake: aiohttp would hand them to its reader unchecked
        early, connection._message_tail = connection._message_tail, b""  # noqa: SLF001
        super()._post_start(request, protocol, writer)
        check = MaskedFrames(connection._payload_parser, self._reader)  # noqa: SLF001
        connection._payload_parser = check  # noqa: SLF001
        if early:
            check.feed_data(early)
