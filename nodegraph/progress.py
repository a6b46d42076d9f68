"""The CLI's progress display: a line per node, a tqdm bar per node's steps."""

from __future__ import annotations

from typing import TextIO

from tqdm import tqdm

from . import events


class ConsoleDisplay:
    """Consumes a run's events and shows them on a terminal stream."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bar: tqdm | None = None
        self.total = 0
        self.done = 0

    def heading(self, text: str) -> None:
        print(f"== {text}", file=self.stream)

    def __call__(self, event: events.Event) -> None:
        match event:
            case events.RunStarted(planned=planned):
                self.total, self.done = len(planned), 0
            case events.NodesCached(node_ids=ids):
                self.done += len(ids)
                shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
                print(f"   cached: {shown}", file=self.stream)
            case events.NodeStarted(node_id=node_id, class_type=class_type):
                self.done += 1
                self.current = f"[{self.done}/{self.total}] {class_type} ({node_id})"
            case events.Progress(value=value, max=total):
                if self.bar is None:
                    self.bar = tqdm(  # disable=None: no bar when the stream is not a terminal
                        total=total,
                        desc=self.current,
                        file=self.stream,
                        leave=False,
                        unit="step",
                        disable=None,
                    )
                self.bar.total = total
                self.bar.update(value - self.bar.n)
            case events.NodeFinished(seconds=seconds, cached=False):
                self._close_bar()
                print(f"{self.current} {seconds:.2f} s", file=self.stream)
            case events.NodeWarning(node_id=node_id, class_type=class_type, message=message):
                self._close_bar()
                print(f"   warning: node {node_id} ({class_type}): {message}", file=self.stream)
            case events.RunFailed(node_id=node_id, class_type=class_type, message=message):
                self._close_bar()
                where = f"node {node_id} ({class_type})" if node_id else "the run"
                print(f"error in {where}: {message}", file=self.stream)
            case events.RunInterrupted(node_id=node_id):
                self._close_bar()
                print(f"interrupted at node {node_id}", file=self.stream)
            case events.RunFinished(seconds=seconds):
                print(f"done in {seconds:.2f} s", file=self.stream)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
