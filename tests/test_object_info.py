"""/object_info entries of the ComfyUI-named nodes against ComfyUI's own (tests/data/
comfy_object_info.json, written from ComfyUI 0.8.0 by tools/comfy_reference/make_object_info.py):
input names, order, sections, types, static choice lists, defaults, min / max / step; outputs
and their names; category; output node; display name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nodegraph.registry import default_registry, describe

TABLE = json.loads((Path(__file__).parent / "data" / "comfy_object_info.json").read_text())
NATIVE_NAMESAKES = {
    "AddNoise": "nodegraph's native AddNoise (diffusers' strength semantics) keeps its name",
    "CheckpointLoader": "nodegraph's native checkpoint loader; ComfyUI's is a deprecated one",
}
"""ComfyUI names that nodegraph's native nodes had first: different nodes, on purpose."""
FILE_LISTS = {
    "ckpt_name",
    "vae_name",
    "lora_name",
    "control_net_name",
    "model_name",
    "hypernetwork_name",
    "gligen_name",
    "clip_name",
}
"""Inputs whose choices are the files found (they differ from machine to machine)."""
KNOWN = {
    ("LoadImage", "image"): "the server lists the input folder's pictures (test_server_safety)",
    ("LoadImageMask", "image"): "as LoadImage",
    ("LoadLatent", "latent"): "a path or an input-folder name (STRING), not a file list",
    ("ModelSamplingContinuousEDM", "sampling"): "no Playground 2.5 / Cosmos (not SD family)",
}
"""Inputs that still differ from ComfyUI's entry, and why."""
NODES = sorted(n for n in TABLE["nodes"] if n not in NATIVE_NAMESAKES)


def ours(entry: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for section in ("required", "optional"):
        for name, (kind, options) in entry["input"].get(section, {}).items():
            item = {"name": name, "section": section, "type": kind, **options}
            if isinstance(kind, list):
                item.update(type="COMBO", choices=kind)
            found.append(item)
    return found


@pytest.mark.parametrize("name", NODES)
def test_object_info_matches_comfyuis(name: str) -> None:
    theirs, entry = TABLE["nodes"][name], describe(default_registry().get(name))
    visible = [i for i in theirs["inputs"] if i["section"] != "hidden"]
    mine = ours(entry)
    assert [(i["name"], i["section"]) for i in mine] == [(i["name"], i["section"]) for i in visible]
    for want, got in zip(visible, mine, strict=True):
        if (name, want["name"]) in KNOWN:
            continue
        assert got["type"] == want["type"], want["name"]
        if "choices" in want and want["name"] not in FILE_LISTS:
            assert got["choices"] == want["choices"], want["name"]
        for key in ("default", "min", "max", "step"):
            if key in want:
                assert got.get(key) == want[key], (want["name"], key)
    hidden = {i["name"]: i["type"] for i in theirs["inputs"] if i["section"] == "hidden"}
    assert entry["input"].get("hidden", {}) == hidden
    assert entry["input_order"].get("hidden", []) == list(hidden)
    assert entry["output"] == theirs["outputs"]
    assert entry["output_name"] == theirs["output_names"]
    assert entry["category"] == theirs["category"]
    assert entry["output_node"] == theirs["output_node"]
    assert entry["display_name"] == theirs["display_name"]


def test_the_table_covers_the_comfyui_named_nodes() -> None:
    assert TABLE["comfyui_commit"] and len(TABLE["nodes"]) >= 100
