"""The durable queue and history: one SQLite table (WAL), written before any answer is sent.

A job moves queued -> running -> success | error. Opening the store recovers from a crash: a job
found running goes back to the queue once (its `attempts` says how often it started); a job found
running a second time is recorded as failed. History entries are finished jobs.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import history
from .history import shown_number

MAX_ATTEMPTS = 2
"""Starts a job gets: a crash while it runs re-queues it once, a second crash fails it."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    client_id TEXT,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    history_seq INTEGER,
    outputs TEXT,
    messages TEXT,
    meta TEXT,
    worker TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, number, seq);
CREATE INDEX IF NOT EXISTS jobs_by_history ON jobs (history_seq);
"""

QUEUED, RUNNING, SUCCESS, ERROR = "queued", "running", "success", "error"
FINAL = (SUCCESS, ERROR)


@dataclass(frozen=True)
class Job:
    prompt_id: str
    number: float
    client_id: str | None
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    state: str
    attempts: int

    def item(self) -> list[Any]:
        """ComfyUI's queue item: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
        number = shown_number(self.number)
        return [number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its final state and its history record."""

    state: str
    outputs: dict[str, Any]
    messages: list[list[Any]]
    """[event, data] pairs: ComfyUI's status.messages."""
    meta: dict[str, Any]
    worker: str | None = None
    """The cluster worker that ran it (None on one machine)."""


class DuplicatePromptId(ValueError):
    pass


class Store:
    """Jobs in SQLite; safe to call from the event loop and the worker thread."""

    def __init__(self, path: Path, max_history: int = 10_000) -> None:
        self.path, self.max_history = path, max_history
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._open: dict[str, str | None] = {}
        """Queued and running jobs -> client id, kept in step with the table (counts are hot)."""
        self._per_client: Counter[str | None] = Counter()
        self._rendered = history.Rendered()
        try:
            self._counter = self._prepare()
            self.recovered = self._recover()
            with self._lock:
                rows = self._db.execute(
                    "SELECT prompt_id, client_id FROM jobs WHERE state IN (?, ?)",
                    (QUEUED, RUNNING),
                ).fetchall()
        except BaseException:
            self._db.close()
            raise
        self._open.update(rows)
        self._per_client.update(self._open.values())

    def _prepare(self) -> int:
        """Settings, a whole-file check (a truncated file fails here), the schema; the next
        job number."""
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            check = self._db.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise sqlite3.DatabaseError(f"the database is damaged ({check[0][0]})")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)").fetchall()}
            if "worker" not in columns:  # a database from before the cluster
                self._db.execute("ALTER TABLE jobs ADD COLUMN worker TEXT")
            row = self._db.execute("SELECT MAX(ABS(number)) FROM jobs").fetchone()
        return int(row[0] or 0) + 1

    @contextlib.contextmanager
    def _transaction(self, fsync: bool = True) -> Iterator[None]:
        """One write transaction under the lock. Without fsync (the worker's state changes),
        a power cut may undo it, and the job runs again; the next fsync'd commit (every
        submission is one) makes it durable too. A process crash loses nothing either way."""
        with self._lock:
            if not fsync:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    yield
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (a full disk) may leave it open
                    with contextlib.suppress(sqlite3.Error):
                        self._db.rollback()
                raise
            finally:
                if not fsync:
                    self._db.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _recover(self) -> dict[str, list[str]]:
        """Jobs found running (the server died under them): re-queue once, then fail."""
        with self._transaction():
            rows = self._db.execute(
                "SELECT prompt_id, attempts FROM jobs WHERE state = ?", (RUNNING,)
            ).fetchall()
            requeued = [p for p, a in rows if a < MAX_ATTEMPTS]
            failed = [p for p, a in rows if a >= MAX_ATTEMPTS]
            self._db.executemany(
                "UPDATE jobs SET state = ?, started = NULL WHERE prompt_id = ?",
                [(QUEUED, p) for p in requeued],
            )
            now = time.time()
            for prompt_id in failed:
                message = (
                    f"The server stopped while this job ran, {MAX_ATTEMPTS} times; "
                    "it is not tried again."
                )
                error = {
                    "prompt_id": prompt_id,
                    "node_id": None,
                    "node_type": None,
                    "executed": [],
                    "exception_message": message,
                    "exception_type": "ServerRestarted",
                    "traceback": [],
                    "current_inputs": {},
                    "current_outputs": {},
                    "timestamp": int(now * 1000),
                }
                outcome = Outcome(ERROR, {}, [["execution_error", error]], {})
                self._finish_locked(prompt_id, outcome, now)
        return {"requeued": requeued, "failed": failed}

    # -- the queue ------------------------------------------------------------------------------

    def add(
        self,
        prompt_id: str,
        prompt: dict[str, Any],
        *,
        client_id: str | None,
        extra_data: dict[str, Any],
        outputs: list[str],
        number: float | None = None,
        front: bool = False,
    ) -> float:
        """Store a queued job (committed before returning); returns its number."""
        with self._lock:
            if number is None:
                number = -self._counter if front else self._counter
            self._counter += 1
            try:
                self._db.execute(
                    "INSERT INTO jobs (prompt_id, number, client_id, prompt, extra_data, "
                    "outputs_to_execute, state, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        prompt_id,
                        number,
                        client_id,
                        json.dumps(prompt),
                        json.dumps(extra_data),
                        json.dumps(outputs),
                        QUEUED,
                        time.time(),
                    ),
                )
            except sqlite3.IntegrityError:
                raise DuplicatePromptId(prompt_id) from None
            self._open[prompt_id] = client_id
            self._per_client[client_id] += 1
        return number

    def claim_next(self) -> Job | None:
        """The first queued job (lowest number), now marked running; None if the queue is empty."""
        with self._transaction(fsync=False):
            row = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? ORDER BY number, seq LIMIT 1",
                (QUEUED,),
            ).fetchone()
            return self._claim_row(row)

    def queued(self, limit: int) -> list[Job]:
        """The first `limit` queued jobs in run order (a cluster's dispatcher chooses among
        them)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? ORDER BY number, seq LIMIT ?",
                (QUEUED, limit),
            ).fetchall()
        return [_job(r) for r in rows]

    def claim(self, prompt_id: str) -> Job | None:
        """Mark one queued job running; None if it is no longer queued (deleted meanwhile)."""
        with self._transaction(fsync=False):
            row = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? AND prompt_id = ?",
                (QUEUED, prompt_id),
            ).fetchone()
            return self._claim_row(row)

    def _claim_row(self, row: tuple[Any, ...] | None) -> Job | None:
        if row is None:
            return None
        self._db.execute(
            "UPDATE jobs SET state = ?, attempts = attempts + 1, started = ? WHERE prompt_id = ?",
            (RUNNING, time.time(), row[0]),
        )
        job = _job(row)
        return Job(**{**job.__dict__, "state": RUNNING, "attempts": job.attempts + 1})

    def retry(self, prompt_id: str) -> None:
        """Put a running job back, its start counted (the worker running it died)."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, started = NULL WHERE prompt_id = ? AND state = ?",
                (QUEUED, prompt_id, RUNNING),
            )

    def requeue(self, prompt_id: str) -> None:
        """Put a running job back without counting its start (a clean shutdown stopped it)."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, attempts = MAX(attempts - 1, 0), started = NULL "
                "WHERE prompt_id = ? AND state = ?",
                (QUEUED, prompt_id, RUNNING),
            )

    def finish(self, prompt_id: str, outcome: Outcome) -> None:
        """Record how a job ended; on a storage error (a full disk) nothing changes."""
        with self._transaction(fsync=False):
            self._finish_locked(prompt_id, outcome, time.time())
            self._prune_locked()
        with self._lock:
            self._closed([prompt_id])

    def _closed(self, prompt_ids: Iterable[str]) -> None:
        for prompt_id in prompt_ids:
            if prompt_id in self._open:
                self._per_client[self._open.pop(prompt_id)] -= 1

    def _finish_locked(self, prompt_id: str, outcome: Outcome, now: float) -> None:
        assert outcome.state in FINAL
        self._db.execute(
            "UPDATE jobs SET state = ?, finished = ?, outputs = ?, messages = ?, meta = ?, "
            "worker = ?, history_seq = (SELECT COALESCE(MAX(history_seq), 0) + 1 FROM jobs) "
            "WHERE prompt_id = ? AND state = ?",  # a finished job never changes again
            (
                outcome.state,
                now,
                json.dumps(outcome.outputs),
                json.dumps(outcome.messages),
                json.dumps(outcome.meta),
                outcome.worker,
                prompt_id,
                RUNNING,
            ),
        )

    def _prune_locked(self) -> None:
        self._db.execute(
            "DELETE FROM jobs WHERE history_seq IS NOT NULL AND history_seq <= "
            "(SELECT MAX(history_seq) FROM jobs) - ?",
            (self.max_history,),
        )

    def queue(self) -> tuple[list[Job], list[Job]]:
        """(running, pending) jobs, pending in run order."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN (?, ?) ORDER BY number, seq",
                (RUNNING, QUEUED),
            ).fetchall()
        jobs = [_job(r) for r in rows]
        return [j for j in jobs if j.state == RUNNING], [j for j in jobs if j.state == QUEUED]

    def remaining(self, client_id: str | None = None) -> int:
        """Queued and running jobs (of one client when given)."""
        if client_id is None:
            return len(self._open)
        return self._per_client[client_id]

    def delete_queued(self, prompt_ids: Iterable[str] | None = None) -> int:
        """Remove pending jobs (all of them when `prompt_ids` is None); running ones stay."""
        with self._transaction():
            queued = {
                p
                for (p,) in self._db.execute(
                    "SELECT prompt_id FROM jobs WHERE state = ?", (QUEUED,)
                ).fetchall()
            }
            doomed = queued if prompt_ids is None else queued & set(prompt_ids)
            self._db.executemany(
                "DELETE FROM jobs WHERE state = ? AND prompt_id = ?",
                [(QUEUED, p) for p in doomed],
            )
        with self._lock:
            self._closed(doomed)
        return len(doomed)

    # -- the history ----------------------------------------------------------------------------

    def history_json(
        self,
        prompt_id: str | None = None,
        max_items: int | None = None,
        offset: int | None = None,
    ) -> bytes:
        """ComfyUI's history as JSON: {prompt_id: {prompt, outputs, status, meta}}, oldest
        first; `max_items` alone gives the newest N, with `offset` N from the offset-th."""
        finished = "FROM jobs WHERE history_seq IS NOT NULL"
        whole = False
        if prompt_id is not None:
            sql, args = f"SELECT seq {finished} AND prompt_id = ?", [prompt_id]
        elif max_items is not None and (offset is None or offset < 0):  # the newest N
            newest = f"SELECT seq, history_seq {finished} ORDER BY history_seq DESC LIMIT ?"
            sql, args = f"SELECT seq FROM ({newest}) ORDER BY history_seq", [max_items]
        else:
            whole = max_items is None and not offset
            sql = f"SELECT seq {finished} ORDER BY history_seq LIMIT ? OFFSET ?"
            args = [-1 if max_items is None else max_items, max(offset or 0, 0)]
        with self._lock:
            seqs = [seq for (seq,) in self._db.execute(sql, args)]
            missing = self._rendered.missing(seqs)
            rows = []
            for start in range(0, len(missing), 500):  # SQLite's limit on parameters
                chunk = missing[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                query = f"SELECT seq, {history.COLUMNS} FROM jobs WHERE seq IN ({marks})"
                rows += self._db.execute(query, chunk).fetchall()
            return self._rendered.answer(seqs, rows, whole)

    def sweep_runs(self, sweep_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(prompt id, state, sweep tag) of a sweep's runs (server/sweep.py), in order."""
        query = (
            "SELECT prompt_id, state, extra_data FROM jobs "
            "WHERE json_extract(extra_data, '$.sweep.id') = ? ORDER BY seq"
        )
        with self._lock:
            rows = self._db.execute(query, (sweep_id,)).fetchall()
        return [(pid, state, json.loads(extra)["sweep"]) for pid, state, extra in rows]

    def state_of(self, prompt_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM jobs WHERE prompt_id = ?", (prompt_id,)
            ).fetchone()
        return row[0] if row else None

    def delete_history(self, prompt_ids: Iterable[str] | None = None) -> None:
        with self._lock:
            if prompt_ids is None:
                self._db.execute("DELETE FROM jobs WHERE history_seq IS NOT NULL")
            else:
                self._db.executemany(
                    "DELETE FROM jobs WHERE history_seq IS NOT NULL AND prompt_id = ?",
                    [(p,) for p in prompt_ids],
                )


_JOB_FIELDS = (
    "prompt_id",
    "number",
    "client_id",
    "prompt",
    "extra_data",
    "outputs_to_execute",
    "state",
    "attempts",
)
_JOB_COLUMNS = ", ".join(_JOB_FIELDS)


def _job(row: tuple[Any, ...]) -> Job:
    prompt_id, number, client_id, prompt, extra, outputs, state, attempts = row
    return Job(
        prompt_id,
        number,
        client_id,
        json.loads(prompt),
        json.loads(extra),
        json.loads(outputs),
        state,
        attempts,
    )
