"""Reading a workflow file: API or canvas JSON, or the workflow a PNG embeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class WorkflowFileError(ValueError):
    """A file that is not a workflow ComfyUI or nodegraph can read: a one-line reason."""


def detect_format(data: Any) -> str | None:
    """ "ui" for a canvas workflow, "api" for an API-format one, None for anything else."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("nodes"), list) and "links" in data:
        return "ui"
    if isinstance(data.get("prompt"), dict) and "class_type" not in data:
        data = data["prompt"]
    if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "api"
    return None


def parse_json(text: str, name: str = "the workflow") -> Any:
    """JSON text, or a WorkflowFileError naming the line and column of the first problem."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(
            f"{name} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise WorkflowFileError(f"{name} is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_workflow(path: Path) -> tuple[str, Any]:
    """The workflow a PNG carries: its "workflow" chunk (UI) if readable, else its "prompt"."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is a dependency of the project
        raise WorkflowFileError(f"cannot read PNG files without Pillow: {exc}") from None
    try:
        with Image.open(path) as img:
            chunks = dict(getattr(img, "text", {}) or {})
    except OSError as exc:
        raise WorkflowFileError(f"{path} is not a readable PNG: {exc}") from None
    for key, kind in (("workflow", "ui"), ("prompt", "api")):
        if key not in chunks:
            continue
        try:
            data = json.loads(chunks[key])
        except ValueError:
            continue
        if detect_format(data) == kind:
            return kind, data
    raise WorkflowFileError(f"{path} carries no workflow (no 'workflow' or 'prompt' text chunk)")


def read_workflow_file(path: Path) -> tuple[str, Any]:
    """("api" | "ui", data) from an API or UI JSON file or a PNG saved by ComfyUI / nodegraph."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WorkflowFileError(f"cannot read {path}: {exc}") from None
    if raw.startswith(PNG_MAGIC):
        return png_workflow(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorkflowFileError(f"cannot read {path}: not UTF-8 text ({exc})") from None
    data = parse_json(text, str(path))
    kind = detect_format(data)
    if kind is None and isinstance(data, dict) and "nodes" not in data:
        kind = "api"  # an API workflow with broken nodes: validation names each problem
    if kind is None:
        raise WorkflowFileError(
            f"{path} is not a workflow: expected ComfyUI's API format (an object of nodes, each "
            'with "class_type" and "inputs") or its UI format (an object with "nodes" and "links")'
        )
    return kind, data
