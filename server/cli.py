"""`nodegraph serve`: options, checks and the run loop (the CLI delegates here)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from nodegraph.cli import add_model_arguments

from .cluster import ClusterConfig
from .config import DEFAULT_WEB_DIR, PREVIEW_METHODS, Limits, ServerConfig, is_loopback
from .startup import StartupError, lock_data_folder

log = logging.getLogger("nodegraph.server")
TOKEN_ENV = "NODEGRAPH_TOKEN"

_LIMIT_HELP = {
    "max_body_bytes": "largest JSON body in bytes (413)",
    "max_upload_bytes": "largest upload in bytes (413)",
    "max_image_pixels": "largest image in pixels, uploaded or generated",
    "max_compute": "largest width x height x batch x steps of one workflow",
    "max_nodes": "most nodes in one workflow",
    "max_queue_per_client": "most queued jobs per client_id (429)",
    "max_queue_total": "most queued jobs in all (429)",
    "max_ws_clients": "most websocket connections (429)",
    "max_history": "finished jobs kept in the history",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8188, help="port (default 8188; 0 = any)")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("nodegraph-data"),
        help="data folder: input/, output/, temp/ and the queue database",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"token every request must carry (default: ${TOKEN_ENV}); required off loopback",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients may use besides localhost and IP addresses (repeatable)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="another origin (scheme://host:port) whose pages may call the API (repeatable)",
    )
    add_model_arguments(parser)
    parser.add_argument("--cache-bytes", type=int, default=None, help="engine cache budget")
    parser.add_argument(
        "--cache-mb", type=int, default=None, help="engine cache budget in MiB (as `nodegraph run`)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for the worker (default: torch's; 1 suits a busy small machine)",
    )
    parser.add_argument("--web", type=Path, default=DEFAULT_WEB_DIR, help="built web canvas")
    parser.add_argument(
        "--preview-method",
        choices=PREVIEW_METHODS,
        default="none",
        help="live previews for every prompt (default none: only for prompts whose extra_data "
        "asks, as the canvas does; taesd draws as latent2rgb)",
    )
    parser.add_argument(
        "--node-package",
        action="append",
        default=[],
        metavar="MODULE",
        help="import more node classes from this module or package (repeatable)",
    )
    parser.add_argument(
        "--no-default-nodes",
        action="store_true",
        help="leave out the node library and plugins (with --node-package: tests, tools)",
    )
    cluster = parser.add_argument_group("cluster (Ray; pip install -e '.[cluster]')")
    cluster.add_argument(
        "--ray",
        default=None,
        metavar="local|ADDRESS",
        help="run jobs on Ray worker actors: 'local' starts a cluster on this machine, an "
        "address (host:port) joins one started with `ray start --head`",
    )
    cluster.add_argument("--workers", type=int, default=1, help="worker actors (default 1)")
    cluster.add_argument(
        "--worker-gpus",
        type=float,
        default=None,
        help="GPUs per worker, a fraction packs several on one GPU (default: 1 where the "
        "cluster has GPUs, else CPU workers)",
    )
    cluster.add_argument(
        "--ray-gpus",
        type=int,
        default=None,
        help="logical GPUs a --ray local cluster declares (default: detected)",
    )
    defaults = Limits()
    for field in dataclasses.fields(Limits):
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=int,
            default=getattr(defaults, field.name),
            help=f"{_LIMIT_HELP[field.name]} (default %(default)s)",
        )


def config_from(args: argparse.Namespace) -> ServerConfig:
    limits = Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)})
    cluster = None
    if args.ray:
        cluster = ClusterConfig(
            address=args.ray, workers=args.workers, worker_gpus=args.worker_gpus,
            local_gpus=args.ray_gpus, node_packages=tuple(args.node_package),
            default_nodes=not args.no_default_nodes,
        )  # fmt: skip
    return ServerConfig(
        cluster=cluster,
        host=args.host,
        port=args.port,
        data_dir=args.data,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        allowed_hosts=tuple(args.allow_host),
        allowed_origins=tuple(args.allow_origin),
        limits=limits,
        model_dirs=tuple(Path(m) for m in args.models),
        device=args.device,
        vram_budget=args.vram_budget,
        lowvram=args.lowvram,
        cache_bytes=args.cache_mb * 2**20 if args.cache_mb is not None else args.cache_bytes,
        threads=args.threads,
        web_dir=args.web,
        preview_method=args.preview_method,
    )


def _registry(args: argparse.Namespace):  # noqa: ANN202 - nodegraph.registry.Registry
    from nodegraph.registry import registry_from

    return registry_from(args.node_package, not args.no_default_nodes)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.ray and args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    config = config_from(args)
    if not is_loopback(config.host) and not config.token:
        print(
            f"error: binding to {config.host} exposes the server to the network; "
            f"give a token with --token or ${TOKEN_ENV}",
            file=sys.stderr,
        )
        return 2
    try:
        lock = lock_data_folder(config.data_dir)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(config, _registry(args)))
    finally:
        lock.close()


async def _serve(config: ServerConfig, registry: object) -> int:
    from .app import create_app

    try:
        app = create_app(config, registry)  # type: ignore[arg-type]
    except ValueError as exc:  # a node module refusing the settings (a missing models folder)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()  # the app's startup: the data folder's checks, the queue database
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        await runner.cleanup()
        return 2
    site = web.TCPSite(runner, config.host, config.port)
    try:
        await site.start()
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        await runner.cleanup()
        return 2
    sockets = site._server.sockets if site._server else []  # noqa: SLF001 - the bound port
    port = sockets[0].getsockname()[1] if sockets else config.port
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"nodegraph server listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
    return 0
