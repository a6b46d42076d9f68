"""Request checks that run before any route: Host, Origin, Sec-Fetch-Site, token, body type.

Browsers are the threat here (a web page making the user's browser call the local server):
- a Host header naming some other site means DNS rebinding: only localhost, IP literals and the
  configured names pass;
- an Origin (including `null`) that is not this server's own, or `Sec-Fetch-Site: cross-site`,
  means another site's page: refused, on the websocket handshake too;
- a browser's POST body must be JSON or multipart (415), which a cross-site form cannot send
  without a preflight. Non-browser clients (no Origin, no Sec-Fetch-* headers) may send any type
  or none, as ComfyUI accepts: urllib's default form type (ComfyUI's published examples),
  `requests.post(url, data=...)` with none, aiohttp's application/octet-stream for bytes and
  text/plain for strings.
Plain local clients (curl, scripts) send no Origin and pass.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from .config import ServerConfig, is_loopback

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOKEN_COOKIE = "nodegraph_token"
_BODY_TYPES = ("application/json", "multipart/form-data")


def refuse(status: int, text: str) -> web.Response:
    error = {"type": "refused", "message": text, "details": "", "extra_info": {}}
    return web.json_response({"error": error}, status=status)  # ComfyUI's error shape


def _split_host(value: str) -> tuple[str, int | None]:
    """('host', port) from a Host header or netloc; IPv6 brackets removed."""
    parts = urlsplit(f"//{value}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    return (parts.hostname or "").lower(), port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class Guard:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.hosts = {"localhost", *(h.lower() for h in config.allowed_hosts)}
        if not is_loopback(config.host):  # served to the network: its own names are fine
            self.hosts |= {config.host.lower(), socket.gethostname().lower()}
            self.hosts.add(socket.getfqdn().lower())
        self.origins = {o.lower().rstrip("/") for o in config.allowed_origins}

    def host_ok(self, host: str | None) -> bool:
        if host is None:
            return True  # HTTP/1.0 without Host: not a browser
        name, port = _split_host(host)
        if port == -1 or not name:
            return False
        return name in self.hosts or _is_ip(name)

    def origin_ok(self, origin: str, host: str | None) -> bool:
        if origin.lower().rstrip("/") in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or host is None:
            return False  # includes Origin: null
        default = 443 if parts.scheme == "https" else 80
        try:
            origin_port = parts.port or default
        except ValueError:
            return False
        name, port = _split_host(host)
        return parts.hostname.lower() == name and origin_port == (port or default)

    def token_ok(self, request: web.Request) -> bool:
        expected = self.config.token
        if not expected:
            return True
        given = ""
        auth = request.headers.get(hdrs.AUTHORIZATION, "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        given = given or request.query.get("token", "") or request.cookies.get(TOKEN_COOKIE, "")
        return hmac.compare_digest(given.encode(), expected.encode())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        host = headers.get(hdrs.HOST)
        if not self.host_ok(host):
            return refuse(403, f"Host '{host}' is not allowed (use --allow-host to add it).")
        origin = headers.get(hdrs.ORIGIN)
        if origin is not None and not self.origin_ok(origin, host):
            return refuse(403, f"Cross-origin requests are refused (Origin '{origin}').")
        if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            return refuse(403, "Cross-site requests are refused.")
        if not self.token_ok(request):
            return refuse(401, "A token is required (Authorization: Bearer <token>).")
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            length = request.content_length
            limit = self.config.limits
            if length is not None and length > max(limit.max_body_bytes, limit.max_upload_bytes):
                return refuse(413, f"The body is {length} bytes; that is over the limit.")
            if request.body_exists and not self._body_type_ok(request):
                return refuse(
                    415, "A browser's POST body must be application/json or multipart/form-data."
                )
        response = await handler(request)
        if self.config.token and request.query.get("token") and request.path == "/":
            response.set_cookie(
                TOKEN_COOKIE, self.config.token, httponly=True, samesite="Strict", path="/"
            )
        return response

    def _body_type_ok(self, request: web.Request) -> bool:
        """JSON or multipart from a browser (it sends Origin / Sec-Fetch-*); anything else from
        other clients."""
        browser = hdrs.ORIGIN in request.headers or any(
            h.lower().startswith("sec-fetch-") for h in request.headers
        )
        return not browser or (
            hdrs.CONTENT_TYPE in request.headers and request.content_type in _BODY_TYPES
        )


def security_headers() -> dict[str, str]:
    return {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
