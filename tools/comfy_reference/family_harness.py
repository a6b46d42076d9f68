"""What the node-family reference scripts (make_ip2p_reference, make_unclip_reference,
make_gligen_reference) share: nodegraph's tiny model loaded before ComfyUI takes the `nodes`
name, ComfyUI's nodes.py, and the data written as `<name>.safetensors` + `<name>.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "comfy_reference"


def tiny_checkpoint(family: str) -> tuple[Any, Any, Any]:
    """The family's tiny (model, clip, vae) as nodegraph loads it, on one thread (as the
    tests compare), before ComfyUI's modules load."""
    torch.set_num_threads(1)
    from tests import comfy_cases as C

    return C.tiny_checkpoint(family)


def comfy_nodes() -> Any:
    """ComfyUI's nodes.py (its server stubbed, --cpu)."""
    from tools.comfy_reference.make_mask_reference import comfy_node_classes

    comfy_node_classes()
    return sys.modules["nodes"]


def write(name: str, tensors: dict[str, torch.Tensor], **manifest: Any) -> None:
    """The tensors (float32) and the manifest (with the ComfyUI commit) under OUT."""
    from tools.comfy_reference.make_reference import comfy_commit

    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, OUT / f"{name}.safetensors")
    data = {"comfyui_commit": comfy_commit(), **manifest}
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"{len(manifest.get('cases', []))} cases written to {OUT / name}.*")
