"""Files between the server and its workers, which share no file system: the input files a job
names go out with it, the pictures its nodes show come back and land in the server's folders
under the names one machine would have given them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from nodegraph.files import UnsafePath, atomic_write, confined, next_counter, write_unique

from .actor import ShownFile

MAX_INPUT_BYTES = 512 * 1024**2
"""Most bytes of input files one job carries (past it the job fails with a clear message)."""
_NUMBERED = re.compile(r"^(?P<stem>.+)_(?P<n>\d{5,})_(?P<suffix>\.\w+)$")


def input_files(prompt: Mapping[str, Any], input_dir: Path) -> dict[str, bytes]:
    """The files of the server's input folder that the workflow's text literals name."""
    found: dict[str, bytes] = {}
    for value in _literals(prompt):
        if value in found:
            continue
        try:
            path = confined(input_dir, value)
        except UnsafePath:
            continue
        if path.is_file():
            found[value] = path.read_bytes()
    total = sum(map(len, found.values()))
    if total > MAX_INPUT_BYTES:
        raise ValueError(f"the job's input files hold {total} bytes, past {MAX_INPUT_BYTES}")
    return found


def _literals(prompt: Mapping[str, Any]) -> Iterator[str]:
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        for value in (inputs or {}).values():
            if isinstance(value, str) and value:
                yield value


class Landing:
    """Where a worker's shown files go in the server's folders; a file seen again (a cached
    node shows the same picture) keeps the name it was given."""

    def __init__(self, folders: Mapping[str, Path]) -> None:
        self.folders = folders
        self._names: dict[tuple[str, str, str, str], dict[str, str]] = {}

    def land(self, worker: str, ui: Mapping[str, Any], files: Iterable[ShownFile]) -> dict:
        """`ui` with each shown file written to the server and renamed as it was written."""
        renamed: dict[tuple[str, str, str], dict[str, str]] = {}
        for shown in files:
            origin = (worker, shown.type, shown.subfolder, shown.filename)
            entry = self._names.get(origin)
            if entry is None or not self._exists(shown.type, entry):
                entry = self._write(shown)
                self._names[origin] = entry
            renamed[(shown.type, shown.subfolder, shown.filename)] = entry
        out: dict[str, Any] = {}
        for key, entries in ui.items():
            if not isinstance(entries, list):
                out[key] = entries
                continue
            out[key] = [self._renamed(e, renamed) for e in entries]
        return out

    @staticmethod
    def _renamed(entry: Any, renamed: Mapping[tuple[str, str, str], dict[str, str]]) -> Any:
        if not isinstance(entry, dict):
            return entry
        origin = (entry.get("type"), entry.get("subfolder", ""), entry.get("filename"))
        new = renamed.get(origin)  # type: ignore[arg-type]
        return {**entry, **new} if new else entry

    def _exists(self, kind: str, entry: Mapping[str, str]) -> bool:
        name = "/".join(p for p in (entry["subfolder"], entry["filename"]) if p)
        return confined(self.folders[kind], name).is_file()

    def _write(self, shown: ShownFile) -> dict[str, str]:
        root = self.folders[shown.type]
        folder = confined(root, shown.subfolder) if shown.subfolder else root.resolve()
        numbered = _NUMBERED.match(shown.filename)
        if numbered:  # the number SaveImage on this machine would pick
            stem = numbered["stem"]
            start = next_counter(folder, stem)
            path = write_unique(folder, stem, numbered["suffix"], shown.data, start)
        else:
            path = confined(folder, shown.filename)
            atomic_write(path, shown.data)
        return {"filename": path.name, "subfolder": shown.subfolder}
