"""Which worker runs which queued job: by what each worker's cache already holds, then the
models it has loaded, then how busy it is. Pure bookkeeping (no Ray), so the policy is tested
and measured on its own.

The policy, applied whenever a worker has a free slot (a worker holds at most SLOTS jobs: one
running and one prefetched, so no job waits behind a long line on one worker):

1. Jobs are considered in queue order. A job's *affinity* with a worker is how many of its nodes'
   ancestry signatures the worker holds: reported cached there, or being computed there by the
   jobs assigned to it. Among the workers with a free slot, the job goes to the one of highest
   affinity, then most of its models loaded, then fewest jobs.
2. A job whose highest affinity is with a worker that is full is *deferred*: it waits for that
   worker (where it re-runs only its own cone) while free workers take the later jobs of the
   queue, other users' jobs included.
3. A worker left idle (no job at all) after that, with deferred jobs waiting, takes the first of
   them (a sweep spreads over an idle cluster: the idle worker recomputes the shared part once,
   then holds it too). A free worker is never idle while the queue holds work it may take.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SLOTS = 2
"""Jobs a worker holds at most: the one it runs and one prefetched."""


@dataclass(frozen=True)
class Needs:
    """What a job needs: the ancestry signatures of its planned nodes and its model files."""

    keys: frozenset[str]
    models: frozenset[str] = frozenset()


@dataclass
class WorkerState:
    """The router's view of one worker, kept from its reports and the jobs sent to it."""

    id: str
    held: set[str] = field(default_factory=set)
    """Signatures its cache holds (its last report)."""
    models: set[str] = field(default_factory=set)
    """Model files it has loaded (its last report)."""
    jobs: dict[str, Needs] = field(default_factory=dict)
    """Jobs assigned to it and not finished, running first."""
    pending: Counter[str] = field(default_factory=Counter)
    """Signatures its assigned jobs will compute (a count per job)."""
    alive: bool = True

    @property
    def free(self) -> bool:
        return self.alive and len(self.jobs) < SLOTS

    @property
    def idle(self) -> bool:
        return self.alive and not self.jobs

    def has(self, key: str) -> bool:
        return key in self.held or self.pending[key] > 0

    def affinity(self, needs: Needs) -> int:
        return sum(1 for key in needs.keys if self.has(key))


@dataclass(frozen=True)
class Assignment:
    prompt_id: str
    worker: str
    reason: str
    """"affinity" (it holds some of the job's upstream), "spread" (an idle worker took a
    deferred job) or "least busy" (no worker holds any of it)."""
    affinity: int
    """How many of the job's signatures the chosen worker holds."""
    held_anywhere: int = 0
    """The most any live worker held: equal to `affinity` when the job went where the most of
    its upstream was."""


class Router:
    """Its cost per decision grows with a job's signatures and the workers holding them, not
    with the cluster's size: an index maps each signature to the workers that have it."""

    def __init__(self, worker_ids: Iterable[str] = ()) -> None:
        self.workers: dict[str, WorkerState] = {}
        self._holders: dict[str, set[str]] = {}
        for worker_id in worker_ids:
            self.add(worker_id)

    def add(self, worker_id: str) -> WorkerState:
        return self.workers.setdefault(worker_id, WorkerState(worker_id))

    def report(self, worker_id: str, held: Iterable[str], models: Iterable[str]) -> None:
        state = self.add(worker_id)
        old, state.held, state.models = state.held, set(held), set(models)
        self._reindex(state, old ^ state.held)

    def finished(self, worker_id: str, prompt_id: str) -> None:
        state = self.workers.get(worker_id)
        if state is not None and prompt_id in state.jobs:
            needs = state.jobs.pop(prompt_id)
            state.pending.subtract(needs.keys)
            self._reindex(state, needs.keys)

    def lost(self, worker_id: str) -> list[str]:
        """A worker died: it holds nothing now (Ray restarts it cold); its jobs, to retry."""
        state = self.add(worker_id)
        jobs = list(state.jobs)
        for prompt_id in jobs:
            self.finished(worker_id, prompt_id)
        self.report(worker_id, (), ())
        return jobs

    def held_anywhere(self, needs: Needs) -> int:
        return max(self._scores(needs).values(), default=0)

    def _scores(self, needs: Needs) -> dict[str, int]:
        """Affinity with every live worker that has any of the job's signatures."""
        scores: dict[str, int] = {}
        for key in needs.keys:
            for worker in self._holders.get(key, ()):
                scores[worker] = scores.get(worker, 0) + 1
        workers = self.workers
        return {w: n for w, n in scores.items() if workers[w].alive}

    def _reindex(self, state: WorkerState, keys: Iterable[str]) -> None:
        for key in keys:
            holders = self._holders.get(key)
            if state.has(key):
                self._holders.setdefault(key, set()).add(state.id)
            elif holders is not None:
                holders.discard(state.id)
                if not holders:
                    del self._holders[key]

    def assign(
        self, queued: Sequence[tuple[str, Needs]], exclude: dict[str, set[str]] | None = None
    ) -> list[Assignment]:
        """Place as many of `queued` (prompt id, needs; in queue order) as the free slots
        allow; `exclude` names workers a job must not go to (one it already died on)."""
        exclude = exclude or {}
        placed: list[Assignment] = []
        waiting = list(queued)
        while waiting and any(w.free for w in self.workers.values()):
            deferred: list[tuple[str, Needs]] = []
            progress = False
            for prompt_id, needs in waiting:
                choice = self._best(needs, exclude.get(prompt_id, set()))
                if choice is None:
                    deferred.append((prompt_id, needs))
                    continue
                placed.append(self._place(prompt_id, needs, *choice))
                progress = True
            waiting = deferred
            if progress:
                continue
            spread = self._spread(waiting, exclude)
            if spread is None:
                break
            placed.append(spread)
            waiting = [(p, n) for p, n in waiting if p != spread.prompt_id]
        return placed

    def _best(self, needs: Needs, banned: set[str]) -> tuple[WorkerState, str, int] | None:
        """The free worker a job should go to now, or None to defer it."""
        scores = {w: n for w, n in self._scores(needs).items() if w not in banned}
        top = max(scores.values(), default=0)
        if top > 0:
            best = [self.workers[w] for w, n in scores.items() if n == top]
            best = [w for w in best if w.free]
            if not best:
                return None  # its upstream is on a full worker: wait for it
            return self._pick(best, needs), "affinity", top
        free = [w for w in self.workers.values() if w.free and w.id not in banned]
        if not free:
            return None
        return self._pick(free, needs), "least busy", 0

    def _spread(
        self, deferred: list[tuple[str, Needs]], exclude: dict[str, set[str]]
    ) -> Assignment | None:
        for prompt_id, needs in deferred:
            idle = [
                w for w in self.workers.values()
                if w.idle and w.id not in exclude.get(prompt_id, set())
            ]  # fmt: skip
            if idle:
                worker = self._pick(idle, needs)
                return self._place(prompt_id, needs, worker, "spread", worker.affinity(needs))
        return None

    @staticmethod
    def _pick(candidates: list[WorkerState], needs: Needs) -> WorkerState:
        def rank(w: WorkerState) -> tuple[int, int, int]:
            return w.affinity(needs), len(needs.models & w.models), -len(w.jobs)

        return max(candidates, key=rank)

    def _place(
        self, prompt_id: str, needs: Needs, worker: WorkerState, reason: str, affinity: int
    ) -> Assignment:
        anywhere = self.held_anywhere(needs)
        worker.jobs[prompt_id] = needs
        worker.pending.update(needs.keys)
        self._reindex(worker, needs.keys)
        return Assignment(prompt_id, worker.id, reason, affinity, anywhere)
