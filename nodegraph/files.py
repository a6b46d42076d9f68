"""Safe file names: confinement to a folder, atomic writes, names that do not collide."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path


class UnsafePath(ValueError):
    """A file name that points outside the folder it must stay in, or is malformed."""


def confined(folder: Path, name: str) -> Path:
    """The real path of `name` inside `folder`; refuses anything that would leave it.

    Refuses absolute names, `..`, backslashes, NUL bytes and drive letters before touching the
    disk, then resolves symlinks and checks the real path is still inside the real folder.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePath("the file name is empty or malformed")
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafePath(f"'{name}' is not a plain relative name")
    if ".." in name.split("/"):
        raise UnsafePath(f"'{name}' leaves its folder")
    root = folder.resolve()
    real = (root / name).resolve()
    if real != root and root not in real.parents:
        raise UnsafePath(f"'{name}' resolves outside its folder")
    return real


TEMP_PREFIX, TEMP_SUFFIX = ".nodegraph-", ".tmp"
"""Names of files being written (hidden; removed at server start when a crash left them)."""


class Staged:
    """Complete, fsync'd bytes under a temporary name in a folder, not yet visible.

    `publish` gives them a final name only if nobody holds it (a hard link: the name appears
    with the whole file or not at all); `replace` overwrites. Leaving the `with` removes the
    temporary name, so a failed write (a full disk) leaves nothing behind.
    """

    def __init__(self, folder: Path, data: bytes) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        fd, name = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
        self.path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)  # mkstemp's 0o600 would carry over to the name
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)

    def publish(self, path: Path) -> bool:
        """Give the bytes the name `path` unless it is taken (then False)."""
        try:
            os.link(self.path, path)
        except FileExistsError:
            return False
        _sync_folder(self.folder)
        return True

    def replace(self, path: Path) -> None:
        """Give the bytes the name `path`, replacing what was there (in one step)."""
        os.replace(self.path, path)
        _sync_folder(self.folder)


def _sync_folder(folder: Path) -> None:
    """Make a new name in `folder` survive a power cut (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the data itself is synced
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: readers never see half."""
    with Staged(path.parent, data) as staged:
        staged.replace(path)


def next_counter(folder: Path, stem: str) -> int:
    """ComfyUI's number for the next saved file: one past the highest `<stem>_<n>...` in
    `folder` (any extension; a name whose number does not parse counts as 0), 1 for none."""
    if not folder.is_dir():
        return 1
    head = os.path.normcase(stem + "_")
    numbers = [0]
    for name in os.listdir(folder):
        if os.path.normcase(name[: len(head)]) == head:
            try:
                numbers.append(int(name[len(head) :].split("_")[0]))
            except ValueError:
                numbers.append(0)
    return max(numbers) + 1


def write_unique(folder: Path, stem: str, suffix: str, data: bytes, start: int = 1) -> Path:
    """Write `data` as `folder/stem_<n>_suffix`, the first number from `start` not taken
    (race-free).

    The file is complete before its name appears: a crash or a full disk never leaves an
    empty or partial file under a numbered name.
    """
    with Staged(folder, data) as staged:
        n = start
        while True:
            path = folder / f"{stem}_{n:05d}_{suffix}"
            if staged.publish(path):
                return path
            n += 1


_NUMBERED = re.compile(r"_\d{5,}_\.\w+$")
"""`<prefix>_00001_.png`: the names `write_unique` gives."""


def remove_leftovers(folder: Path) -> int:
    """Delete what a crash can leave under `folder` (recursively): temporary files, and empty
    numbered files (earlier versions claimed a number with an empty file). Returns how many."""
    removed = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            stale = name.startswith(".") and name.endswith(TEMP_SUFFIX)
            with contextlib.suppress(FileNotFoundError):
                if stale or (_NUMBERED.search(name) and os.path.getsize(path) == 0):
                    os.unlink(path)
                    removed += 1
    return removed
