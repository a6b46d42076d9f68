"""The server's settings: where its data lives, who may talk to it, and every limit."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .cluster import ClusterConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEB_DIR = REPO_ROOT / "web" / "dist"


@dataclass(frozen=True)
class Limits:
    """Sizes past which a request is refused with a 4xx; each one is a command-line option."""

    max_body_bytes: int = 8 * 1024**2
    """Largest JSON body (413)."""
    max_upload_bytes: int = 64 * 1024**2
    """Largest multipart upload (413)."""
    max_image_pixels: int = 4096 * 4096
    """Largest image: uploads (413) and any node's width x height (400)."""
    max_compute: int = 2048 * 2048 * 4 * 100
    """Largest width x height x batch x steps of one workflow (400)."""
    max_nodes: int = 10_000
    """Most nodes in one workflow (400)."""
    max_queue_per_client: int = 100
    """Most queued or running jobs of one client_id (429)."""
    max_queue_total: int = 10_000
    """Most queued or running jobs in all (429)."""
    max_ws_clients: int = 256
    """Most websocket connections at once (429)."""
    max_history: int = 10_000
    """Finished jobs kept in the history; the oldest go first."""


PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")
"""ComfyUI's preview methods; nodegraph draws every preview with its latent-to-RGB map."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8188
    data_dir: Path = Path("nodegraph-data")
    token: str | None = None
    """Required from every client when set; required to bind anywhere but loopback."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (besides localhost and IP literals) that the Host header may carry."""
    allowed_origins: tuple[str, ...] = ()
    """Extra origins (scheme://host:port) allowed to call the API from a browser."""
    limits: Limits = field(default_factory=Limits)
    model_dirs: tuple[Path, ...] = ()
    device: str | None = None
    vram_budget: float | None = None
    lowvram: bool = False
    cache_bytes: int | None = None
    threads: int | None = None
    """Torch CPU threads (the node library applies it); None leaves torch's default."""
    web_dir: Path | None = DEFAULT_WEB_DIR
    cluster: ClusterConfig | None = None
    """`--ray`: jobs run on a pool of Ray worker actors (server/cluster) instead of in-process."""
    preview_method: str = "none"
    """ComfyUI's --preview-method: live previews go to clients only when it is not "none" or
    the prompt's extra_data asks for them (preview_method), as ComfyUI sends them."""

    @property
    def input_dir(self) -> Path:
        return self.data_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "output"

    @property
    def temp_dir(self) -> Path:
        return self.data_dir / "temp"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "queue.sqlite3"

    def previews_for(self, extra_data: dict) -> bool:
        """Whether a run sends binary preview frames: the prompt's own preview_method, unless
        absent or "default", else the server's."""
        asked = extra_data.get("preview_method")
        method = self.preview_method if asked in (None, "default") else asked
        return method in PREVIEW_METHODS and method != "none"

    def folder(self, kind: str) -> Path | None:
        """The folder of a /view or /upload `type`: input, output or temp."""
        return {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}.get(kind)


CONFIG: web.AppKey[ServerConfig] = web.AppKey("config", ServerConfig)


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
