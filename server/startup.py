"""Start-up checks of the data folder: one server per folder, writable folders, a readable queue
database. Each failure is a StartupError whose text names the file and the cause (one line)."""

from __future__ import annotations

import fcntl
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import IO

from nodegraph.files import remove_leftovers

from .config import ServerConfig
from .store import Store


class StartupError(Exception):
    """The server cannot start; the message says which file and why."""


def _cause(exc: OSError) -> str:
    return exc.strerror or str(exc)


def lock_data_folder(data_dir: Path) -> IO[str]:
    """Create the data folder and hold its lock (released when the returned file closes)."""
    lock_path = data_dir / "server.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_path.open("w")
    except OSError as exc:
        raise StartupError(f"cannot write {exc.filename or lock_path}: {_cause(exc)}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise StartupError(f"another server is using {data_dir}") from None
    return lock


def prepare_folders(config: ServerConfig) -> None:
    """Create input/, output/ and temp/, check each is writable, empty temp/ and remove what a
    crash left half-written in the others."""
    for folder in (config.input_dir, config.output_dir, config.temp_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise StartupError(f"cannot write in {folder}: {_cause(exc)}") from None
    try:
        _clear_folder(config.temp_dir)
        for folder in (config.input_dir, config.output_dir):
            remove_leftovers(folder)
    except OSError as exc:
        raise StartupError(f"cannot clean {exc.filename}: {_cause(exc)}") from None


def _clear_folder(folder: Path) -> None:
    """Empty the temp folder (previews of earlier runs), keeping the folder itself."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def open_store(config: ServerConfig) -> Store:
    """The queue database, checked whole; a damaged or unwritable file is a StartupError."""
    path = config.db_path
    try:
        return Store(path, config.limits.max_history)
    except (sqlite3.Error, OSError) as exc:
        hint = ""
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            hint = " (move it away to start with an empty queue)"
        raise StartupError(f"cannot open the queue database {path}: {exc}{hint}") from None
