"""ComfyUI's own numbers for the tests (tests/data/comfy_reference/, made by hand with
tools/comfy_reference/): a case set's manifest and its tensors, read once."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

DATA = Path(__file__).parent / "data" / "comfy_reference"


def manifest(name: str) -> dict[str, Any]:
    """`<name>.json`: the ComfyUI commit and the cases it ran."""
    return json.loads((DATA / f"{name}.json").read_text())


@functools.cache
def tensors(name: str) -> dict[str, torch.Tensor]:
    """`<name>.safetensors`: the cases' inputs and ComfyUI's results (shared: don't change)."""
    return load_file(DATA / f"{name}.safetensors")
