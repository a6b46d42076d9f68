"""The worker actor: one per GPU (or CPU slot), with its own executor, cache and loaded models.

A job arrives with its workflow, its input files' bytes and the server's signature of each node;
`run` streams back batches of engine events, each picture a node showed with its bytes (no shared
file system), and ends with a report of what the worker holds: the server's signatures of its
cache entries (the worker's own keys can differ, e.g. a loader's key names its device), the model
files it has loaded. Ray is imported only for the worker's GPU ids.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nodegraph import events
from nodegraph.cache import Cache
from nodegraph.context import RunSettings
from nodegraph.executor import Executor
from nodegraph.files import atomic_write, confined
from nodegraph.registry import registry_from
from nodegraph.validate import Limits as EngineLimits

from ..messages import preview_frame
from ..worker import Freeing, release_memory

SHOWN_FOLDERS = ("output", "temp")
"""`type`s of the files nodes show that travel back to the server."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is built from (sent by the server; plain data)."""

    worker_id: str
    options: Mapping[str, Any]
    """The node library's settings (model folders, device, threads), as on one machine."""
    cache_bytes: int | None = None
    max_nodes: int = 10_000
    node_packages: tuple[str, ...] = ()
    default_nodes: bool = True


@dataclass(frozen=True)
class RemoteJob:
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    keys: dict[str, str]
    """The server's signature of each planned node."""
    inputs: dict[str, bytes] = field(default_factory=dict)
    """Input files the workflow names, by their name in the server's input folder."""
    previews: bool = False


@dataclass(frozen=True)
class ShownFile:
    type: str
    subfolder: str
    filename: str
    data: bytes


@dataclass(frozen=True)
class Report:
    """What a worker holds and has done (compact: signatures, names, counts)."""

    worker_id: str
    pid: int
    device: str
    cuda_visible_devices: str | None
    held: tuple[str, ...]
    models: tuple[str, ...]
    jobs_done: int
    cache_entries: int
    busy: bool
    free_device_bytes: int | None


@dataclass(frozen=True)
class Ended:
    """The last item of a job's stream."""

    status: str
    """"success", "failed", "interrupted", or "crashed" (raised outside the nodes)."""
    report: Report
    error: str = ""
    error_type: str = ""


Item = tuple[events.Event, tuple[ShownFile, ...]]


class GraphWorker:
    """Runs one job at a time (a lock), answers reports and interrupts meanwhile (threads)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.registry = registry_from(spec.node_packages, spec.default_nodes)
        self.registry.configure(spec.options)
        cache = Cache(spec.cache_bytes) if spec.cache_bytes is not None else Cache()
        self.executor = Executor(self.registry, cache, EngineLimits(max_nodes=spec.max_nodes))
        self.root = Path(tempfile.mkdtemp(prefix=f"nodegraph-{spec.worker_id}-"))
        self.settings = RunSettings(
            output_dir=self.root / "output",
            temp_dir=self.root / "temp",
            input_dir=self.root / "input",
            confine_inputs=True,
            options=spec.options,
        )
        self._server_keys: dict[str, str] = {}
        """This worker's cache key -> the server's signature of the same node."""
        self._lock = threading.Lock()
        self._running: tuple[str, threading.Event] | None = None
        self.jobs_done = 0

    def ping(self) -> int:
        return os.getpid()

    def report(self) -> Report:
        cache = self.executor.cache
        held = tuple(server for mine, server in self._server_keys.items() if mine in cache)
        return Report(
            worker_id=self.spec.worker_id,
            pid=os.getpid(),
            device=str(_device(self.spec.options)),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            held=held,
            models=tuple(self.registry.loaded_models()),
            jobs_done=self.jobs_done,
            cache_entries=len(cache),
            busy=self._running is not None,
            free_device_bytes=_free_device_bytes(self.spec.options),
        )

    def interrupt(self, prompt_id: str | None = None) -> bool:
        running = self._running
        if running is None or (prompt_id is not None and running[0] != prompt_id):
            return False
        running[1].set()
        return True

    def run(self, job: RemoteJob) -> Iterator[list[Item] | Ended]:
        """The job's events in batches (what arrived since the last batch), then `Ended`."""
        with self._lock:
            flag = threading.Event()
            self._running = (job.prompt_id, flag)
            try:
                yield from self._stream(job, flag)
            finally:
                self._running = None

    def _stream(self, job: RemoteJob, flag: threading.Event) -> Iterator[list[Item] | Ended]:
        self._receive(job.inputs)
        out: queue.SimpleQueue[Item | Ended] = queue.SimpleQueue()

        def on_event(event: events.Event) -> None:
            out.put(self._item(event, job.previews))

        def work() -> None:
            try:
                result = self.executor.run(
                    job.prompt, self.settings, on_event=on_event, extra=job.extra_data,
                    interrupt=flag, run_id=job.prompt_id,
                )  # fmt: skip
            except BaseException as exc:  # the workflow no longer validates here, ...
                report = replace(self.report(), busy=False)
                out.put(Ended("crashed", report, str(exc), type(exc).__name__))
                return
            for node_id, mine in result.keys.items():
                if node_id in job.keys:
                    self._server_keys[mine] = job.keys[node_id]
            self._forget_evicted()
            self.jobs_done += 1
            out.put(Ended(result.status, replace(self.report(), busy=False)))

        thread = threading.Thread(target=work, name=f"job-{job.prompt_id}", daemon=True)
        thread.start()
        while True:
            batch: list[Item] = []
            item = out.get()
            while True:
                if isinstance(item, Ended):
                    if batch:
                        yield batch
                    thread.join()
                    yield item
                    return
                batch.append(item)
                try:
                    item = out.get_nowait()
                except queue.Empty:
                    break
            yield batch

    def _item(self, event: events.Event, previews: bool) -> Item:
        """An event made fit to travel: previews as their JPEG frame (or none), shown pictures
        with their bytes."""
        if isinstance(event, events.Progress) and event.preview is not None:
            frame = preview_frame(event.preview) if previews else None
            return replace(event, preview=frame), ()
        if isinstance(event, events.NodeFinished) and event.ui:
            return event, tuple(self._shown_files(event.ui))
        return event, ()

    def _shown_files(self, ui: Mapping[str, Any]) -> Iterator[ShownFile]:
        for entries in ui.values():
            for entry in entries if isinstance(entries, list) else ():
                if not isinstance(entry, dict) or entry.get("type") not in SHOWN_FOLDERS:
                    continue
                folder = self.settings.output_dir if entry["type"] == "output" else (
                    self.settings.temp_dir)  # fmt: skip
                name = "/".join(p for p in (entry.get("subfolder", ""), entry["filename"]) if p)
                try:
                    data = confined(Path(folder), name).read_bytes()
                except (OSError, ValueError):
                    continue
                yield ShownFile(entry["type"], entry.get("subfolder", ""), entry["filename"], data)

    def _receive(self, inputs: Mapping[str, bytes]) -> None:
        """Write the job's input files under the names the workflow uses (unchanged ones stay)."""
        for name, data in inputs.items():
            path = confined(self.settings.input_dir, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_file() or path.read_bytes() != data:
                atomic_write(path, data)

    def free(self, asked: Freeing) -> None:
        """POST /free on this worker (after its running job, if any)."""
        with self._lock:
            release_memory(self.executor, asked)
            self._forget_evicted()

    def _forget_evicted(self) -> None:
        cache = self.executor.cache
        self._server_keys = {k: v for k, v in self._server_keys.items() if k in cache}

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _device(options: Mapping[str, Any]) -> Any:
    from nodes.devices import resolve_device

    return resolve_device(options)


def _free_device_bytes(options: Mapping[str, Any]) -> int | None:
    import torch

    device = _device(options)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)
