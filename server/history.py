"""ComfyUI's history answer, put together from the JSON texts the store keeps (nothing decoded
and encoded again). A finished job's entry never changes, so each is rendered once and kept,
by the job's `seq` (never reused), within a memory budget."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

BUDGET_BYTES = 64 << 20
"""Rendered entries kept in memory at most; past it, entries are rendered for each answer."""
SUCCESS = "success"
_STATUS = {s: f'"{s}", "completed": {str(s == SUCCESS).lower()}' for s in (SUCCESS, "error")}


def shown_number(number: float) -> int | float:
    """A job's number as ComfyUI shows it: whole numbers without a fraction."""
    return int(number) if float(number).is_integer() else number


def render(row: Sequence[Any]) -> bytes:
    """One `"prompt_id": {...}` member of the history from a row of `COLUMNS`."""
    prompt_id, number, prompt, extra, to_execute, state, outputs, messages, meta, worker = row
    pid = encode_basestring_ascii(prompt_id)
    item = f"[{shown_number(number)!r}, {pid}, {prompt}, {extra}, {to_execute}]"
    status = f'{{"status_str": {_STATUS[state]}, "messages": {messages or "[]"}}}'
    text = (
        f'{pid}: {{"prompt": {item}, "outputs": {outputs or "{}"}, "status": {status}, '
        f'"meta": {meta or "{}"}'
        + (f', "worker": {encode_basestring_ascii(worker)}' if worker is not None else "")
        + "}"
    )
    return text.encode()


COLUMNS = (
    "prompt_id, number, prompt, extra_data, outputs_to_execute, state, outputs, messages, meta, "
    "worker"
)
"""What `render` reads, in its order."""


class Rendered:
    """Rendered entries by job seq; used under the store's lock."""

    def __init__(self, budget: int = BUDGET_BYTES) -> None:
        self.budget = budget
        self._entries: dict[int, bytes] = {}
        self._bytes = 0

    def missing(self, seqs: Iterable[int]) -> list[int]:
        return [seq for seq in seqs if seq not in self._entries]

    def answer(self, seqs: list[int], rows: Iterable[Sequence[Any]], whole: bool) -> bytes:
        """The JSON object of the entries `seqs`, in order; `rows` are (seq, *COLUMNS) of those
        `missing`. `whole`: `seqs` is the whole history (entries not in it are dropped)."""
        fresh = {row[0]: render(row[1:]) for row in rows}
        if whole:  # forget deleted and pruned entries
            self._entries = {s: self._entries[s] for s in seqs if s in self._entries}
            self._bytes = sum(map(len, self._entries.values()))
        for seq, entry in fresh.items():
            if self._bytes + len(entry) <= self.budget:
                self._entries[seq] = entry
                self._bytes += len(entry)
        return b"{" + b", ".join([self._entries.get(seq) or fresh[seq] for seq in seqs]) + b"}"
