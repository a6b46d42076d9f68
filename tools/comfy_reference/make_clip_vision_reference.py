"""Reference numbers from ComfyUI's CLIP vision code for tests/test_clip_vision.py.

Run by hand with ComfyUI importable (see README.md here); never by the tests. The tests' tiny
encoder (tests/clip_vision_fixtures.py) goes into ComfyUI's own ClipVisionModel through a json
config of its size (ComfyUI's file detection knows only full-size towers), and the fixtures'
pictures through `clip_preprocess` and `encode_image` with crop "center" and "none" (ComfyUI's
CLIPVisionEncode), on the CPU, one thread.

Writes tests/data/comfy_reference/clip_vision.safetensors: `<picture>.<crop>.pixels` (the
preprocessed pixels) and `<picture>.<crop>.<output>` for last_hidden_state,
penultimate_hidden_states and image_embeds, with the ComfyUI version in the header.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "comfy_reference" / "clip_vision.safetensors"
sys.path.insert(0, str(ROOT))

from tests.clip_vision_fixtures import TINY, pictures, tiny_state  # noqa: E402
from tools.comfy_reference.make_reference import comfy_commit  # noqa: E402
from tools.comfy_reference.toy import comfy_modules  # noqa: E402

OUTPUTS = ("last_hidden_state", "penultimate_hidden_states", "image_embeds")


def main() -> None:
    state = tiny_state()  # transformers first: ComfyUI's torchvision stand-in would stop it
    comfy_modules()
    import comfy.clip_model
    import comfy.clip_vision

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "tiny.json"
        config.write_text(json.dumps({**TINY, "model_type": "clip_vision_model"}))
        clip = comfy.clip_vision.ClipVisionModel(str(config))
    missing, unexpected = clip.load_sd(state)
    print("ComfyUI holds the weights in", clip.dtype)
    assert not missing and not unexpected, (missing, unexpected)
    tensors = {}
    for name, image in pictures().items():
        for crop in ("center", "none"):
            key = f"{name}.{crop}"
            tensors[f"{key}.pixels"] = comfy.clip_model.clip_preprocess(
                image, size=clip.image_size, mean=clip.image_mean, std=clip.image_std,
                crop=crop == "center",
            ).contiguous()  # fmt: skip
            out = clip.encode_image(image, crop=crop == "center")
            for output in OUTPUTS:
                tensors[f"{key}.{output}"] = out[output].detach().float().contiguous()
            print(
                key,
                tuple(tensors[f"{key}.pixels"].shape),
                float(out["image_embeds"].detach().std()),
            )
    save_file(tensors, str(OUT), metadata={"comfyui_commit": comfy_commit()})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
