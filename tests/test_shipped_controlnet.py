"""The shipped scribble ControlNet (nodes/shipped_model/controlnet, tools/train_controlnet.py):
listed by name among the controlnets, loaded through ControlNetLoader, fitting the shipped UNet,
and trained (its zero convolutions are no longer zero); the bench's scribbles and goal check."""

from __future__ import annotations

import json

import pytest
import torch

from bench import model_quality
from nodegraph import RunSettings
from nodes.control.nodes import ControlNetLoader
from nodes.loading import folders as F
from tools import shapes

exported = pytest.mark.skipif(
    not (F.SHIPPED_CONTROLNET_DIR / "config.json").is_file(),
    reason="the shipped ControlNet is not exported yet",
)


class Ctx:
    settings = RunSettings(options={"device": "cpu"})

    def progress(self, value: int, total: int, preview=None) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


@exported
def test_it_is_listed_first_among_the_controlnets_and_found_by_name():
    listed = F.list_models("controlnet")
    assert listed[0].name == F.SHIPPED_CONTROLNET_NAME == "nodegraph-shapes-scribble"
    assert F.SHIPPED_CONTROLNET_NAME in F.model_names("controlnet")
    found = F.find_model("controlnet", F.SHIPPED_CONTROLNET_NAME)
    assert found.path == F.SHIPPED_CONTROLNET_DIR and found.format == "component"
    assert F.SHIPPED_CONTROLNET_NAME not in F.model_names("checkpoints")
    assert F.model_names("checkpoints")[0] == F.SHIPPED_NAME


@exported
def test_it_loads_through_the_loader_and_fits_the_shipped_unet():
    loaded = ControlNetLoader(control_net_name=F.SHIPPED_CONTROLNET_NAME).invoke(Ctx())
    net = loaded.net
    assert loaded.context_width == 64
    unet = json.loads((F.SHIPPED_DIR / "unet" / "config.json").read_text())
    assert list(net.config.block_out_channels) == unet["block_out_channels"]
    assert net.config.cross_attention_dim == unet["cross_attention_dim"] == 64
    # trained: the zero convolutions (from_unet starts them at zero) have moved
    assert any(float(b.weight.abs().max()) > 1e-3 for b in net.controlnet_down_blocks)
    assert float(net.controlnet_mid_block.weight.abs().max()) > 1e-3
    # and a scribble changes its residuals: a square outline against an empty hint
    hint = torch.zeros(1, 3, 128, 128)
    outline = hint.clone()
    outline[:, :, 40:43, 40:90] = outline[:, :, 87:90, 40:90] = 1.0
    outline[:, :, 40:90, 40:43] = outline[:, :, 40:90, 87:90] = 1.0
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.zeros(1, 16, 64)
    dtype = next(net.parameters()).dtype
    with torch.no_grad():
        args = dict(encoder_hidden_states=text.to(dtype), return_dict=False)
        _, mid_empty = net(latent.to(dtype), 700, controlnet_cond=hint.to(dtype), **args)
        _, mid_square = net(latent.to(dtype), 700, controlnet_cond=outline.to(dtype), **args)
    assert float((mid_square - mid_empty).abs().mean()) > 1e-4


def test_the_bench_scribbles_are_seeded_and_centred_where_the_shape_is():
    cases = model_quality.control_cases(6)
    again = model_quality.control_cases(6)
    for case, same in zip(cases, again, strict=True):
        assert case["caption"] == same["caption"]
        assert (case["hint"] == same["hint"]).all()
        assert case["hint"].shape == (128, 128, 3) and set(case["hint"][..., 0].ravel()) > {0}
        assert shapes.parse_caption(case["caption"])[0] == case["shape"]
        picture = shapes.draw_shape(case["shape"], "white", "black", 128,
                                    *_geometry(case), colour_jitter=0)
        drawn = shapes.check_image(picture).centroid
        assert abs(drawn[0] - case["centroid"][0]) < 0.03
        assert abs(drawn[1] - case["centroid"][1]) < 0.03
    other = model_quality.control_cases(6, other_shape_word=True)
    assert all(shapes.parse_caption(o["caption"])[0] != o["shape"] for o in other)
    assert [o["shape"] for o in other] == [c["shape"] for c in cases]


def _geometry(case: dict) -> tuple[tuple[float, float], float]:
    """The box centre and size of a case's scribble, read back from its lines."""
    ys, xs = (case["hint"][..., 0] > 128).nonzero()
    side = max(xs.max() - xs.min(), ys.max() - ys.min()) / 128
    return ((xs.max() + xs.min() + 1) / 256, (ys.max() + ys.min() + 1) / 256), side


def test_the_controlnet_goal_check_reads_the_bar():
    good = {"centroid_share": 0.92, "shape_share": 0.9, "colour_share": 0.95,
            "background_share": 1.0}
    anywhere = {"centroid_share": 0.05, "shape_share": 0.9, "colour_share": 0.95,
                "background_share": 1.0}
    assert all(model_quality.controlnet_goals(
        {"with_control": good, "without_control": anywhere}).values())
    for key, missed in (("centroid_share", "control, the centroid"),
                        ("shape_share", "shape as drawn"),
                        ("background_share", "colour and background")):
        goals = model_quality.controlnet_goals(
            {"with_control": {**good, key: 0.89}, "without_control": anywhere})
        assert [g for g, met in goals.items() if not met] == [g for g in goals if missed in g]
    goals = model_quality.controlnet_goals({"with_control": good, "without_control": good})
    assert [g for g, met in goals.items() if not met] == [g for g in goals if "anywhere" in g]
