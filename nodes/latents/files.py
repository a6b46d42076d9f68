"""Latents on disk as ComfyUI keeps them (SaveLatent, LoadLatent): a `.latent` file is
safetensors holding `latent_tensor`, marked `latent_format_version_0` (the VAE's own scale;
files without the mark are from ComfyUI's first format, scaled by SD's 0.18215)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from nodegraph import InputField, Node, NodeContext, RunSettings
from nodegraph.files import confined, next_counter, write_unique

from ..devices import resolve_device
from ..images.io import (
    WRITTEN,
    expand_prefix,
    input_check,
    input_fingerprint,
    saved_fingerprint,
    workflow_text,
)
from ..values import LATENT, Latent

FORMAT_MARK = "latent_format_version_0"
LEGACY_SCALE = 1.0 / 0.18215
"""What the first format's latents are multiplied by on loading (they were SD 1.x-scaled)."""


def latent_file(samples: torch.Tensor, metadata: Mapping[str, str]) -> bytes:
    tensors = {"latent_tensor": samples.detach().cpu().contiguous(), FORMAT_MARK: torch.tensor([])}
    return save(tensors, metadata=dict(metadata))


def read_latent(path: Path, device: torch.device) -> torch.Tensor:
    tensors = load_file(str(path))
    if "latent_tensor" not in tensors:
        raise ValueError(f"{path.name} is not a latent file (no latent_tensor)")
    scale = 1.0 if FORMAT_MARK in tensors else LEGACY_SCALE
    return (tensors["latent_tensor"].float() * scale).to(device)


class SaveLatent(Node):
    """Save latents as a `.latent` file (with the workflow), to load back with LoadLatent."""

    category = "_for_testing"
    output_node = True
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    samples: LATENT = InputField(description="The latents to save.")
    filename_prefix: str = InputField(
        "latents/ComfyUI", description="File name start; may include a subfolder.", max_length=200
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return saved_fingerprint(literals, run.settings)

    def invoke(self, ctx: NodeContext) -> None:
        folder = Path(ctx.settings.output_dir)
        metadata = workflow_text(ctx)
        target = confined(folder, expand_prefix(self.filename_prefix).strip() or "latent")
        data = latent_file(self.samples.samples, metadata)
        start = next_counter(target.parent, target.name)  # ComfyUI's: past the highest
        path = write_unique(target.parent, target.name, ".latent", data, start)
        WRITTEN.add((str(folder.resolve()), self.filename_prefix), [path])
        sub = path.parent.relative_to(folder.resolve()).as_posix()
        ctx.show("latents", [{"filename": path.name, "subfolder": "" if sub == "." else sub,
                              "type": "output"}])  # fmt: skip


class LoadLatent(Node):
    """Load a `.latent` file: a path (absolute or relative to the workflow file); the server's
    input folder in server mode."""

    category = "_for_testing"
    latent: str = InputField(description="The .latent file.")

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return input_fingerprint(literals, run.settings, "latent")

    @classmethod
    def check(cls, literals: Mapping[str, Any], settings: RunSettings) -> list[tuple[str, str]]:
        return input_check(literals, settings, "latent", "latent file")

    def invoke(self, ctx: NodeContext) -> LATENT:
        path = ctx.settings.resolve_input(self.latent)
        return Latent(read_latent(path, resolve_device(ctx.settings.options)))
