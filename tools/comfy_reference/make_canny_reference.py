"""Reference edge maps from ComfyUI's own Canny node for tests/test_canny.py.

Run by hand with ComfyUI importable (see README.md here); never by the tests. A few seeded
pictures (shapes on a background, a smooth random field, a noisy gradient), quantised to 8 bits
as a loaded PNG is, go through ComfyUI's `Canny.execute` at several threshold pairs.

Writes tests/data/comfy_reference/canny.safetensors: `images` (cases, H, W, 3) uint8 and one
`edges.<i>` (cases, H, W) uint8 per threshold pair (ComfyUI's three channels are equal: checked
here), with the ComfyUI version and the thresholds in the header.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "comfy_reference" / "canny.safetensors"
sys.path.insert(0, str(ROOT))

from tools.comfy_reference.make_reference import comfy_commit  # noqa: E402
from tools.comfy_reference.toy import comfy_modules  # noqa: E402

HEIGHT, WIDTH = 64, 80
THRESHOLDS = ((0.4, 0.8), (0.1, 0.2), (0.05, 0.5), (0.3, 0.3), (0.6, 0.99))


def shapes(g: torch.Generator) -> torch.Tensor:
    """Rectangles and discs of random colours on a random background, a little noise."""
    yy, xx = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    image = torch.rand(3, generator=g).expand(HEIGHT, WIDTH, 3).clone()
    for _ in range(4):
        cy, cx = (
            int(torch.randint(8, HEIGHT - 8, (1,), generator=g)),
            int(torch.randint(8, WIDTH - 8, (1,), generator=g)),
        )
        r = int(torch.randint(5, 16, (1,), generator=g))
        colour = torch.rand(3, generator=g)
        if torch.rand(1, generator=g) < 0.5:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            inside = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r // 2 + 3)
        image[inside] = colour
    return image + 0.03 * torch.randn(HEIGHT, WIDTH, 3, generator=g)


def smooth_field(g: torch.Generator) -> torch.Tensor:
    """Random colours at 8x10, upscaled bicubically: soft edges of every strength."""
    small = torch.rand(1, 3, 8, 10, generator=g)
    return F.interpolate(small, size=(HEIGHT, WIDTH), mode="bicubic")[0].movedim(0, -1)


def noisy_gradient(g: torch.Generator) -> torch.Tensor:
    """A diagonal gradient with a bright bar and strong noise."""
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, HEIGHT), torch.linspace(0, 1, WIDTH), indexing="ij"
    )
    image = ((yy + xx) / 2)[..., None].expand(HEIGHT, WIDTH, 3).clone()
    image[20:28, 10:70] = torch.tensor([0.9, 0.2, 0.1])
    return image + 0.12 * torch.randn(HEIGHT, WIDTH, 3, generator=g)


def pictures() -> torch.Tensor:
    """The cases as (N, H, W, 3) uint8."""
    out = [make(torch.Generator().manual_seed(seed)) for seed, make in
           enumerate((shapes, smooth_field, noisy_gradient, shapes))]  # fmt: skip
    return (torch.stack(out).clamp(0, 1) * 255).round().to(torch.uint8)


def main() -> None:
    comfy_modules()  # ComfyUI's argument parsing with --cpu, and the stand-ins on the path
    from comfy_extras.nodes_canny import Canny

    torch.set_num_threads(1)
    images = pictures()
    tensors = {"images": images}
    for i, (low, high) in enumerate(THRESHOLDS):
        out = Canny.execute(images.float() / 255.0, low, high).result[0]
        assert out.shape == (*images.shape[:3], 3)
        assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 0], out[..., 2])
        assert set(out.unique().tolist()) <= {0.0, 1.0}
        tensors[f"edges.{i}"] = out[..., 0].to(torch.uint8).contiguous()
        print(f"thresholds {low}, {high}: {int(out[..., 0].sum())} edge pixels")
    header = {"comfyui_commit": comfy_commit(), "thresholds": json.dumps(THRESHOLDS)}
    save_file(tensors, str(OUT), metadata=header)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
