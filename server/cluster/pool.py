"""The server's side of the cluster: a dispatcher that hands queued jobs to worker actors as the
router says, and one lane per actor that relays its job's stream as the one-machine Worker does
(the same messages, history records and output names), and survives the actor dying."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from nodegraph import events
from nodegraph.context import RunSettings
from nodegraph.executor import Executor

from ..hub import Hub
from ..messages import RunMessages
from ..store import ERROR, MAX_ATTEMPTS, Job, Outcome, Store
from ..worker import Freeing, Worker
from . import ClusterConfig, ClusterError
from .actor import Ended, GraphWorker, RemoteJob, Report, WorkerSpec
from .router import Assignment, Needs, Router
from .transfer import Landing, input_files

log = logging.getLogger("nodegraph.cluster")
LOOKAHEAD = 64
"""Queued jobs the dispatcher considers at once (in queue order)."""
RECENT = 200
"""Routing decisions kept for GET /cluster."""
REPORT_TIMEOUT = 2.0
FREE_TIMEOUT = 120.0
"""Seconds a worker may take to free memory (it waits for its running job first)."""


class Lane(Worker):
    """Runs the jobs assigned to one worker actor, one at a time, relaying its stream."""

    def __init__(self, cluster: Cluster, worker_id: str, actor: Any) -> None:
        super().__init__(
            None, cluster.store, cluster.settings, cluster.hub, cluster.loop,
            cluster.on_queue_change, previews=cluster.previews,
        )  # fmt: skip
        self.cluster, self.worker_id, self.actor = cluster, worker_id, actor
        self._thread.name = f"nodegraph-{worker_id}"
        self._assigned: collections.deque[Job] = collections.deque()
        self.alive = True
        self.last_report: Report | None = None

    def give(self, job: Job) -> None:
        with self._wake:
            self._assigned.append(job)
            self._wake.notify()

    def take_back(self) -> list[Job]:
        """The assigned jobs not started yet (the server stops, or this worker died)."""
        with self._wake:
            jobs, self._assigned = list(self._assigned), collections.deque()
        return jobs

    def _next_job(self) -> Job | None:
        if not self.alive and not self._revive():
            return None
        with self._wake:
            return self._assigned.popleft() if self._assigned else None

    def _revive(self) -> bool:
        """Whether the actor (restarted by Ray, cold) answers again."""
        import ray

        try:
            ray.get(self.actor.ping.remote(), timeout=REPORT_TIMEOUT)
        except Exception:
            return False
        self.alive = True
        self.cluster.revived(self.worker_id)
        return True

    def _outcome(self, job: Job, final: str, run: RunMessages) -> Outcome:
        return replace(super()._outcome(job, final, run), worker=self.worker_id)

    def _release(self, asked: Freeing) -> None:
        """POST /free on the actor, and the router told what it holds now."""
        import ray

        ray.get(self.actor.free.remote(asked), timeout=FREE_TIMEOUT)
        self.cluster.reported(ray.get(self.actor.report.remote(), timeout=REPORT_TIMEOUT))

    def _run(self, job: Job, interrupt: threading.Event) -> None:
        try:
            super()._run(job, interrupt)
        finally:
            self.cluster.job_left(self.worker_id, job.prompt_id)

    def _execute(self, job: Job, run: RunMessages, interrupt: threading.Event) -> str | None:
        import ray

        try:
            remote = RemoteJob(
                job.prompt_id, job.prompt, job.extra_data or {}, self.cluster.keys_of(job),
                input_files(job.prompt, Path(self.settings.input_dir or ".")), run.previews,
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            self._post(job.client_id, [run.crashed(exc)])
            return "failed"
        done = threading.Event()
        relay = threading.Thread(
            target=self._relay_interrupt, args=(job.prompt_id, interrupt, done), daemon=True
        )
        relay.start()
        try:
            stream = self.actor.run.options(num_returns="streaming").remote(remote)
            ended: Ended | None = None
            for ref in stream:
                item = ray.get(ref)
                if isinstance(item, Ended):
                    ended = item
                    break
                for event, files in item:
                    self._post(job.client_id, run.translate(self._landed(event, files)))
        except ray.exceptions.RayError as exc:
            return self.cluster.worker_died(self, job, run, exc)
        finally:
            done.set()
        if ended is None:
            return self.cluster.worker_died(self, job, run, RuntimeError("the stream ended"))
        self.last_report = ended.report
        self.cluster.reported(ended.report)
        if ended.status == "crashed":
            crash = RuntimeError(ended.error)
            self._post(job.client_id, [run.crashed(crash)])
            return "failed"
        return ended.status

    def _landed(self, event: events.Event, files: tuple) -> events.Event:
        if files and isinstance(event, events.NodeFinished):
            return replace(event, ui=self.cluster.landing.land(self.worker_id, event.ui, files))
        return event

    def _relay_interrupt(self, prompt_id: str, flag: threading.Event, done: threading.Event):
        while not done.is_set():
            if flag.wait(0.05):
                with contextlib.suppress(Exception):
                    self.actor.interrupt.remote(prompt_id)
                return


class Cluster:
    """Stands where the one-machine Worker stands in the server (start, wake, interrupt, stop,
    running_nodes), with a pool of worker actors behind it."""

    def __init__(
        self,
        config: ClusterConfig,
        spec: WorkerSpec,
        executor: Executor,
        store: Store,
        settings: RunSettings,
        hub: Hub,
        loop: asyncio.AbstractEventLoop,
        on_queue_change: Callable[[], None],
        previews: Callable[[dict], bool] = lambda extra_data: True,
    ) -> None:
        self.config, self.spec, self.executor = config, spec, executor
        self.store, self.settings, self.hub, self.loop = store, settings, hub, loop
        self.on_queue_change, self.previews = on_queue_change, previews
        folders = {"output": Path(settings.output_dir), "temp": Path(settings.temp_dir)}
        self.landing = Landing(folders)
        self.router = Router()
        self.lanes: dict[str, Lane] = {}
        self.routes: collections.deque[Assignment] = collections.deque(maxlen=RECENT)
        self.route_seconds: list[float] = []
        """Time the router took per dispatch pass (bench/cluster.py reads it)."""
        self._needs: dict[str, Needs] = {}
        self._keys: dict[str, dict[str, str]] = {}
        self._exclude: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self._stopping = False
        self._started_ray = False
        self._thread = threading.Thread(target=self._dispatch, name="nodegraph-dispatch",
                                        daemon=True)  # fmt: skip

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start or join Ray and the worker actors (blocking; ClusterError if it cannot)."""
        import ray

        from .connect import connect, worker_options

        self._started_ray = connect(self.config)
        options = worker_options(self.config)
        remote = ray.remote(GraphWorker)
        actors = {}
        for index in range(self.config.workers):
            worker_id = f"w{index}"
            spec = replace(self.spec, worker_id=worker_id)
            actors[worker_id] = remote.options(**options).remote(spec)
        try:
            ray.get([a.ping.remote() for a in actors.values()], timeout=300)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError("the worker actors did not start within 300 s") from None
        except ray.exceptions.RayError as exc:
            raise ClusterError(f"a worker actor failed to start: {exc}") from None
        for worker_id, actor in actors.items():
            self.router.add(worker_id)
            self.lanes[worker_id] = Lane(self, worker_id, actor)
        for lane in self.lanes.values():
            lane.start()
        self._thread.start()
        log.info("cluster: %d worker(s) ready", len(self.lanes))

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        asked = [lane.interrupt(prompt_id) for lane in self.lanes.values()]
        return any(asked)

    def running_nodes(self) -> list[tuple[Job, str]]:
        return [r for lane in self.lanes.values() for r in lane.running_nodes()]

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """POST /free: each worker frees memory after its running job."""
        for lane in self.lanes.values():
            lane.request_free(unload_models, free_memory)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop dispatching; running jobs are interrupted and go back to the queue, as do
        jobs assigned and not started."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        for lane in self.lanes.values():
            for job in lane.take_back():
                with contextlib.suppress(Exception):
                    self.store.requeue(job.prompt_id)
        for lane in self.lanes.values():
            lane.stop(timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._shutdown_ray()

    def _shutdown_ray(self) -> None:
        import ray

        for lane in self.lanes.values():
            with contextlib.suppress(Exception):
                ray.kill(lane.actor)
        if self._started_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()

    # -- what lanes tell the cluster -----------------------------------------------------------

    def keys_of(self, job: Job) -> dict[str, str]:
        with self._lock:
            return self._keys.get(job.prompt_id, {})

    def reported(self, report: Report) -> None:
        with self._lock:
            self.router.report(report.worker_id, report.held, report.models)

    def job_left(self, worker_id: str, prompt_id: str) -> None:
        with self._lock:
            self.router.finished(worker_id, prompt_id)
            if self.store.state_of(prompt_id) != "queued":  # done (a retry keeps its needs)
                self._needs.pop(prompt_id, None)
                self._keys.pop(prompt_id, None)
                self._exclude.pop(prompt_id, None)
        self.wake()

    def revived(self, worker_id: str) -> None:
        with self._lock:
            self.router.report(worker_id, (), ())
            self.router.workers[worker_id].alive = True
        log.warning("cluster: worker %s is back (cold)", worker_id)
        self.wake()

    def worker_died(self, lane: Lane, job: Job, run: RunMessages, exc: BaseException) -> None:
        """The actor running `job` died: retry the job once elsewhere, or fail it; jobs assigned
        to it and not started go back to the queue. None: the job did not end on this lane
        (or it was recorded failed here)."""
        log.warning("cluster: worker %s died running %s: %s", lane.worker_id, job.prompt_id, exc)
        lane.alive = False
        with self._lock:
            self.router.lost(lane.worker_id)
            self.router.workers[lane.worker_id].alive = False
            self._exclude.setdefault(job.prompt_id, set()).add(lane.worker_id)
        for waiting in lane.take_back():
            with contextlib.suppress(Exception):
                self.store.requeue(waiting.prompt_id)
        if job.attempts < MAX_ATTEMPTS and not lane._stopping:
            self.store.retry(job.prompt_id)
            log.warning("cluster: job %s queued again for another worker", job.prompt_id)
            return None
        failure = events.RunFailed(
            run_id=job.prompt_id, node_id=None, class_type=None,
            message=f"The cluster worker running this job died ({lane.worker_id}: {exc}), "
            f"{job.attempts} times; it is not tried again.",
            exception_type="WorkerDied", traceback="", executed=(),
        )  # fmt: skip
        lane._post(job.client_id, [run.failed(failure)])
        if lane._record(job, Outcome(ERROR, {}, run.history, {}, lane.worker_id), run):
            lane._post(job.client_id, [run.done()])
        return None

    # -- dispatching ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
                self._wake.wait(0.5)
                if self._stopping:
                    return
            try:
                self._dispatch_once()
            except Exception:  # a store failure: try again at the next wake
                log.exception("cluster: dispatch failed")

    def _dispatch_once(self) -> None:
        with self._lock:
            if not any(w.free for w in self.router.workers.values()):
                return
        queued = self.store.queued(LOOKAHEAD)
        if not queued:
            return
        candidates = [(job.prompt_id, self._needs_of(job)) for job in queued]
        started = time.perf_counter()
        with self._lock:
            placed = self.router.assign(candidates, self._exclude)
        self.route_seconds.append(time.perf_counter() - started)
        for assignment in placed:
            job = self.store.claim(assignment.prompt_id)
            if job is None:  # deleted from the queue meanwhile
                with self._lock:
                    self.router.finished(assignment.worker, assignment.prompt_id)
                continue
            self.routes.append(assignment)
            self.lanes[assignment.worker].give(job)
        if placed:
            self.on_changed()

    def on_changed(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.on_queue_change)

    def _needs_of(self, job: Job) -> Needs:
        with self._lock:
            known = self._needs.get(job.prompt_id)
        if known is not None:
            return known
        try:
            plan = self.executor.validate(job.prompt, self.settings)
            keys = self.executor.keys(plan, self.settings)
            models = frozenset(
                Path(value).name
                for step in plan.steps.values()
                if "loaders" in step.cls.category
                for value in step.literals.values()
                if isinstance(value, str)
            )
        except Exception as exc:  # it no longer validates: it fails wherever it runs
            log.debug("cluster: no signatures for %s: %r", job.prompt_id, exc)
            keys, models = {}, frozenset()
        needs = Needs(frozenset(keys.values()), models)
        with self._lock:
            self._needs[job.prompt_id], self._keys[job.prompt_id] = needs, keys
        return needs

    # -- GET /cluster ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        import ray

        lanes = list(self.lanes.values())
        refs = [lane.actor.report.remote() for lane in lanes]
        workers = []
        for lane, ref in zip(lanes, refs, strict=True):
            try:
                report, alive = ray.get(ref, timeout=REPORT_TIMEOUT), True
            except Exception:
                report, alive = lane.last_report, False
            entry = asdict(report) if report is not None else {"worker_id": lane.worker_id}
            held = entry.pop("held", ())
            entry["id"] = entry.pop("worker_id")
            entry["alive"] = alive and lane.alive
            entry["models"] = list(entry.get("models", ()))
            entry["held_signatures"] = len(held)
            with self._lock:
                entry["jobs"] = list(self.router.workers[lane.worker_id].jobs)
            workers.append(entry)
        recent = [asdict(a) for a in list(self.routes)]
        return {"workers": workers, "routes": recent}
