"""The one worker thread: takes jobs from the store, runs them, records how they ended.

It shares one Executor (so one cache and the loaded models) across all jobs. Events go to the
submitting client's websockets through the event loop; the history record is written before the
final `executing` (node null) message, so a client that saw it can fetch /history at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from nodegraph import events
from nodegraph.context import RunSettings
from nodegraph.executor import Executor

from .faults import is_storage_fault
from .hub import Hub
from .messages import RunMessages
from .store import ERROR, SUCCESS, Job, Outcome, Store

log = logging.getLogger("nodegraph.server")
RETRY_FIRST, RETRY_MOST = 0.25, 5.0
"""Seconds between tries to write to a failing store (a full disk): doubling up to the most."""


class Worker:
    def __init__(
        self,
        executor: Executor | None,
        store: Store,
        settings: RunSettings,
        hub: Hub,
        loop: asyncio.AbstractEventLoop,
        on_queue_change: Callable[[], None],
        previews: Callable[[dict], bool] = lambda extra_data: True,
    ) -> None:
        self.executor, self.store, self.settings = executor, store, settings
        self.previews = previews
        """Whether a job's run sends live previews, from its extra_data."""
        self.hub, self.loop, self.on_queue_change = hub, loop, on_queue_change
        self._wake = threading.Condition()
        self._stopping = False
        self._current: Job | None = None
        self._run_messages: RunMessages | None = None
        self._interrupt: threading.Event | None = None
        self._outbox: list[tuple[str, list[str | bytes]]] = []
        self._outbox_lock = threading.Lock()
        self._flush_pending = False
        self._store_failing: str | None = None
        """What the last failed store call was doing (logged once until it works again)."""
        self._freeing = Freeing()
        """What POST /free asked for, done between jobs."""
        self._thread = threading.Thread(target=self._main, name="nodegraph-worker", daemon=True)

    @property
    def current(self) -> Job | None:
        return self._current

    def running_nodes(self) -> list[tuple[Job, str]]:
        """The running job and the node it is in now (for a client that reconnects)."""
        job, run = self._current, self._run_messages
        if job is None or run is None or run.current is None:
            return []
        return [(job, run.current[0])]

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop the running job (only if it is `prompt_id`, when given); whether one was asked."""
        with self._wake:
            job, flag = self._current, self._interrupt
            if (
                job is None
                or flag is None
                or (prompt_id is not None and job.prompt_id != prompt_id)
            ):
                return False
            flag.set()
            return True

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """Free memory between jobs (ComfyUI's POST /free): `unload_models` moves the models off
        the device, `free_memory` also drops the cache and the loaded models."""
        with self._wake:
            self._freeing = self._freeing.adding(unload_models, free_memory)
            self._wake.notify()

    def _free_now(self) -> None:
        """Do what POST /free asked for since the last time (never during a job)."""
        with self._wake:
            asked, self._freeing = self._freeing, Freeing()
        if asked:
            try:
                self._release(asked)
            except Exception:  # a worker that cannot free memory still runs jobs
                log.exception("could not free memory as asked")

    def _release(self, asked: Freeing) -> None:
        assert self.executor is not None
        release_memory(self.executor, asked)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; the running one is interrupted and goes back to the queue."""
        with self._wake:
            self._stopping = True
            if self._interrupt is not None:
                self._interrupt.set()
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _post(self, client_id: str | None, frames: list[str | bytes]) -> None:
        """Hand frames to the loop; frames posted before the loop got to them go in one call."""
        if not frames:
            return
        with self._outbox_lock:
            self._outbox.append((client_id, frames))
            if self._flush_pending:
                return
            self._flush_pending = True
        # RuntimeError: the loop is closed, the server is going down
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._outbox_lock:
            batch, self._outbox, self._flush_pending = self._outbox, [], False
        for client_id, frames in batch:
            self.hub.send(client_id, frames)

    def _changed(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.on_queue_change)

    def _main(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
            self._free_now()
            job = self._next_job()
            if job is None:
                self._pause(1.0)
                continue
            with self._wake:
                self._current, self._interrupt = job, threading.Event()
                interrupt = self._interrupt
                if self._stopping:  # stop() came between the check and the claim
                    interrupt.set()
            self._changed()
            try:
                self._run(job, interrupt)
            except Exception:  # never let one job take the worker down
                log.exception("job %s could not be recorded", job.prompt_id)
            finally:
                with self._wake:
                    self._current = self._interrupt = self._run_messages = None
            self._changed()

    def _next_job(self) -> Job | None:
        """The job to run next (claimed: running in the store), or None for now."""
        try:
            job = self.store.claim_next()
            self._store_works()
            return job
        except Exception as exc:
            self._store_fails("take the next job", exc)
            return None

    def _execute(self, job: Job, run: RunMessages, interrupt: threading.Event) -> str | None:
        """Run the job, its events posted as messages; "success", "failed", "interrupted",
        or None when it did not end here (it was handed back to the queue)."""

        def on_event(event: events.Event) -> None:
            self._post(job.client_id, run.translate(event))

        try:
            return self.executor.run(
                job.prompt,
                self.settings,
                on_event=on_event,
                extra=job.extra_data,
                interrupt=interrupt,
                run_id=job.prompt_id,
            ).status
        except BaseException as exc:  # the workflow no longer validates, a node called exit, ...
            log.warning("job %s failed outside its nodes: %r", job.prompt_id, exc)
            self._post(job.client_id, [run.crashed(exc)])
            return "failed"

    def _outcome(self, job: Job, final: str, run: RunMessages) -> Outcome:
        return Outcome(final, run.outputs, run.history, run.meta)

    def _run(self, job: Job, interrupt: threading.Event) -> None:
        run = RunMessages(job.prompt_id, self.previews(job.extra_data or {}))
        self._run_messages = run
        client = job.client_id
        status = self._execute(job, run, interrupt)
        if status is None:
            return
        if status == "interrupted" and self._stopping:
            try:
                self.store.requeue(job.prompt_id)
                log.info("job %s stopped by shutdown; queued again", job.prompt_id)
            except Exception as exc:  # it stays running in the store: the next start queues it
                log.warning("job %s stopped; not queued again now: %s", job.prompt_id, exc)
            return
        final = SUCCESS if status == "success" else ERROR
        if self._record(job, self._outcome(job, final, run), run):
            self._post(client, [run.done()])

    def _record(self, job: Job, outcome: Outcome, run: RunMessages) -> bool:
        """Write how the job ended, trying again while the store fails (a full disk) until it
        works or the server stops (the job then stays running in the store, and the next start
        queues it again). Outputs the store refuses (not JSON) make the job a failure."""
        delay, fallback = RETRY_FIRST, False
        while True:
            try:
                self.store.finish(job.prompt_id, outcome)
                self._store_works()
                return True
            except Exception as exc:
                if not is_storage_fault(exc):
                    if fallback:
                        raise  # even the failure cannot be written: a bug, logged by _main
                    fallback = True
                    log.warning("job %s: its outputs cannot be stored: %r", job.prompt_id, exc)
                    self._post(job.client_id, [run.failed(_unstorable(job, exc))])
                    outcome = Outcome(ERROR, {}, run.history, {})
                    continue
                self._store_fails(f"record the end of job {job.prompt_id}", exc)
            if not self._pause(delay):
                return False
            delay = min(delay * 2, RETRY_MOST)

    def _pause(self, seconds: float) -> bool:
        """Wait up to `seconds` (a submission or a stop ends it sooner); False when stopping."""
        with self._wake:
            if not self._stopping:
                self._wake.wait(seconds)
            return not self._stopping

    def _store_fails(self, doing: str, exc: BaseException) -> None:
        if self._store_failing != doing:
            log.warning("cannot %s: %s; trying again until it works", doing, exc)
        self._store_failing = doing

    def _store_works(self) -> None:
        if self._store_failing is not None:
            log.info("the store works again (after failing to %s)", self._store_failing)
        self._store_failing = None


@dataclass(frozen=True)
class Freeing:
    """What POST /free asked for: `unload_models` (implied by `free_memory`), `free_memory`."""

    unload_models: bool = False
    free_memory: bool = False

    def adding(self, unload_models: bool, free_memory: bool) -> Freeing:
        free = self.free_memory or free_memory
        return Freeing(self.unload_models or unload_models or free, free)

    def __bool__(self) -> bool:
        return self.unload_models or self.free_memory


def release_memory(executor: Executor, asked: Freeing) -> None:
    """ComfyUI's handling of POST /free after a prompt: the cache emptied (`free_memory`), the
    node modules asked to move their models off the device and, for `free_memory`, to drop them."""
    if asked.free_memory:
        executor.cache.clear()
        executor.registry.free_memory()
    if asked.unload_models:
        executor.registry.unload_models()
    gc.collect()


def _unstorable(job: Job, exc: BaseException) -> events.RunFailed:
    """The failure of a job whose outputs could not be stored."""
    return events.RunFailed(
        run_id=job.prompt_id,
        node_id=None,
        class_type=None,
        message=f"The job's outputs could not be stored: {exc}",
        exception_type=type(exc).__name__,
        traceback="",
        executed=(),
    )
