"""The README's contact sheet of the "beyond the strength dial" workflows on the shipped model:
each workflow's input picture (where it has one) and result, labelled, written to
docs/beyond_strength.png.

    .venv/bin/python tools/readme_pictures.py [--out docs/beyond_strength.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

from nodegraph.cli import main as cli  # noqa: E402

WORKFLOWS = ROOT / "workflows"
SHOWN = (
    ("comfy_inpaint", "inpaint: the painted circle made green"),
    ("comfy_outpaint", "outpaint: 32 px each side"),
    ("comfy_hires_fix", "hires fix: 128 -> 256 px"),
    ("comfy_area_composition", "area prompts: left / right"),
    ("comfy_controlnet_scribble", "ControlNet from a scribble"),
)
HEIGHT, LABEL = 128, 16


def source_picture(name: str) -> Path | None:
    for node in json.loads((WORKFLOWS / f"{name}.json").read_text()).values():
        if node["class_type"] == "LoadImage":
            return WORKFLOWS / node["inputs"]["image"]
    return None


def result(name: str, out: Path) -> Path:
    report = out / f"{name}.json"
    code = cli(["run", str(WORKFLOWS / f"{name}.json"), "--out", str(out / name), "--report",
                str(report), "--device", "cpu", "--quiet"])  # fmt: skip
    if code != 0:
        raise SystemExit(f"{name} failed: {report.read_text()}")
    return Path(json.loads(report.read_text())["runs"][0]["outputs"][-1])


def tile(path: Path) -> Image.Image:
    with Image.open(path) as picture:
        rgb = picture.convert("RGB")
    return rgb.resize((round(rgb.width * HEIGHT / rgb.height), HEIGHT), Image.Resampling.NEAREST)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "beyond_strength.png")
    args = parser.parse_args(argv)
    groups = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, label in SHOWN:
            if not (WORKFLOWS / f"{name}.json").is_file():
                continue
            source = source_picture(name)
            pictures = ([tile(source)] if source is not None else []) + [
                tile(result(name, Path(tmp)))
            ]
            groups.append((label, pictures))
    gap = 12
    width = sum(sum(p.width for p in pics) + gap for _, pics in groups) + gap
    sheet = Image.new("RGB", (width, HEIGHT + LABEL + gap), "white")
    draw, x = ImageDraw.Draw(sheet), gap
    for label, pictures in groups:
        draw.text((x, 2), label, fill="black")
        for picture in pictures:
            sheet.paste(picture, (x, LABEL))
            x += picture.width
        x += gap
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"{args.out}: {len(groups)} workflows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
