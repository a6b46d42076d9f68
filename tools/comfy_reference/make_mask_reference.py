"""Reference numbers from ComfyUI itself for tests/test_masks_images.py.

Run by hand, with ComfyUI importable (see README.md here); never by the tests. ComfyUI's own
mask and image node classes (nodes.py, comfy_extras/nodes_mask.py, nodes_images.py,
nodes_post_processing.py) run on seeded tensors and on small picture files written from seeded
arrays; what each returns, or the error it raises, is recorded with its input schema.

Writes tests/data/comfy_reference/{masks_images.json, masks_images.safetensors}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "comfy_reference"
MANIFEST, TENSORS = OUT / "masks_images.json", OUT / "masks_images.safetensors"

NODES = (
    "LoadImageMask", "ImagePadForOutpaint", "MaskToImage", "ImageToMask", "SolidMask",
    "InvertMask", "GrowMask", "FeatherMask", "CropMask", "MaskComposite", "ImageInvert",
    "ImageBlend", "ImageCrop", "ImageBatch", "ImageScaleBy", "ImageScaleToTotalPixels",
    "ImageCompositeMasked",
)  # fmt: skip
BLEND_MODES = ("normal", "multiply", "screen", "overlay", "soft_light", "difference")
MASK_OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")


def seeded_inputs() -> dict[str, torch.Tensor]:
    """The input tensors (masks, images) and picture arrays, all from one seed."""
    g = torch.Generator().manual_seed(19)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    def eighths(*shape: int) -> torch.Tensor:  # hits 0, 0.25, 0.5 and 1 exactly
        return torch.randint(0, 9, shape, generator=g).float() / 8

    blobs = (rand(2, 12, 10) > 0.8).float()
    blobs[1, 3:8, 2:6] = eighths(5, 4)
    arrays = {
        "rgba": torch.randint(0, 256, (6, 9, 4), generator=g, dtype=torch.uint8),
        "rgb": torch.randint(0, 256, (7, 5, 3), generator=g, dtype=torch.uint8),
        "grey": torch.randint(0, 256, (5, 8), generator=g, dtype=torch.uint8),
        "grey_alpha": torch.randint(0, 256, (6, 4, 2), generator=g, dtype=torch.uint8),
        "indices": torch.randint(0, 4, (5, 6), generator=g, dtype=torch.uint8),
        "palette": torch.randint(0, 256, (4, 3), generator=g, dtype=torch.uint8),
        "palette_alpha": torch.tensor([0, 90, 200, 255], dtype=torch.uint8),
        "deep": torch.randint(0, 65536, (4, 7), generator=g, dtype=torch.int32),
    }
    tensors = {
        "mask_a": rand(1, 7, 9),
        "mask_b": eighths(2, 7, 9),
        "mask_b2": eighths(2, 4, 5),
        "mask_c": rand(3, 5, 4),
        "mask_big": rand(1, 11, 13),
        "mask_pair": rand(2, 3, 4),
        "mask_blobs": blobs,
        "mask_wide": rand(1, 6, 17),
        "image_a": rand(1, 7, 9, 3),
        "image_b": eighths(2, 7, 9, 3),
        "image_c": rand(1, 5, 6, 3),
        "image_d": rand(3, 10, 8, 3),
        "image_rgba": rand(1, 7, 9, 4),
        "image_grey": rand(1, 4, 4, 1),
        "image_big": rand(2, 14, 12, 3),
    }
    return {
        **{f"in.{k}": v for k, v in tensors.items()},
        **{f"png.{k}": v for k, v in arrays.items()},
    }


# The picture files LoadImageMask reads: built from the arrays above by write_picture.
PICTURES: dict[str, dict[str, Any]] = {
    "rgba.png": {"array": "rgba", "mode": "RGBA"},
    "rgb.png": {"array": "rgb", "mode": "RGB"},
    "grey.png": {"array": "grey", "mode": "L"},
    "grey_alpha.png": {"array": "grey_alpha", "mode": "LA"},
    "palette.png": {"array": "indices", "mode": "P"},
    "deep.png": {"array": "deep", "mode": "I;16"},
    "deep.tiff": {"array": "deep", "mode": "I"},
    "rotated.png": {"array": "rgba", "mode": "RGBA", "exif_orientation": 6},
}


def write_picture(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    """Write picture `name` of PICTURES into `folder` from its array (the same bytes each time)."""
    spec = PICTURES[name]
    array = tensors[f"png.{spec['array']}"].numpy()
    if spec["mode"] == "I;16":
        picture = Image.fromarray(array.astype(np.uint16))
    elif spec["mode"] == "I":
        picture = Image.fromarray(array.astype(np.int32), "I")
    else:
        picture = Image.fromarray(array, spec["mode"])
    options: dict[str, Any] = {}
    if spec["mode"] == "P":
        picture.putpalette(tensors["png.palette"].numpy().reshape(-1).tolist())
        options["transparency"] = bytes(tensors["png.palette_alpha"].tolist())
    if "exif_orientation" in spec:
        exif = Image.Exif()
        exif[0x0112] = spec["exif_orientation"]
        options["exif"] = exif
    path = folder / name
    picture.save(path, **options)
    return path


def rows(node: str, fields: str, table: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Cases of `node`, one per row: the row's values for the space-separated `fields` ("@x" is
    the seeded tensor x, "file:f" the picture f; None leaves an optional input out)."""

    def value(v: Any) -> Any:
        if isinstance(v, str) and v.startswith("@"):
            return {"tensor": f"in.{v[1:]}"}
        if isinstance(v, str) and v.startswith("file:"):
            return {"picture": v[5:]}
        return v

    return [
        {
            "name": f"{node}.{name}",
            "node": node,
            "inputs": {
                k: value(v) for k, v in zip(fields.split(), row, strict=True) if v is not None
            },
        }
        for name, row in table.items()
    ]


PICTURE_CHANNELS = {
    "rgba.png": ("alpha", "red", "green", "blue"),
    "rgb.png": ("alpha", "green"),
    "grey.png": ("red", "alpha"),
    "grey_alpha.png": ("alpha", "blue"),
    "palette.png": ("alpha", "red"),
    "deep.png": ("red",),
    "deep.tiff": ("green", "alpha"),
    "rotated.png": ("alpha", "red"),
}


def mask_cases() -> list[dict[str, Any]]:
    """LoadImageMask, the conversions and the mask nodes."""
    pictures = {f"{f}.{c}": (f"file:{f}", c) for f, cs in PICTURE_CHANNELS.items() for c in cs}
    grows = {
        f"{e}.{t}": ("@mask_blobs", e, t)
        for e in (0, 1, 2, 5, -1, -3, 40, -40)
        for t in (True, False)
    }
    grows |= {"grey": ("@mask_a", 2, True), "grey_shrink": ("@mask_c", -1, False)}
    return [
        *rows("LoadImageMask", "image channel", pictures),
        *rows("MaskToImage", "mask", {"single": ("@mask_a",), "batch": ("@mask_b",)}),
        *rows("ImageToMask", "image channel", {
            "red": ("@image_a", "red"), "green": ("@image_a", "green"),
            "blue": ("@image_a", "blue"), "rgba_alpha": ("@image_rgba", "alpha"),
            "rgb_alpha": ("@image_a", "alpha"),
        }),
        *rows("SolidMask", "value width height", {
            "odd": (0.37, 9, 5), "pixel": (1.0, 1, 1), "zero": (0.0, 3, 2),
        }),
        *rows("InvertMask", "mask", {"batch": ("@mask_b",)}),
        *rows("GrowMask", "mask expand tapered_corners", grows),
        *rows("FeatherMask", "mask left top right bottom", {
            "none": ("@mask_b", 0, 0, 0, 0), "left": ("@mask_b", 3, 0, 0, 0),
            "right": ("@mask_b", 0, 0, 3, 0), "top_bottom": ("@mask_b", 0, 2, 0, 2),
            "all": ("@mask_b", 4, 3, 5, 2), "ones": ("@mask_b", 1, 1, 1, 1),
            "beyond": ("@mask_b", 100, 100, 100, 100), "wide": ("@mask_wide", 6, 1, 9, 4),
        }),
        *rows("CropMask", "mask x y width height", {
            "inside": ("@mask_b", 1, 2, 5, 3), "whole": ("@mask_b", 0, 0, 512, 512),
            "off_edge": ("@mask_b", 6, 4, 5, 5), "last_pixel": ("@mask_b", 8, 6, 3, 3),
            "outside": ("@mask_b", 9, 0, 2, 2), "batch3": ("@mask_c", 2, 1, 10, 1),
        }),
    ]  # fmt: skip


def mask_composite_cases() -> list[dict[str, Any]]:
    """MaskComposite: every operation, clipped, placed at and past the edges, batches."""
    table = {f"{op}.clipped": ("@mask_b", "@mask_big", 3, 2, op) for op in MASK_OPERATIONS}
    table |= {f"{op}.eighths": ("@mask_b", "@mask_b2", 2, 1, op) for op in MASK_OPERATIONS}
    table |= {
        "at_edge": ("@mask_b", "@mask_big", 9, 0, "add"),
        "below": ("@mask_b", "@mask_big", 0, 7, "add"),
        "beyond": ("@mask_b", "@mask_big", 12, 0, "add"),
        "far_below": ("@mask_b", "@mask_big", 0, 30, "add"),
        "batch_one_into_many": ("@mask_b", "@mask_a", 0, 0, "subtract"),
        "batch_many_into_one": ("@mask_a", "@mask_pair", 0, 0, "add"),
        "batch_mismatch": ("@mask_b", "@mask_c", 0, 0, "add"),
    }
    return rows("MaskComposite", "destination source x y operation", table)


def image_cases() -> list[dict[str, Any]]:
    """ImagePadForOutpaint, ImageInvert, ImageBlend (every mode), ImageCrop, ImageBatch."""
    blends = {f"{m}.same_size": ("@image_b", "@image_b", 0.5, m) for m in BLEND_MODES}
    blends |= {f"{m}.resized": ("@image_b", "@image_c", 0.3, m) for m in BLEND_MODES}
    blends |= {
        "factor0": ("@image_a", "@image_c", 0.0, "soft_light"),
        "factor1": ("@image_a", "@image_c", 1.0, "soft_light"),
        "batch_one_many": ("@image_a", "@image_b", 0.7, "overlay"),
        "batch_many_one": ("@image_b", "@image_a", 0.7, "overlay"),
        "rgb_over_rgba": ("@image_a", "@image_rgba", 0.5, "screen"),
        "rgba_over_rgb": ("@image_rgba", "@image_a", 0.5, "screen"),
        "grey": ("@image_a", "@image_grey", 0.5, "multiply"),
        "batch_mismatch": ("@image_b", "@image_d", 0.5, "normal"),
    }
    return [
        *rows("ImagePadForOutpaint", "image left top right bottom feathering", {
            "left_right_bottom": ("@image_big", 8, 0, 8, 8, 5),
            "top_only": ("@image_big", 0, 8, 0, 0, 3),
            "none": ("@image_big", 0, 0, 0, 0, 40),
            "all_no_feather": ("@image_big", 8, 8, 8, 8, 0),
            "feather_too_wide": ("@image_big", 8, 8, 8, 8, 6),
            "odd_amounts": ("@image_big", 3, 5, 1, 7, 4),
            "rgba": ("@image_rgba", 2, 0, 0, 8, 1),
        }),
        *rows("ImageInvert", "image", {"batch": ("@image_b",)}),
        *rows("ImageBlend", "image1 image2 blend_factor blend_mode", blends),
        *rows("ImageCrop", "image width height x y", {
            "inside": ("@image_b", 3, 2, 1, 1), "whole": ("@image_b", 512, 512, 0, 0),
            "off_edge": ("@image_b", 4, 4, 6, 5), "clamped": ("@image_b", 2, 2, 100, 100),
        }),
        *rows("ImageBatch", "image1 image2", {
            "same": ("@image_a", "@image_b"), "resized": ("@image_b", "@image_c"),
            "alpha_added": ("@image_a", "@image_rgba"),
            "alpha_resized": ("@image_rgba", "@image_c"),
            "aspect": ("@image_c", "@image_d"), "grey": ("@image_a", "@image_grey"),
        }),
    ]  # fmt: skip


def scale_cases() -> list[dict[str, Any]]:
    """ImageScaleBy (every method) and ImageScaleToTotalPixels."""
    by = {f"{m}.{f}": ("@image_c", m, f) for m in UPSCALE_METHODS for f in (0.5, 1.0, 1.5, 2.37)}
    by |= {
        "rgba_lanczos": ("@image_rgba", "lanczos", 1.5),
        "batch_bicubic": ("@image_d", "bicubic", 0.7),
        "to_nothing": ("@image_c", "bilinear", 0.01),
    }
    return [
        *rows("ImageScaleBy", "image upscale_method scale_by", by),
        *rows("ImageScaleToTotalPixels", "image upscale_method megapixels resolution_steps", {
            "area_steps8": ("@image_c", "area", 0.01, 8),
            "lanczos_steps64": ("@image_c", "lanczos", 0.01, 64),
            "to_nothing": ("@image_c", "nearest-exact", 0.01, 256),
        }),
    ]  # fmt: skip


def composite_cases() -> list[dict[str, Any]]:
    """ImageCompositeMasked: clipped, masks of other sizes and batches, resized sources."""
    return rows("ImageCompositeMasked", "destination source x y resize_source mask", {
        "plain": ("@image_b", "@image_c", 0, 0, False, None),
        "clipped": ("@image_b", "@image_c", 5, 4, False, None),
        "mask_batch3": ("@image_b", "@image_c", 1, 1, False, "@mask_c"),
        "mask_bigger": ("@image_b", "@image_c", 2, 0, False, "@mask_big"),
        "resized_source": ("@image_b", "@image_c", 0, 0, True, "@mask_a"),
        "resized_offset": ("@image_b", "@image_c", 3, 2, True, None),
        "at_edge": ("@image_b", "@image_c", 9, 0, False, None),
        "beyond": ("@image_b", "@image_c", 100, 100, False, "@mask_a"),
        "source_batch_larger": ("@image_a", "@image_d", 1, 0, False, "@mask_pair"),
        "rgba_source": ("@image_a", "@image_rgba", 2, 3, False, None),
        "rgba_destination": ("@image_rgba", "@image_a", 0, 0, False, None),
        "grey_source": ("@image_a", "@image_grey", 1, 1, False, "@mask_a"),
    })  # fmt: skip


def all_cases() -> list[dict[str, Any]]:
    groups = (mask_cases, mask_composite_cases, image_cases, scale_cases, composite_cases)
    return [case for group in groups for case in group()]


def comfy_node_classes() -> tuple[dict[str, Any], dict[str, str]]:
    """ComfyUI's classes for NODES and nodes.py's display names (nodes.py loaded as `nodes`,
    shadowing nodegraph's package; `server` stubbed: only its PromptServer name is imported)."""
    if "--cpu" not in sys.argv:
        sys.argv.append("--cpu")
    stubs = os.environ.get("COMFY_STUBS")
    if stubs and stubs not in sys.path:
        sys.path.append(stubs)
    import comfy.options

    comfy.options.enable_args_parsing()
    import importlib.util

    import comfy.utils

    path = Path(comfy.utils.__file__).resolve().parents[1] / "nodes.py"
    spec = importlib.util.spec_from_file_location("nodes", path)
    comfy_nodes = importlib.util.module_from_spec(spec)
    sys.modules["nodes"] = comfy_nodes
    spec.loader.exec_module(comfy_nodes)
    server = types.ModuleType("server")
    server.PromptServer = type("PromptServer", (), {"instance": None})
    sys.modules["server"] = server
    import comfy_extras.nodes_images as images
    import comfy_extras.nodes_mask as masks
    import comfy_extras.nodes_post_processing as post

    found: dict[str, Any] = {}
    for module in (images, masks, post):
        for obj in vars(module).values():
            if isinstance(obj, type) and obj.__module__ == module.__name__:
                node_id = obj.GET_SCHEMA().node_id if hasattr(obj, "GET_SCHEMA") else None
                if node_id in NODES:
                    found[node_id] = obj
    for name in NODES:
        found.setdefault(name, comfy_nodes.NODE_CLASS_MAPPINGS.get(name))
    missing = [n for n in NODES if found[n] is None]
    if missing:
        raise SystemExit(f"not in this ComfyUI: {missing}")
    return found, comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS


def run_comfy(cls: Any, inputs: dict[str, Any]) -> tuple[Any, ...]:
    """One call of a ComfyUI node class (the classic API or the schema API)."""
    if hasattr(cls, "GET_SCHEMA"):
        return tuple(cls.execute(**inputs).result)
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


def comfy_schema(node_id: str, cls: Any, display_names: dict[str, str]) -> dict[str, Any]:
    """A node's public contract: inputs in order with type (or choices), default, min, max,
    step; outputs; category; display name."""
    inputs = []
    for section, entries in cls.INPUT_TYPES().items():
        if section not in ("required", "optional"):
            continue
        for name, entry in entries.items():
            kind, options = entry[0], dict(entry[1]) if len(entry) > 1 else {}
            if kind == "COMBO":
                kind = list(options["options"])
            if isinstance(kind, list) and options.get("image_upload"):
                kind = "IMAGE_FILE"
            item = {"name": name, "section": section, "type": kind}
            item.update({k: options[k] for k in ("default", "min", "max", "step") if k in options})
            inputs.append(item)
    display = cls.GET_SCHEMA().display_name if hasattr(cls, "GET_SCHEMA") else None
    display = display or display_names.get(node_id, node_id)  # nodes.py's table, else the id
    return {"inputs": inputs, "outputs": list(cls.RETURN_TYPES), "category": cls.CATEGORY,
            "display_name": display}  # fmt: skip


def resolve(value: Any, tensors: dict[str, torch.Tensor], folder: Path) -> Any:
    if isinstance(value, dict) and "tensor" in value:
        return tensors[value["tensor"]].clone()
    if isinstance(value, dict) and "picture" in value:
        return write_picture(folder, value["picture"], tensors).name
    return value


def run_cases(
    classes: dict[str, Any], tensors: dict[str, torch.Tensor], folder: Path
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Every case through ComfyUI: the cases with their output keys or errors, and the outputs."""
    cases, outputs = all_cases(), {}
    for item in cases:
        kwargs = {k: resolve(v, tensors, folder) for k, v in item["inputs"].items()}
        try:
            results = run_comfy(classes[item["node"]], kwargs)
        except Exception as exc:  # noqa: BLE001 - what ComfyUI raises is the reference
            item["error"] = f"{type(exc).__name__}: {exc}"
            print(f"{item['name']}: {item['error']}")
            continue
        item["outputs"] = [f"out.{item['name']}.{i}" for i in range(len(results))]
        for key, result in zip(item["outputs"], results, strict=True):
            outputs[key] = result.detach().cpu().contiguous().clone()
        print(f"{item['name']}: {[tuple(r.shape) for r in results]}")
    return cases, outputs


def manifest_text(commit: str, schemas: dict[str, Any], cases: list[dict[str, Any]]) -> str:
    """The manifest as JSON, one line per picture, node schema and case."""
    parts = [f'"comfyui_commit": {json.dumps(commit)}']
    for key, table in (("pictures", PICTURES), ("schemas", schemas)):
        lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in table.items())
        parts.append(f'"{key}": {{\n{lines}\n}}')
    parts.append('"cases": [\n' + ",\n".join(json.dumps(c) for c in cases) + "\n]")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main() -> None:
    from tools.comfy_reference.make_reference import comfy_commit  # before ComfyUI's `nodes`

    torch.set_num_threads(1)
    classes, display_names = comfy_node_classes()
    import folder_paths
    from safetensors.torch import save_file

    tensors = seeded_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        folder_paths.set_input_directory(tmp)  # LoadImageMask reads (and lists) its files there
        cases, outputs = run_cases(classes, tensors, Path(tmp))
        schemas = {n: comfy_schema(n, classes[n], display_names) for n in NODES}
    save_file({**tensors, **outputs}, TENSORS)
    MANIFEST.write_text(manifest_text(comfy_commit(), schemas, cases))
    print(f"{len(cases)} cases written to {MANIFEST.parent}")


if __name__ == "__main__":
    main()
