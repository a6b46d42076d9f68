"""UpscaleModelLoader + ImageUpscaleWithModel: a tiny random-weight ESRGAN (RRDBNet, Real-ESRGAN's
key layout) written by the test as .safetensors and .pth loads through spandrel; tiles (small,
forced) give the untiled picture away from their seams; unknown and unsafe files fail clearly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nodegraph import RunSettings, events
from nodegraph.executor import Executor
from nodes.loading.folders import use_model_dirs
from nodes.upscaling import upscale as upscale_module
from nodes.upscaling.library import spandrel, torchvision_works, usable
from nodes.upscaling.model import STORE, UpscaleModel, load_upscale_model
from nodes.upscaling.tiles import spans
from nodes.upscaling.upscale import upscale
from tests.diffusion_fixtures import diffusion_registry

FEATURES, GROWTH, SCALE = 8, 32, 4  # spandrel's RRDBNet grows by 32 channels
REACH = 20
"""Input pixels a tile's zero padding reaches into its output: 17 convolutions at the input's
resolution (first, 3 x 5 in the block, body), a little more after the upsampling ones."""


def rrdbnet(seed: int = 0) -> dict[str, torch.Tensor]:
    """An ESRGAN x4 state dict with one RRDB block, in BasicSR's (Real-ESRGAN's) names."""
    g = torch.Generator().manual_seed(seed)

    def conv(out_ch: int, in_ch: int) -> list[torch.Tensor]:
        weight = torch.randn(out_ch, in_ch, 3, 3, generator=g) / (3 * in_ch**0.5)
        return [weight, torch.randn(out_ch, generator=g) * 0.05]

    shapes = {"conv_first": (FEATURES, 3)}
    for rdb in (1, 2, 3):
        for i in range(1, 6):
            out_ch = FEATURES if i == 5 else GROWTH
            shapes[f"body.0.rdb{rdb}.conv{i}"] = (out_ch, FEATURES + (i - 1) * GROWTH)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes[name] = (FEATURES, FEATURES)
    shapes["conv_last"] = (3, FEATURES)
    state = {}
    for name, shape in shapes.items():
        state[f"{name}.weight"], state[f"{name}.bias"] = conv(*shape)
    state["conv_last.bias"] += 0.5  # pictures mostly inside 0..1, not clamped
    return state


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("upscale_models_root")
    folder = root / "upscale_models"
    (folder / "esrgan").mkdir(parents=True)
    state = rrdbnet()
    save_file(state, str(folder / "esrgan" / "tiny_x4.safetensors"))
    torch.save({"params_ema": state}, folder / "tiny_x4.pth")  # as Real-ESRGAN ships them
    save_file({"foo.weight": torch.zeros(4, 4)}, str(folder / "not_an_upscaler.safetensors"))
    marker = root / "code_ran"
    torch.save({"params_ema": state, "trap": Trap(marker)}, folder / "needs_pickle.pth")
    use_model_dirs([root])  # the loader's choices come from the host's folders
    return root


class Trap:
    """Unpickling this creates a folder: what a weights-only load must never do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def options(root: Path) -> dict:
    return {"models": [str(root)], "device": "cpu"}


def picture(height: int, width: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    """Smooth random pictures (B, H, W, 3) in 0..1."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(batch, 3, height // 8, width // 8, generator=g)
    big = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear")
    return big.movedim(1, -1).contiguous()


def test_both_files_load_through_spandrel_with_the_tests_weights(models: Path) -> None:
    a = load_upscale_model("esrgan/tiny_x4.safetensors", options(models))
    b = load_upscale_model("tiny_x4.pth", options(models))
    assert (a.architecture, a.scale, b.architecture, b.scale) == ("ESRGAN", 4, "ESRGAN", 4)
    loaded = a.descriptor.model.state_dict()
    state = rrdbnet()
    assert torch.equal(loaded["model.0.weight"], state["conv_first.weight"])  # old-arch names
    block = loaded["model.1.sub.0.RDB2.conv3.0.weight"]
    assert torch.equal(block, state["body.0.rdb2.conv3.weight"])
    image = picture(24, 32)
    out_a, out_b = upscale(a, image), upscale(b, image)
    assert out_a.shape == (1, 96, 128, 3) and torch.equal(out_a, out_b)
    assert 0.05 < float(out_a.mean()) < 0.95 and float(out_a.std()) > 0.01
    if not torchvision_works():
        assert "torchvision" not in sys.modules  # the stand-in was only there while importing


def clean(size: int, tile: int, overlap: int) -> torch.Tensor:
    """Input pixels along a side that no tile's padding reaches: inside one tile only, REACH
    pixels from its inner edges."""
    keep = torch.zeros(size, dtype=torch.bool)
    tiles = spans(size, tile, overlap)
    for x in range(size):
        cover = [(s, n) for s, n in tiles if s <= x < s + n]
        keep[x] = len(cover) == 1 and all(
            (s == 0 or x - s >= REACH) and (s + n == size or s + n - 1 - x >= REACH)
            for s, n in cover
        )
    return keep.repeat_interleave(SCALE)


def test_tiles_equal_the_whole_picture_away_from_their_seams(models: Path) -> None:
    model = load_upscale_model("esrgan/tiny_x4.safetensors", options(models))
    images = picture(112, 104)
    whole = upscale(model, images, tile=512)
    tiled = upscale(model, images, tile=64, overlap=16)
    assert tiled.shape == whole.shape == (1, 448, 416, 3)
    rows, cols = clean(112, 64, 16), clean(104, 64, 16)
    inside = rows[:, None] & cols[None, :]
    assert 0.3 < float(inside.float().mean()) < 0.9
    diff = (tiled - whole).abs().amax(dim=(0, 3))
    assert float(diff[inside].max()) <= 1 / 255
    assert float(diff[~inside].max()) > 1e-3  # the seams differ: the tiles really were tiles


def run(root: Path, tmp_path: Path, picture_size: tuple[int, int], model_name: str):
    image = (picture(*picture_size)[0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(image).save(tmp_path / "in.png")
    wf = {
        "load": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "model": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
        "up": {"class_type": "ImageUpscaleWithModel",
               "inputs": {"upscale_model": ["model", 0], "image": ["load", 0]}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["up", 0]}},
    }  # fmt: skip
    settings = RunSettings(input_dir=tmp_path, output_dir=tmp_path / "o", temp_dir=tmp_path / "t",
                           options=options(root))  # fmt: skip
    seen: list[events.Event] = []
    return Executor(diffusion_registry()).run(wf, settings, on_event=seen.append), seen


def test_the_nodes_offer_the_folders_files_and_report_each_tile(models, tmp_path, monkeypatch):
    catalogue = diffusion_registry().catalogue()
    loader, node = catalogue["UpscaleModelLoader"], catalogue["ImageUpscaleWithModel"]
    names = loader["input"]["required"]["model_name"][0]
    assert {"esrgan/tiny_x4.safetensors", "tiny_x4.pth", "needs_pickle.pth"} <= set(names)
    assert loader["output"] == ["UPSCALE_MODEL"] and node["output"] == ["IMAGE"]
    assert node["input_order"]["required"] == ["upscale_model", "image"]
    assert (upscale_module.TILE, upscale_module.OVERLAP) == (512, 32)  # ComfyUI's
    monkeypatch.setattr(upscale_module, "TILE", 64)
    monkeypatch.setattr(upscale_module, "OVERLAP", 16)
    result, seen = run(models, tmp_path, (112, 72), "tiny_x4.pth")
    assert result.ok, result.error
    assert result.outputs["up"][0].shape == (1, 448, 288, 3)
    ticks = [(e.value, e.max) for e in seen if isinstance(e, events.Progress) and e.node_id == "up"]
    assert ticks == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 2 x 2 tiles


def test_a_file_spandrel_does_not_know_is_a_clear_error(models, tmp_path):
    result, _ = run(models, tmp_path, (16, 16), "not_an_upscaler.safetensors")
    assert not result.ok and result.error.node_id == "model"
    message = result.error.message
    assert "UpscaleModelLoader: model_name 'not_an_upscaler.safetensors'" in message
    assert "spandrel recognises no upscale model architecture" in message


def test_a_pth_needing_more_than_weights_is_refused_unopened(models, tmp_path):
    STORE.clear()
    result, _ = run(models, tmp_path, (16, 16), "needs_pickle.pth")
    assert not result.ok and result.error.node_id == "model"
    message = result.error.message
    assert "UpscaleModelLoader: model_name 'needs_pickle.pth'" in message
    assert "refusing to unpickle needs_pickle.pth" in message and "posix.mkdir" in message
    assert "weights_only=True" in message
    assert not (models / "code_ran").exists()


class Doubler:
    """A stand-in model (nearest x2) that runs out of memory on tiles above `limit` pixels."""

    input_channels, scale, model = 3, 2, torch.nn.Identity()

    def __init__(self, limit: int) -> None:
        self.limit, self.tiles = limit, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("out of memory (a test)")
        return x.repeat_interleave(2, -1).repeat_interleave(2, -2)


def test_out_of_memory_halves_the_tile_until_128() -> None:
    images = picture(300, 280)
    fits = Doubler(limit=200)
    out = upscale(UpscaleModel(fits, "doubler", torch.device("cpu")), images)
    assert fits.tiles[:2] == [300, 256]  # tile 512 (the whole picture), then 256: too big
    assert max(fits.tiles[2:]) == 128 and len(fits.tiles[2:]) == 9  # 3 x 3 tiles of 128
    expected = images.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.allclose(out, expected, atol=1e-6)
    never = Doubler(limit=0)
    with pytest.raises(torch.OutOfMemoryError):
        upscale(UpscaleModel(never, "doubler", torch.device("cpu")), images)
    assert never.tiles == [300, 256, 128]  # 512 (the whole picture), 256, 128; not 64


def test_spandrel_imports_without_torchvision() -> None:
    library = spandrel()
    assert "ESRGAN" in library.MAIN_REGISTRY and usable("ESRGAN") and usable("SwinIR")
    if torchvision_works():
        pytest.skip("torchvision works here")
    assert not usable("RestoreFormer") and not usable("LaMa")
    refuse = library.architectures.RestoreFormer.tv_normalize
    with pytest.raises(RuntimeError, match="needs torchvision"):
        refuse(torch.zeros(1, 3, 2, 2), [0.5] * 3, [0.5] * 3)
