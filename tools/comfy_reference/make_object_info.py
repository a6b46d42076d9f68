"""Write ComfyUI's /object_info facts for every node nodegraph names as ComfyUI does:
tests/data/comfy_object_info.json (inputs in order with section, type or choices, default, min,
max, step; outputs and their names; category; output node; display name). A developer's check,
run by hand with ComfyUI importable (run_with_comfyui.sh); the test compares nodegraph's
/object_info entries with it. Facts, not code: ComfyUI is not a dependency."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "data" / "comfy_object_info.json"
EXTRAS = (
    "nodes_custom_sampler", "nodes_model_advanced", "nodes_mask", "nodes_images",
    "nodes_post_processing", "nodes_latent", "nodes_model_merging", "nodes_upscale_model",
    "nodes_canny", "nodes_compositing", "nodes_sd3", "nodes_clip_sdxl", "nodes_ip2p",
    "nodes_model_merging_model_specific", "nodes_hypernetwork",
)  # fmt: skip
"""comfy_extras modules holding ComfyUI's SD-family nodes besides nodes.py."""


def comfy_classes() -> tuple[dict[str, Any], dict[str, str]]:
    """ComfyUI's node classes by name and nodes.py's display names."""
    from tools.comfy_reference.make_mask_reference import comfy_node_classes

    _, display_names = comfy_node_classes()  # loads nodes.py as `nodes`, stubs `server`
    comfy_nodes = sys.modules["nodes"]
    found = dict(comfy_nodes.NODE_CLASS_MAPPINGS)
    for name in EXTRAS:
        try:
            module = importlib.import_module(f"comfy_extras.{name}")
        except Exception as exc:  # noqa: BLE001 - a module this checkout cannot import
            print(f"skipped comfy_extras.{name}: {exc}", file=sys.stderr)
            continue
        for obj in vars(module).values():
            ours = isinstance(obj, type) and obj.__module__ == module.__name__
            if ours and hasattr(obj, "GET_SCHEMA"):
                found.setdefault(obj.GET_SCHEMA().node_id, obj)
        found.update(getattr(module, "NODE_CLASS_MAPPINGS", {}))
        display_names = {**getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}), **display_names}
    return found, display_names


def entry(name: str, cls: Any, display_names: dict[str, str]) -> dict[str, Any]:
    inputs = []
    for section, entries in cls.INPUT_TYPES().items():
        for input_name, spec in entries.items():
            if isinstance(spec, str):  # hidden: {"prompt": "PROMPT"}
                inputs.append({"name": input_name, "section": section, "type": spec})
                continue
            kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
            if kind == "COMBO":
                kind = list(options.get("options", []))
            item = {"name": input_name, "section": section}
            item["type"] = "COMBO" if isinstance(kind, list) else kind
            item.update({k: options[k] for k in ("default", "min", "max", "step") if k in options})
            if isinstance(kind, list) and not options.get("image_upload"):
                item["choices"] = kind  # file lists depend on the folders: compared if static
            inputs.append(item)
    schema = cls.GET_SCHEMA() if hasattr(cls, "GET_SCHEMA") else None
    display = (schema.display_name if schema else None) or display_names.get(name, name)
    outputs = list(cls.RETURN_TYPES)
    names = list(getattr(cls, "RETURN_NAMES", None) or outputs)
    return {"inputs": inputs, "outputs": outputs, "output_names": names,
            "category": cls.CATEGORY, "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
            "display_name": display}  # fmt: skip


def main() -> None:
    from nodegraph.registry import default_registry
    from tools.comfy_reference.make_reference import comfy_commit

    ours = default_registry()
    classes, display_names = comfy_classes()  # first: it sets ComfyUI's --cpu
    commit = comfy_commit()
    table = {n: entry(n, classes[n], display_names) for n in sorted(ours) if n in classes}
    lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in table.items())
    OUT.write_text(f'{{\n"comfyui_commit": {json.dumps(commit)},\n"nodes": {{\n{lines}\n}}\n}}\n')
    print(f"{len(table)} nodes written to {OUT}")


if __name__ == "__main__":
    main()
