"""What a node sees while it runs: the run's settings, progress reporting, warnings, interrupt."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import events
from .errors import Interrupted
from .files import UnsafePath, confined


@dataclass(frozen=True)
class RunSettings:
    """Set by the host (CLI or server) once; shared by its runs."""

    output_dir: Path = Path("output")
    temp_dir: Path = Path("output/temp")
    input_dir: Path | None = None
    base_dir: Path | None = None
    """Folder that relative input paths start from (the CLI: the workflow file's folder)."""
    confine_inputs: bool = False
    """Server mode: inputs are plain names inside `input_dir`, nothing else."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Settings for node packages (e.g. device, model folders); the core reads none of them."""

    def resolve_input(self, name: str) -> Path:
        """The file an input names: confined to `input_dir` in server mode."""
        if self.confine_inputs:
            if self.input_dir is None:
                raise UnsafePath("no input folder is configured")
            return confined(self.input_dir, name)
        path = Path(name).expanduser()
        if path.is_absolute():
            return path
        for folder in (self.base_dir, self.input_dir):
            if folder is not None and (folder / path).exists():
                return folder / path
        return (self.base_dir or Path.cwd()) / path


@dataclass
class RunContext:
    """One run: its id, workflow, host settings, event sink and interrupt flag."""

    run_id: str
    settings: RunSettings
    workflow: Mapping[str, Any]
    extra: Mapping[str, Any]
    emit: Callable[[events.Event], None]
    interrupt: threading.Event

    def check_interrupt(self) -> None:
        if self.interrupt.is_set():
            raise Interrupted()


@dataclass
class NodeContext:
    """Handed to `Node.invoke`: report progress, warn, show results, honour interrupts."""

    run: RunContext
    node_id: str
    class_type: str
    ui: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> RunSettings:
        return self.run.settings

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report `value` of `total` done; raises Interrupted if the run was asked to stop."""
        self.run.emit(
            events.Progress(
                run_id=self.run.run_id,
                node_id=self.node_id,
                value=value,
                max=total,
                preview=preview,
            )
        )
        self.run.check_interrupt()

    def warn(self, message: str) -> None:
        self.run.emit(
            events.NodeWarning(
                run_id=self.run.run_id,
                node_id=self.node_id,
                class_type=self.class_type,
                message=message,
            )
        )

    def check_interrupt(self) -> None:
        self.run.check_interrupt()

    def show(self, key: str, items: list[Any]) -> None:
        """Add to what the node shows in the UI, e.g. show("images", [{filename, ...}])."""
        self.ui.setdefault(key, []).extend(items)
