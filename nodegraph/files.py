"""Safe file names: confinement to a folder, atomic writes, names that do not collide."""

from __future__ import annotations

import os
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


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def claim_unique(folder: Path, stem: str, suffix: str, start: int = 1) -> Path:
    """Create and return `folder/stem_00001_suffix`, the first number not taken (race-free)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = start
    while True:
        path = folder / f"{stem}_{n:05d}_{suffix}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            n += 1
            continue
        os.close(fd)
        return path
