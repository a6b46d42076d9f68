"""ComfyUI's shapes: validation errors for POST /prompt, websocket messages for run events."""

from __future__ import annotations

import io
import json
import struct
import time
import traceback as tb
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from nodegraph import events

PREVIEW_IMAGE = 1
"""Binary frame event type of a preview image."""
JPEG, PNG = 1, 2


def now_ms() -> int:
    return int(time.time() * 1000)


def message(kind: str, data: Mapping[str, Any]) -> str:
    return json.dumps({"type": kind, "data": data})


# -- validation errors ---------------------------------------------------------------------------


def error_body(kind: str, text: str, details: str = "", **extra: Any) -> dict[str, Any]:
    """A 400 body with no per-node errors, e.g. for malformed JSON."""
    return {
        "error": {"type": kind, "message": text, "details": details, "extra_info": extra},
        "node_errors": {},
    }


# -- run events -> websocket messages ------------------------------------------------------------


class RunMessages:
    """Turns one job's engine events into ComfyUI websocket messages and its history record."""

    def __init__(self, prompt_id: str, previews: bool = True) -> None:
        self.prompt_id, self.previews = prompt_id, previews
        self.history: list[list[Any]] = []
        """[event, data] pairs for the history's status.messages."""
        self.outputs: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.current: tuple[str, str] | None = None
        """(node id, class) of the node running now, for errors raised past the engine."""

    def translate(self, event: events.Event) -> list[str | bytes]:
        """The frames (JSON text or binary previews) that one event becomes."""
        pid = self.prompt_id
        match event:
            case events.RunStarted():
                data = {"prompt_id": pid, "timestamp": now_ms()}
                self.history.append(["execution_start", data])
                return [message("execution_start", data)]
            case events.NodesCached(node_ids=node_ids):
                data = {"nodes": list(node_ids), "prompt_id": pid, "timestamp": now_ms()}
                self.history.append(["execution_cached", data])
                return [message("execution_cached", data)]
            case events.NodeStarted(node_id=node_id):
                self.current = (node_id, event.class_type)
                data = {"node": node_id, "display_node": node_id, "prompt_id": pid}
                return [message("executing", data)]
            case events.Progress():
                frames: list[str | bytes] = [
                    message(
                        "progress",
                        {
                            "value": event.value,
                            "max": event.max,
                            "prompt_id": pid,
                            "node": event.node_id,
                        },
                    )
                ]
                if event.preview is not None and self.previews:  # bytes: a cluster worker's
                    preview = event.preview
                    frame = preview if isinstance(preview, bytes) else preview_frame(preview)
                    if frame is not None:
                        frames.append(frame)
                return frames
            case events.NodeWarning():
                self.warnings.append(f"{event.node_id} ({event.class_type}): {event.message}")
                data = {
                    "prompt_id": pid,
                    "node": event.node_id,
                    "node_type": event.class_type,
                    "message": event.message,
                }
                return [message("nodegraph.warning", data)]
            case events.NodeFinished(node_id=node_id, ui=ui):
                self.current = None
                if not ui:
                    return []
                self.outputs[node_id] = dict(ui)
                self.meta[node_id] = {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
                data = {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": pid}
                return [message("executed", data)]
            case events.RunFinished():
                data = {"prompt_id": pid, "timestamp": now_ms()}
                self.history.append(["execution_success", data])
                return [message("execution_success", data)]
            case events.RunFailed():
                return [self.failed(event)]
            case events.RunInterrupted():
                data = {
                    "prompt_id": pid,
                    "node_id": event.node_id,
                    "node_type": event.class_type,
                    "executed": list(event.executed),
                    "timestamp": now_ms(),
                }
                self.history.append(["execution_interrupted", data])
                return [message("execution_interrupted", data)]
        return []

    def failed(self, event: events.RunFailed) -> str:
        data = {
            "prompt_id": self.prompt_id,
            "node_id": event.node_id,
            "node_type": event.class_type,
            "executed": list(event.executed),
            "exception_message": event.message,
            "exception_type": event.exception_type,
            "traceback": event.traceback.splitlines(keepends=True),
            "current_inputs": {},
            "current_outputs": {},
            "timestamp": now_ms(),
        }
        self.history.append(["execution_error", data])
        return message("execution_error", data)

    def crashed(self, exc: BaseException) -> str:
        """An error the engine let through (the workflow no longer validates, exit, ...)."""
        node_id, class_type = self.current or (None, None)
        return self.failed(
            events.RunFailed(
                run_id=self.prompt_id,
                node_id=node_id,
                class_type=class_type,
                message=str(exc) or type(exc).__name__,
                exception_type=type(exc).__name__,
                traceback="".join(tb.format_exception(exc)),
                executed=(),
            )
        )

    def done(self) -> str:
        """`executing` with node null: the end of the prompt, whatever happened."""
        return message(
            "executing", {"node": None, "display_node": None, "prompt_id": self.prompt_id}
        )


def preview_frame(preview: Any, max_side: int = 512) -> bytes | None:
    """ComfyUI's binary preview frame: type 1, format 1 (JPEG), then the JPEG bytes.

    `preview` is a PIL image, or an array (torch or numpy) that `as_image` can show cheaply.
    """
    try:
        image = preview if isinstance(preview, Image.Image) else as_image(preview)
        if max(image.size) > max_side:
            image = image.copy()
            image.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=85)
    except Exception:  # a node offered something that is not an image: skip the preview
        return None
    return struct.pack(">II", PREVIEW_IMAGE, JPEG) + buf.getvalue()


def as_image(array: Any, upscale: int = 8) -> Image.Image:
    """A quick look at an array. A picture ((H, W, 3) or (3, H, W), 0..1 or 0..255) shows as
    it is; anything else with channels first (a latent: (B, C, h, w) or (C, h, w)) shows the
    first three channels of its first item, each stretched to 0..255 and enlarged `upscale`
    times (a latent is an eighth of the picture's size). Only the first item of a batch."""
    if hasattr(array, "detach"):  # a torch tensor, on any device
        array = array.detach().float().cpu().numpy()
    data = np.asarray(array, dtype=np.float32)
    if data.ndim == 4:
        data = data[0]
    if data.ndim != 3:
        raise ValueError(f"cannot show an array of shape {data.shape}")
    if data.shape[0] == 3:
        data = data.transpose(1, 2, 0)
    if data.shape[-1] in (3, 4) and data.shape[0] not in (3, 4):  # (H, W, C): a picture
        pixels = data[..., :3]
        scale = 255.0 if pixels.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8))
    channels = data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0)
    low = channels.min(axis=(1, 2), keepdims=True)
    span = np.maximum(channels.max(axis=(1, 2), keepdims=True) - low, 1e-6)
    pixels = ((channels - low) / span * 255).astype(np.uint8).transpose(1, 2, 0)
    size = (pixels.shape[1] * upscale, pixels.shape[0] * upscale)
    return Image.fromarray(pixels).resize(size, Image.NEAREST)
