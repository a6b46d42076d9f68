"""The nodegraph server: ComfyUI's HTTP and websocket API over a durable queue, safe by default.

`nodegraph serve` (or `python -m server`) runs it; `create_app` builds the aiohttp application.
"""

from .app import create_app
from .config import Limits, ServerConfig

__all__ = ["Limits", "ServerConfig", "create_app"]
