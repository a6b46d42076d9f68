"""Area conditioning, by property and by hand: what the UNet is shown for a Cond with an area,
and how the samplers blend several Conds (ComfyUI's weighting, worked out by hand). ComfyUI's
own numbers for the same nodes are in tests/test_comfy_sampling.py (the area.* cases)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from nodes.conditioning.areas import (
    ConditioningSetArea,
    ConditioningSetAreaStrength,
    ConditioningSetTimestepRange,
)
from nodes.conditioning.combine import ConditioningCombine
from nodes.sampling.comfy.guidance import Guider
from nodes.values import Conditioning
from tests import comfy_cases as C

HEIGHT, WIDTH = 16, 32
"""The latent's size: the left half is 16 latent pixels wide, so its edge ramp is 4 wide."""


class Spy(torch.nn.Module):
    """A UNet that records the latents and texts it is given."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet, self.config, self.calls = unet, unet.config, []

    def forward(self, sample: torch.Tensor, t: Any, encoder_hidden_states: Any, **kw: Any) -> Any:
        self.calls.append((sample.shape, encoder_hidden_states.clone()))
        return self.unet(sample, t, encoder_hidden_states=encoder_hidden_states, **kw)


class TextMeanUnet(torch.nn.Module):
    """Predicts, at every latent pixel, the mean of the text it is given (so each prompt's
    estimate is known by hand)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    def forward(self, sample: torch.Tensor, t: Any, encoder_hidden_states: Any, **kw: Any) -> Any:
        mean = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return (mean.expand_as(sample).clone(),)


def ctx() -> Any:
    return None


def text(value: float) -> Conditioning:
    return Conditioning.of(torch.full((1, 77, 32), value))


def combine(a: Conditioning, b: Conditioning) -> Conditioning:
    return ConditioningCombine(conditioning_1=a, conditioning_2=b).invoke(ctx())


def left_half(c: Conditioning, strength: float = 1.0) -> Conditioning:
    node = ConditioningSetArea(conditioning=c, width=WIDTH * 4, height=HEIGHT * 8, x=0, y=0,
                               strength=strength)  # fmt: skip
    return node.invoke(ctx())


def estimate(model: Any, positive: Conditioning, negative: Conditioning, cfg: float) -> Any:
    x = torch.randn((1, 4, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(0)) * 5
    guider = Guider(model, {"positive": positive, "negative": negative}, "cfg", cfg)
    denoise, _ = guider.denoisers(x)
    return x, denoise(x, torch.tensor([5.0]))


def test_a_cond_on_the_left_half_is_shown_only_the_left_half_and_changes_only_it():
    model = C.tiny_model("sd1")
    data = C.inputs()
    whole, other, negative = (
        Conditioning.of(data[f"sd1.{k}"]) for k in ("cond", "cond2", "uncond")
    )
    spied = dataclasses.replace(model, unet=Spy(model.unet))
    _, alone = estimate(spied, whole, negative, cfg=5.0)
    spied.unet.calls.clear()
    _, both = estimate(spied, combine(whole, left_half(other)), negative, cfg=5.0)
    shown = [shape for shape, texts in spied.unet.calls
             for row in texts if torch.equal(row, other.conds[0].embeds[0])]  # fmt: skip
    assert shown == [torch.Size([2, 4, HEIGHT, WIDTH // 2])]  # its own area, beside its negative
    half = WIDTH // 2
    assert torch.equal(both[..., half:], alone[..., half:])  # the right half: as if it were not
    assert (both[..., :half] - alone[..., :half]).abs().mean() > 1e-2  # the left half: its say


def test_combined_conds_are_blended_by_strength_with_the_area_edge_ramp_by_hand():
    model = C.tiny_model("sd1")
    model = dataclasses.replace(model, unet=TextMeanUnet(model.unet.config))
    positive = combine(text(1.0), left_half(text(3.0), strength=0.5))
    x, out = estimate(model, positive, text(0.0), cfg=1.0)  # cfg 1: the positive prompt only
    sigma = 5.0
    # weights of the area Cond across its 16 columns: its right edge (not the latent's) ramps
    # over min(8, 16 // 4) = 4 columns: 1, 3/4, 1/2, 1/4 from the inside out; times strength
    ramp = torch.tensor([1.0] * 13 + [0.75, 0.5, 0.25]) * 0.5
    eps = torch.ones(WIDTH)
    eps[: WIDTH // 2] = (1.0 * 1.0 + 3.0 * ramp) / (1.0 + ramp)
    assert torch.allclose(out, x - eps.view(1, 1, 1, -1) * sigma, atol=1e-5)  # eps prediction


def test_a_strength_weighs_a_whole_frame_cond_against_another():
    model = C.tiny_model("sd1")
    model = dataclasses.replace(model, unet=TextMeanUnet(model.unet.config))
    strong = ConditioningSetAreaStrength(conditioning=text(2.0), strength=3.0).invoke(ctx())
    x, out = estimate(model, combine(text(0.0), strong), text(0.0), cfg=1.0)
    assert torch.allclose(out, x - (0.0 + 2.0 * 3.0) / (1.0 + 3.0) * 5.0, atol=1e-5)


@pytest.mark.parametrize(("sigma", "eps"), [(14.0, 0.0), (0.05, (0.0 + 4.0) / 2)])
def test_a_timestep_range_switches_a_cond_on_and_off(sigma: float, eps: float):
    """Early in the schedule (high sigma) the late Cond is left out; late, it counts."""
    model = C.tiny_model("sd1")
    model = dataclasses.replace(model, unet=TextMeanUnet(model.unet.config))
    late = ConditioningSetTimestepRange(conditioning=text(4.0), start=0.5, end=1.0).invoke(ctx())
    x = torch.zeros((1, 4, 8, 8))
    guider = Guider(model, {"positive": combine(text(0.0), late), "negative": text(0.0)},
                    "cfg", 1.0)  # fmt: skip
    denoise, _ = guider.denoisers(x)
    out = denoise(x, torch.tensor([sigma]))
    assert torch.allclose(out, torch.full_like(x, -eps * sigma), atol=1e-5)


def test_an_area_outside_the_picture_is_a_clear_error():
    model = C.tiny_model("sd1")
    node = ConditioningSetArea(conditioning=text(1.0), width=64, height=64, x=512, y=0,
                               strength=1.0)  # fmt: skip
    with pytest.raises(
        ValueError, match=r"ConditioningSetArea x 512, y 0\) lies outside the 256x128"
    ):
        estimate(model, node.invoke(ctx()), text(0.0), cfg=5.0)


def test_native_nodes_refuse_what_diffusers_has_not():
    plain = text(1.0)
    assert plain.only("Denoise", "positive") is plain.conds[0]
    with pytest.raises(ValueError, match="Denoise: positive has 2 conditionings, which diffusers'"):
        combine(plain, text(2.0)).only("Denoise", "positive")
    with pytest.raises(ValueError, match="Denoise: negative has area"):
        left_half(plain).only("Denoise", "negative")
