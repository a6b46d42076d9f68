"""T2I-Adapters through ControlNetLoader and ControlNetApplyAdvanced, on adapters the tests
build for the tiny SD 1.x UNet's levels: the features added where diffusers' adapter pipeline
adds them (on a UNet whose down blocks all have attention, where diffusers' placement is
ComfyUI's), strength and range, both file layouts, and clear refusals."""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from nodes.control.nodes import ControlNetApplyAdvanced, ControlNetLoader
from nodes.control.values import ControlNet
from nodes.sampling.ksampler import KSampler
from nodes.values import Conditioning, Latent
from tests import comfy_cases as C
from tests.test_controlnet import Ctx, hint, prompts


@functools.cache
def attention_everywhere_model() -> Any:
    """The tiny SD 1.x model with a UNet whose every down (and up) block has attention."""
    from diffusers import UNet2DConditionModel

    model = C.tiny_model("sd1")
    config = {**model.unet.config, "down_block_types": ["CrossAttnDownBlock2D"] * 2,
              "up_block_types": ["CrossAttnUpBlock2D"] * 2}  # fmt: skip
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).eval().requires_grad_(False)
    return dataclasses.replace(model, unet=unet)


@functools.cache
def tiny_adapter(channels: tuple[int, ...] = (32, 64), seed: int = 2) -> Any:
    from diffusers import T2IAdapter

    net = T2IAdapter(in_channels=3, channels=list(channels), num_res_blocks=2,
                     downscale_factor=8, adapter_type="full_adapter")  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval().requires_grad_(False)


def adapter(channels: tuple[int, ...] = (32, 64)) -> ControlNet:
    return ControlNet(tiny_adapter(channels), torch.device("cpu"), torch.float32, "adapter")


class AdapterUnet(torch.nn.Module):
    """The UNet with the adapter's features as diffusers' adapter pipelines pass them."""

    def __init__(self, unet: Any, net: Any, image: torch.Tensor, strength: float) -> None:
        super().__init__()
        self.unet, self.net, self.config = unet, net, unet.config
        self.image, self.strength = image, strength

    def forward(self, sample: torch.Tensor, t: Any, **kw: Any) -> Any:
        image = self.image.movedim(-1, 1).expand(sample.shape[0], -1, -1, -1)
        features = [f * self.strength for f in self.net(image)]
        return self.unet(sample, t, down_intrablock_additional_residuals=features, **kw)


def ksample(model: Any, positive: Conditioning, negative: Conditioning) -> torch.Tensor:
    node = KSampler(model=model, seed=3, steps=4, cfg=6.0, sampler_name="euler",
                    scheduler="normal", positive=positive, negative=negative,
                    latent_image=Latent(C.empty()), denoise=1.0)  # fmt: skip
    return node.invoke(Ctx()).samples


def apply(pos: Any, neg: Any, net: ControlNet, strength: float = 0.8, end: float = 1.0) -> Any:
    out = ControlNetApplyAdvanced(positive=pos, negative=neg, control_net=net, image=hint(0),
                                  strength=strength, start_percent=0.0,
                                  end_percent=end).invoke(Ctx())  # fmt: skip
    return out.positive, out.negative


def test_adapter_features_equal_diffusers_adapter_call():
    model = attention_everywhere_model()
    pos, neg = prompts()
    ours = ksample(model, *apply(pos, neg, adapter(), strength=0.8))
    hand = dataclasses.replace(model, unet=AdapterUnet(model.unet, tiny_adapter(), hint(0), 0.8))
    assert torch.allclose(ours, ksample(hand, pos, neg), atol=1e-5)
    assert not torch.allclose(ours, ksample(model, pos, neg), atol=1e-3)


def test_strength_zero_and_an_empty_range_are_no_adapter_and_sd_layouts_run():
    model = C.tiny_model("sd1")  # SD's layout: the last down block has no attention
    pos, neg = prompts()
    plain = ksample(model, pos, neg)
    assert torch.equal(ksample(model, *apply(pos, neg, adapter(), end=0.0)), plain)
    assert apply(pos, neg, adapter(), strength=0.0) == (pos, neg)
    assert not torch.allclose(ksample(model, *apply(pos, neg, adapter())), plain, atol=1e-3)


def test_an_adapter_for_other_levels_names_the_node_and_input():
    pos, neg = prompts()
    with pytest.raises(ValueError, match="ControlNetApplyAdvanced: control_net 'adapter' is a "
                                         "T2I-Adapter for UNet levels"):  # fmt: skip
        ksample(C.tiny_model("sd1"), *apply(pos, neg, adapter((16, 32))))


def original_layout(net: Any) -> dict[str, torch.Tensor]:
    """A diffusers T2IAdapter's weights in TencentARC's layout (ComfyUI's names)."""
    out = {}
    for key, value in net.state_dict().items():
        key = key.removeprefix("adapter.")
        m = re.match(r"body\.(\d+)\.resnets\.(\d+)\.(.*)", key)
        if m:
            key = f"body.{2 * int(m.group(1)) + int(m.group(2))}.{m.group(3)}"
        elif (m := re.match(r"body\.(\d+)\.in_conv\.(.*)", key)) is not None:
            key = f"body.{2 * int(m.group(1))}.in_conv.{m.group(2)}"
        out[key] = value.contiguous()
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "controlnet").mkdir()
    net = tiny_adapter()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              root / "controlnet" / "adapter_diffusers.safetensors")  # fmt: skip
    save_file(original_layout(net), root / "controlnet" / "adapter_original.safetensors")
    net.save_pretrained(root / "controlnet" / "adapter-folder")
    light = {"body.0.in_conv.weight": torch.zeros(8, 192, 1, 1), "body.0.body.0.block1.weight":
             torch.zeros(8, 8, 3, 3)}  # fmt: skip
    save_file(light, root / "controlnet" / "light.safetensors")
    return root


@pytest.mark.parametrize(
    "name", ["adapter_diffusers.safetensors", "adapter_original.safetensors", "adapter-folder"]
)
def test_the_loader_reads_adapters_in_both_layouts(models: Path, name: str):
    ctx = Ctx({"models": [str(models)], "device": "cpu"})
    loaded = ControlNetLoader(control_net_name=name).invoke(ctx)
    assert loaded.is_adapter and loaded.context_width is None
    reference = tiny_adapter().state_dict()
    ours = loaded.net.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_a_light_adapter_is_refused_clearly(models: Path):
    ctx = Ctx({"models": [str(models)], "device": "cpu"})
    with pytest.raises(Exception, match="light.safetensors is a light T2I-Adapter"):
        ControlNetLoader(control_net_name="light.safetensors").invoke(ctx)
