"""Storage faults as answers: a full disk is a 507 in ComfyUI's error shape, never a bare 500."""

from __future__ import annotations

import errno
import logging
import sqlite3

from aiohttp import web

from .guard import Handler
from .messages import error_body

log = logging.getLogger("nodegraph.server")
DISK_FULL = 507
"""Insufficient Storage: the data folder's disk is full."""
UNAVAILABLE = 503
"""The queue database or the data folder cannot be written for another reason."""
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_STORAGE_ERRNOS = _FULL_ERRNOS | {errno.EROFS, errno.EIO}


def is_storage_fault(exc: BaseException) -> bool:
    """Whether `exc` is the disk or the database failing (worth trying again later)."""
    if isinstance(exc, sqlite3.OperationalError):
        return True
    return isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def fault_response(exc: BaseException) -> web.Response:
    """507 for a full disk, 503 for another storage fault, in ComfyUI's error shape."""
    if is_disk_full(exc):
        status, kind = DISK_FULL, "disk_full"
        text = "The disk of the server's data folder is full; free some space and try again."
    else:
        status, kind = UNAVAILABLE, "storage_unavailable"
        text = "The server cannot write to its data folder now; try again later."
    return web.json_response(error_body(kind, text, str(exc)), status=status)


@web.middleware
async def storage_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request that failed on the disk or the database gets a 507 / 503 JSON answer."""
    try:
        return await handler(request)
    except (sqlite3.Error, OSError) as exc:
        if not is_storage_fault(exc):
            raise
        log.warning("%s %s failed on storage: %s", request.method, request.path, exc)
        return fault_response(exc)
