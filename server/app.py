"""The aiohttp application: ComfyUI's routes (also under /api), the websocket and the worker."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import platform
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from nodegraph import ui_format
from nodegraph.cache import Cache
from nodegraph.context import RunSettings
from nodegraph.errors import ValidationFailed
from nodegraph.executor import Executor
from nodegraph.files import UnsafePath, confined
from nodegraph.registry import Registry, default_registry, describe
from nodegraph.validate import Limits as EngineLimits
from nodegraph.validate import plan_dependents

from . import budget, files, startup, sweep
from .config import CONFIG, ServerConfig
from .faults import storage_faults
from .guard import Guard, refuse, security_headers
from .history import shown_number
from .hub import Connection, Hub
from .messages import error_body, message
from .store import DuplicatePromptId, Store
from .worker import Worker
from .wsframes import ClientWebSocket

log = logging.getLogger("nodegraph.server")
INLINE_VALIDATION = 256
"""Workflows up to this many nodes are validated on the event loop (well under a millisecond);
bigger ones in a thread, so that they do not hold up other requests."""
STATUS_DELAY = 0.05
"""Seconds a queue-length broadcast waits, gathering the changes that come meanwhile."""
MAX_ID = 256
"""Longest prompt_id or client_id."""
FREE_FLAGS = ("unload_models", "free_memory")
"""POST /free's switches (ComfyUI's)."""
WEB_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".wasm": "application/wasm",
    ".txt": "text/plain",
}
INDEX_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self' ws: wss:; object-src 'none'; "
    "base-uri 'self'; frame-ancestors 'none'"
)

SERVER = web.AppKey("server", "Server")


class BadRequest(Exception):
    def __init__(self, body: dict[str, Any], status: int = 400) -> None:
        super().__init__(body["error"]["message"])
        self.body, self.status = body, status


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


class _Constant(ValueError):
    """NaN or an infinity in a body (json's parse_constant gives no position)."""


def _refuse_constant(name: str) -> Any:
    raise _Constant(name)


def _outside_strings(text: str, word: str) -> int:
    """Where `word` first appears outside the JSON strings of `text` (-1: nowhere)."""
    inside = escaped = False
    for i, char in enumerate(text):
        if inside:
            escaped, inside = (not escaped and char == "\\"), inside and (escaped or char != '"')
        elif char == '"':
            inside = True
        elif text.startswith(word, i):
            return i
    return -1


def _constant_error(body: bytes, name: str) -> str:
    text = body.decode("utf-8", "replace")
    at = _outside_strings(text, name)
    where = ""
    if at >= 0:
        line = text.count("\n", 0, at) + 1
        where = f": line {line} column {at - text.rfind(chr(10), 0, at)} (char {at})"
    return f"{name} is not a JSON number (NaN and infinities are refused){where}"


async def read_json(request: web.Request, *, empty_ok: bool = True) -> Any:
    """The JSON body (NaN, infinities and oversized bodies refused), or {} for an empty one."""
    limit = request.app[CONFIG].limits.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.content.iter_any():  # the whole body, however it arrives
        size += len(chunk)
        if size > limit:
            raise BadRequest(error_body("invalid_prompt", f"The body is over {limit} bytes."), 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        if empty_ok:
            return {}
        raise BadRequest(error_body("invalid_prompt", "The body is empty."))
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _Constant as exc:
        message = _constant_error(body, str(exc))
        body_error = error_body("invalid_prompt", f"The body is not valid JSON: {message}")
        raise BadRequest(body_error) from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(
            error_body("invalid_prompt", f"The body is not valid JSON: {exc}")
        ) from None


class Server:
    """Owns the store, the executor, the worker and the websocket hub of one app."""

    def __init__(self, config: ServerConfig, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else default_registry()
        cache = Cache(config.cache_bytes) if config.cache_bytes is not None else Cache()
        self.executor = Executor(
            self.registry, cache, EngineLimits(max_nodes=config.limits.max_nodes)
        )
        options: dict[str, Any] = {
            "models": [str(p) for p in config.model_dirs],
            "device": config.device or "auto",
            "vram_budget": config.vram_budget,
            "lowvram": config.lowvram,
            "allow_pickle": False,
            "threads": config.threads or 0,
            "output_dir": str(config.output_dir),  # its checkpoints/, loras/... hold models too
            # sizes only known at run time (a resize keeping the aspect ratio) are held to it too
            "max_image_pixels": config.limits.max_image_pixels,
        }
        self.registry.configure(options)  # model folders, device, threads for the node library
        self.settings = RunSettings(
            output_dir=config.output_dir,
            temp_dir=config.temp_dir,
            input_dir=config.input_dir,
            confine_inputs=True,
            options=options,
        )
        self.store: Store | None = None
        self.worker: Worker | None = None
        self.hub = Hub()
        self._status_due = False
        self._adding: Counter[str | None] = Counter()
        """Submissions being committed now, by client (they count against the limits)."""

    # -- life cycle -------------------------------------------------------------------------

    async def startup(self, app: web.Application) -> None:
        """Check the data folder and open the queue (StartupError when either fails)."""
        await asyncio.to_thread(startup.prepare_folders, self.config)
        self.store = await asyncio.to_thread(startup.open_store, self.config)
        await asyncio.to_thread(self.store.history_json)  # rendered now, not at the first look
        recovered = self.store.recovered
        if recovered["requeued"] or recovered["failed"]:
            log.warning(
                "recovered after a crash: %d job(s) queued again, %d failed",
                len(recovered["requeued"]),
                len(recovered["failed"]),
            )
        loop = asyncio.get_running_loop()
        if self.config.cluster is not None:
            self.worker = await asyncio.to_thread(self._start_cluster, loop)
            return
        self.worker = Worker(
            self.executor, self.store, self.settings, self.hub, loop, self.broadcast_status,
            previews=self.config.previews_for,
        )  # fmt: skip
        self.worker.start()

    def _start_cluster(self, loop: asyncio.AbstractEventLoop) -> Worker:
        """Ray and its worker actors (server/cluster), standing where the one worker stands."""
        from .cluster import ClusterError
        from .cluster.actor import WorkerSpec
        from .cluster.pool import Cluster

        cluster = self.config.cluster
        assert cluster is not None and self.store is not None
        threads = self.config.threads or max(1, (os.cpu_count() or 1) // cluster.workers)
        spec = WorkerSpec(
            worker_id="", options={**self.settings.options, "threads": threads},
            cache_bytes=self.config.cache_bytes, max_nodes=self.config.limits.max_nodes,
            node_packages=cluster.node_packages, default_nodes=cluster.default_nodes,
        )  # fmt: skip
        pool = Cluster(
            cluster, spec, self.executor, self.store, self.settings, self.hub, loop,
            self.broadcast_status, previews=self.config.previews_for,
        )  # fmt: skip
        try:
            pool.start()
        except ClusterError as exc:
            raise startup.StartupError(f"the cluster: {exc}") from None
        return pool  # type: ignore[return-value]  # the same interface as Worker

    async def shutdown(self, app: web.Application) -> None:
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
        await self.hub.close_all()
        if self.store is not None:
            self.store.close()

    def status(self) -> dict[str, Any]:
        assert self.store is not None
        return {"exec_info": {"queue_remaining": self.store.remaining()}}

    def broadcast_status(self) -> None:
        """Tell every client the queue length soon; a burst of changes makes one message."""
        if self._status_due or not self.hub.clients:
            return
        self._status_due = True
        asyncio.get_running_loop().call_later(STATUS_DELAY, self._send_status)

    def _send_status(self) -> None:
        self._status_due = False
        if self.store is not None:
            self.hub.broadcast(message("status", {"status": self.status()}))

    # -- prompts ------------------------------------------------------------------------------

    async def post_prompt(self, request: web.Request) -> web.Response:
        assert self.store is not None and self.worker is not None
        try:
            body = await read_json(request, empty_ok=False)
            job = await self._admit(body)
        except BadRequest as exc:
            return web.json_response(exc.body, status=exc.status)
        try:
            self._check_queue_room(job[2])  # again: validation may have awaited
            number = await self._enqueue(job)
        except BadRequest as exc:
            return web.json_response(exc.body, status=exc.status)
        self.worker.wake()
        self.broadcast_status()
        shown = shown_number(number)
        return web.json_response({"prompt_id": job[1], "number": shown, "node_errors": {}})

    async def _enqueue(self, job: tuple[Any, ...]) -> float:
        """Commit an admitted job to the store; its number."""
        assert self.store is not None
        prompt, prompt_id, client_id, extra, outputs, number, front = job
        self._adding[client_id] += 1  # counted as queued while the commit (an fsync) runs
        try:
            return await asyncio.to_thread(
                self.store.add,
                prompt_id,
                prompt,
                client_id=client_id,
                extra_data=extra,
                outputs=outputs,
                number=number,
                front=front,
            )
        except DuplicatePromptId:
            text = f"prompt_id '{prompt_id}' is already used."
            raise BadRequest(error_body("invalid_prompt", text)) from None
        finally:
            self._adding[client_id] -= 1

    async def post_sweep(self, request: web.Request) -> web.Response:
        """Queue a workflow once per value of one or two inputs (server/sweep.py)."""
        assert self.store is not None and self.worker is not None
        try:
            body = await read_json(request, empty_ok=False)
            if not isinstance(body, dict) or not isinstance(body.get("prompt"), dict):
                raise BadRequest(error_body("invalid_sweep", "Expected {prompt, sweep, ...}."))
            axes = sweep.parse_axes(body.get("sweep"), body["prompt"])
            planned = sweep.runs(body["prompt"], axes)
            self._check_queue_room(body.get("client_id"), len(planned))
            sweep_id = uuid.uuid4().hex
            jobs = []
            for index, (values, workflow) in enumerate(planned):
                tag = {"id": sweep_id, "index": index, "axes": [a.describe() for a in axes],
                       "values": list(values)}  # fmt: skip
                extra = {**(body.get("extra_data") or {}), "sweep": tag}
                run = {**body, "prompt": workflow, "extra_data": extra, "prompt_id": None}
                jobs.append(await self._admit_sweep_run(run, index, values))
            self._check_queue_room(body.get("client_id"), len(jobs))
            numbers = [await self._enqueue(job) for job in jobs]
        except sweep.SweepError as exc:
            return web.json_response(exc.body, status=400)
        except BadRequest as exc:
            return web.json_response(exc.body, status=exc.status)
        self.worker.wake()
        self.broadcast_status()
        return web.json_response({
            "sweep_id": sweep_id,
            "prompt_ids": [job[1] for job in jobs],
            "values": [list(values) for values, _ in planned],
            "number": shown_number(numbers[0]),
            "node_errors": {},
        })  # fmt: skip

    async def _admit_sweep_run(self, run: dict, index: int, values: tuple) -> tuple[Any, ...]:
        try:
            return await self._admit(run)
        except BadRequest as exc:
            error = exc.body.get("error", {})
            error["message"] = f"sweep run {index} (values {list(values)}): {error.get('message')}"
            raise

    async def get_sweep(self, request: web.Request) -> web.Response:
        assert self.store is not None
        sweep_id = request.match_info["sweep_id"]
        found = await asyncio.to_thread(self.store.sweep_runs, sweep_id)
        if not found:
            return refuse(404, f"No sweep '{sweep_id}'.")
        runs = [{"prompt_id": pid, "index": tag["index"], "values": tag["values"], "status": state}
                for pid, state, tag in found]  # fmt: skip
        return web.json_response({"sweep_id": sweep_id, "axes": found[0][2]["axes"], "runs": runs})

    async def _admit(self, body: Any) -> tuple[Any, ...]:
        """Check a POST /prompt body; returns what the store needs or raises BadRequest."""
        if not isinstance(body, dict):
            raise BadRequest(error_body("invalid_prompt", "The body must be a JSON object."))
        prompt = body.get("prompt")
        if prompt is None:
            raise BadRequest(error_body("no_prompt", "No prompt provided", "No prompt provided"))
        prompt_id = body.get("prompt_id") or uuid.uuid4().hex
        client_id = body.get("client_id")
        extra = body.get("extra_data") or {}
        for name, value in (("prompt_id", prompt_id), ("client_id", client_id)):
            if value is not None and not (
                isinstance(value, str)
                and len(value) <= MAX_ID
                and value.isprintable()
                and not set(value) & set("/?#%")
            ):
                text = f"{name} must be a printable text of at most {MAX_ID}, without / ? # %."
                raise BadRequest(error_body("invalid_prompt", text))
        if not isinstance(extra, dict):
            raise BadRequest(error_body("invalid_prompt", "extra_data must be a JSON object."))
        number = body.get("number")
        if number is not None and (
            isinstance(number, bool) or not isinstance(number, int | float) or abs(number) > 2**53
        ):
            raise BadRequest(error_body("invalid_prompt", "number must be a number below 2**53."))
        self._check_queue_room(client_id)
        if client_id:
            extra = {**extra, "client_id": client_id}
        if isinstance(prompt, dict) and len(prompt) <= INLINE_VALIDATION:
            plan = self._validate(prompt)  # quicker than a hop to a thread
        else:
            plan = await asyncio.to_thread(self._validate, prompt)
        return (
            prompt,
            prompt_id,
            client_id,
            extra,
            list(plan.outputs),
            number,
            bool(body.get("front")),
        )

    def _check_queue_room(self, client_id: str | None, count: int = 1) -> None:
        """429 when the queue, or this client's share of it, has no room for `count` jobs."""
        assert self.store is not None
        limits = self.config.limits
        if self.store.remaining() + self._adding.total() + count > limits.max_queue_total:
            raise BadRequest(
                error_body("queue_full", f"The queue is full ({limits.max_queue_total} jobs)."),
                429,
            )
        mine = self.store.remaining(client_id) + self._adding[client_id]
        if client_id and mine + count > limits.max_queue_per_client:
            text = f"This client has {limits.max_queue_per_client} jobs queued; wait for some."
            raise BadRequest(error_body("queue_full", text), 429)

    def _validate(self, prompt: Any) -> Any:
        try:
            plan = self.executor.validate(prompt, self.settings)
        except ValidationFailed as exc:
            raise BadRequest(exc.comfy_body()) from None
        except RecursionError:
            raise BadRequest(
                error_body("invalid_prompt", "The workflow is nested too deeply.")
            ) from None
        problems = budget.check(plan, self.config.limits)
        if problems:
            raise BadRequest(
                ValidationFailed(problems, plan_dependents(plan, problems)).comfy_body()
            )
        return plan

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def get_queue(self, request: web.Request) -> web.Response:
        assert self.store is not None
        running, pending = self.store.queue()
        return web.json_response(
            {
                "queue_running": [j.item() for j in running],
                "queue_pending": [j.item() for j in pending],
            }
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        """`{clear: true}` empties the pending queue, `{delete: [ids]}` removes some of it."""
        assert self.store is not None
        response = await _clear_or_delete(request, self.store.delete_queued)
        self.broadcast_status()
        return response

    async def post_interrupt(self, request: web.Request) -> web.Response:
        assert self.worker is not None
        try:
            body = await read_json(request)
        except BadRequest as exc:
            return web.json_response(exc.body, status=exc.status)
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        self.worker.interrupt(str(prompt_id) if prompt_id is not None else None)
        return web.Response(status=200)

    async def post_free(self, request: web.Request) -> web.Response:
        """`{unload_models?: bool, free_memory?: bool}`: done between jobs (ComfyUI's /free)."""
        assert self.worker is not None
        try:
            flags = free_flags(await read_json(request))
        except BadRequest as exc:
            return web.json_response(exc.body, status=exc.status)
        self.worker.request_free(**flags)
        return web.Response(status=200)

    async def get_cluster(self, request: web.Request) -> web.Response:
        """The cluster's workers (what each holds and does) and its recent routing."""
        describe_cluster = getattr(self.worker, "describe", None)
        if describe_cluster is None:
            body = error_body("not_a_cluster", "This server runs on one machine (no --ray).")
            return web.json_response(body, status=404)
        return web.json_response(await asyncio.to_thread(describe_cluster))

    async def get_history(self, request: web.Request) -> web.Response:
        assert self.store is not None
        try:
            max_items = _int_query(request, "max_items")
            offset = _int_query(request, "offset")
        except ValueError as exc:
            return refuse(400, str(exc))
        body = await asyncio.to_thread(self.store.history_json, None, max_items, offset)
        return web.Response(body=body, content_type="application/json")

    async def get_history_item(self, request: web.Request) -> web.Response:
        assert self.store is not None
        body = await asyncio.to_thread(self.store.history_json, request.match_info["prompt_id"])
        return web.Response(body=body, content_type="application/json")

    async def post_history(self, request: web.Request) -> web.Response:
        assert self.store is not None
        return await _clear_or_delete(request, self.store.delete_history)

    # -- catalogue and system -----------------------------------------------------------------

    async def object_info(self, request: web.Request) -> web.Response:
        catalogue = await asyncio.to_thread(self.registry.catalogue)
        return web.json_response(await asyncio.to_thread(self._with_uploads, catalogue))

    async def object_info_one(self, request: web.Request) -> web.Response:
        cls = self.registry.get(request.match_info["node_class"])
        one = {cls.spec.type_name: describe(cls)} if cls else {}
        return web.json_response(await asyncio.to_thread(self._with_uploads, one))

    def _with_uploads(self, catalogue: dict[str, Any]) -> dict[str, Any]:
        """Image-upload inputs as ComfyUI lists them: the input folder's pictures as choices
        (the catalogue itself is left as it is: it is shared)."""
        pictures: list[str] | None = None
        out = dict(catalogue)
        for node, entry in catalogue.items():
            for section_name, section in entry["input"].items():
                if section_name == "hidden":
                    continue
                for name, (kind, options) in section.items():
                    if not (options.get("image_upload") and kind == "STRING"):
                        continue
                    if pictures is None:
                        pictures = files.input_pictures(self.config.input_dir)
                    inputs = {**out[node]["input"]}
                    inputs[section_name] = {**inputs[section_name], name: [pictures, options]}
                    out[node] = {**out[node], "input": inputs}
        return out

    async def post_convert(self, request: web.Request) -> web.Response:
        """A workflow in the other format: {"workflow", "to": "api" | "ui"} -> {"workflow",
        "warnings"} (nodegraph.ui_format; the canvas opens and saves ComfyUI canvas files)."""
        try:
            body = await read_json(request, empty_ok=False)
            if not isinstance(body, dict) or body.get("to") not in ("api", "ui"):
                text = 'Expected {"workflow", "to": "api" | "ui"}.'
                raise BadRequest(error_body("invalid_workflow", text))
            converted = await asyncio.to_thread(self._convert, body.get("workflow"), body["to"])
        except BadRequest as exc:
            return web.json_response(exc.body, status=exc.status)
        return web.json_response(converted)

    def _convert(self, workflow: Any, to: str) -> dict[str, Any]:
        try:
            kind = ui_format.detect_format(workflow)
            if kind is None:
                raise ui_format.WorkflowFileError("not a workflow (API or ComfyUI canvas format)")
            if to == "api":
                api, warnings = ui_format.to_api(kind, workflow, self.registry)
                return {"workflow": api, "warnings": warnings}
            api, _ = ui_format.to_api(kind, workflow, self.registry)
            return {"workflow": ui_format.api_to_ui(api, self.registry), "warnings": []}
        except ui_format.WorkflowFileError as exc:
            raise BadRequest(error_body("invalid_workflow", str(exc))) from None

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(_system_stats, self.config.device))

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(sorted(_model_folders(self.registry)))

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(_embeddings, self.config.model_dirs))

    async def extensions(self, request: web.Request) -> web.Response:
        """ComfyUI's list of front-end extension scripts: nodegraph's canvas loads none."""
        return web.json_response([])

    async def view_metadata(self, request: web.Request) -> web.Response:
        """A .safetensors model's `__metadata__` header, as ComfyUI answers `GET
        /view_metadata/{folder}?filename=`; 404 for another format or no metadata."""
        folder, name = request.match_info["folder_name"], request.query.get("filename", "")
        if not name.endswith(".safetensors"):
            return refuse(404, "Only a .safetensors model has metadata to view.")
        found = await asyncio.to_thread(_safetensors_metadata, folder, name, self.config.model_dirs)
        if found is None:
            return refuse(404, f"No {folder} model '{name}' with safetensors metadata.")
        return web.json_response(found)

    async def models_in(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        found = _model_folders(self.registry).get(folder)
        if found is None:
            return refuse(404, f"No model folder '{folder}'.")
        return web.json_response(found)

    # -- websocket ------------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        if len(client_id) > MAX_ID:
            return refuse(400, f"clientId must be at most {MAX_ID} characters.")
        if len(self.hub) >= self.config.limits.max_ws_clients:
            return refuse(429, "Too many websocket connections (--max-ws-clients).")
        ws = ClientWebSocket(heartbeat=30, max_msg_size=1 << 16)
        await ws.prepare(request)
        conn = Connection(client_id, ws)
        self.hub.add(conn)
        try:
            conn.put(message("status", {"status": self.status(), "sid": client_id}))
            for job, node in self.worker.running_nodes() if self.worker else ():
                if job.client_id == client_id:  # a reconnect
                    data = {"node": node, "display_node": node, "prompt_id": job.prompt_id}
                    conn.put(message("executing", data))
            async for _ in ws:  # clients may send feature flags; nothing to answer
                pass
        finally:
            self.hub.remove(conn)
            await conn.close()
        return ws

    # -- the web canvas ---------------------------------------------------------------------------

    async def web_file(self, request: web.Request) -> web.StreamResponse:
        root = self.config.web_dir
        tail = request.match_info.get("tail", "") or "index.html"
        if root is None or not root.is_dir():
            if tail == "index.html":
                return web.Response(
                    text="nodegraph server: the web canvas is not built (web/dist is missing).\n",
                    content_type="text/plain",
                )
            return refuse(404, "Not found.")
        try:
            path = confined(root, tail)
        except UnsafePath:
            return refuse(404, "Not found.")
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            return refuse(404, "Not found.")
        headers = {"Content-Type": WEB_TYPES.get(path.suffix.lower(), "application/octet-stream")}
        if path.suffix.lower() == ".html":
            headers["Content-Security-Policy"] = INDEX_CSP
            headers["Cache-Control"] = "no-cache"
        return web.FileResponse(path, headers=headers)


def free_flags(body: Any) -> dict[str, bool]:
    """POST /free's switches (false when left out); BadRequest naming a wrong one."""
    if not isinstance(body, dict):
        raise BadRequest(error_body("refused", "The body must be a JSON object."))
    flags = {key: body.get(key, False) for key in FREE_FLAGS}
    for key, value in flags.items():
        if not isinstance(value, bool):
            text = f"'{key}' must be true or false, not {json.dumps(value)}."
            raise BadRequest(error_body("refused", text))
    return flags


async def _clear_or_delete(
    request: web.Request, remove: Callable[[list[str] | None], object]
) -> web.Response:
    """POST /queue and /history: `{clear: true}` removes all, `{delete: [ids]}` those ids."""
    try:
        body = await read_json(request)
    except BadRequest as exc:
        return web.json_response(exc.body, status=exc.status)
    if not isinstance(body, dict):
        return refuse(400, "The body must be a JSON object.")
    if body.get("clear"):
        remove(None)
    delete = body.get("delete")
    if isinstance(delete, list):
        remove([str(p) for p in delete])
    return web.Response(status=200)


def _int_query(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number") from None
    if name == "max_items" and number < 0:
        raise ValueError("max_items cannot be negative")
    return number


def _model_folders(registry: Registry) -> dict[str, list[str]]:
    """Model kinds and their files, read from the choices of ComfyUI-named model inputs."""
    kinds = {"ckpt_name": "checkpoints", "vae_name": "vae", "lora_name": "loras"}
    found: dict[str, set[str]] = {}
    for name in registry:
        cls = registry.get(name)
        for input_name, spec in cls.spec.inputs.items() if cls else ():
            if input_name in kinds:
                try:
                    choices = spec.choices() or ()
                except Exception:
                    choices = ()
                found.setdefault(kinds[input_name], set()).update(choices)
    return {k: sorted(v) for k, v in found.items()}


def _embeddings(model_dirs: tuple[Path, ...]) -> list[str]:
    """The embeddings of the node library's models folders (none without the library)."""
    try:
        from nodes.formats.textual_inversion import embedding_names
        from nodes.loading.folders import kind_dirs
    except ImportError:
        return []
    return embedding_names(kind_dirs("embeddings", [str(d) for d in model_dirs]))


def _safetensors_metadata(
    kind: str, name: str, model_dirs: tuple[Path, ...]
) -> dict[str, Any] | None:
    """The `__metadata__` of a safetensors model the node library lists; None when there is no
    such model or it has no metadata."""
    try:
        from safetensors import safe_open

        from nodes.loading.folders import find_model
    except ImportError:
        return None
    try:
        model = find_model(kind, name, [str(d) for d in model_dirs])
        if model.format != "safetensors" or not model.path.is_file():
            return None
        with safe_open(str(model.path), framework="numpy") as f:
            metadata = f.metadata()
    except Exception:  # not found, unreadable, or a damaged header
        return None
    return dict(metadata) if metadata else None


def _system_stats(device: str | None) -> dict[str, Any]:
    ram_total = ram_free = 0
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        ram_total = pages * size
        ram_free = os.sysconf("SC_AVPHYS_PAGES") * size
    except (ValueError, OSError, AttributeError):
        pass
    devices = []
    torch_version = ""
    try:
        import torch

        torch_version = torch.__version__
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                devices.append(
                    {
                        "name": torch.cuda.get_device_name(i),
                        "type": "cuda",
                        "index": i,
                        "vram_total": total,
                        "vram_free": free,
                        "torch_vram_total": total,
                        "torch_vram_free": free,
                    }
                )
    except Exception:
        pass
    if not devices:
        devices.append(
            {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": ram_total,
                "vram_free": ram_free,
                "torch_vram_total": ram_total,
                "torch_vram_free": ram_free,
            }
        )
    return {
        "system": {
            "os": os.name,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "python_version": sys.version,
            "pytorch_version": torch_version,
            "embedded_python": False,
            "platform": platform.platform(),
            "nodegraph_version": _version(),
            "configured_device": device,
        },
        "devices": devices,
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nodegraph")
    except Exception:
        return "unknown"


async def _default_headers(request: web.Request, response: web.StreamResponse) -> None:
    for key, value in security_headers().items():
        response.headers.setdefault(key, value)


def create_app(config: ServerConfig, registry: Registry | None = None) -> web.Application:
    """The application; its startup opens the store (recovering from a crash) and the worker."""
    limits = config.limits
    app = web.Application(
        middlewares=[Guard(config).middleware, storage_faults],
        client_max_size=max(limits.max_body_bytes, limits.max_upload_bytes) + 65536,
    )
    server = Server(config, registry)
    app[CONFIG] = config
    app[SERVER] = server
    app.on_startup.append(server.startup)
    app.on_shutdown.append(server.shutdown)
    app.on_response_prepare.append(_default_headers)
    routes = [
        ("POST", "/prompt", server.post_prompt),
        ("POST", "/sweep", server.post_sweep),
        ("POST", "/workflow/convert", server.post_convert),
        ("GET", "/sweep/{sweep_id}", server.get_sweep),
        ("GET", "/prompt", server.get_prompt),
        ("GET", "/queue", server.get_queue),
        ("POST", "/queue", server.post_queue),
        ("POST", "/interrupt", server.post_interrupt),
        ("POST", "/free", server.post_free),
        ("GET", "/history", server.get_history),
        ("GET", "/history/{prompt_id}", server.get_history_item),
        ("POST", "/history", server.post_history),
        ("GET", "/view", files.view),
        ("POST", "/upload/image", files.upload_image),
        ("POST", "/upload/mask", files.upload_mask),
        ("GET", "/extensions", server.extensions),
        ("GET", "/view_metadata/{folder_name}", server.view_metadata),
        ("GET", "/object_info", server.object_info),
        ("GET", "/object_info/{node_class}", server.object_info_one),
        ("GET", "/system_stats", server.system_stats),
        ("GET", "/models", server.models),
        ("GET", "/embeddings", server.embeddings),
        ("GET", "/models/{folder}", server.models_in),
        ("GET", "/cluster", server.get_cluster),
        ("GET", "/ws", server.websocket),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
    app.router.add_get("/", server.web_file)
    app.router.add_get("/{tail:.*}", server.web_file)
    return app
