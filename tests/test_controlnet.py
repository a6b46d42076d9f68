"""ControlNetLoader / ControlNetApply / ControlNetApplyAdvanced on tiny models: the residuals
through KSampler against diffusers' own ControlNet + UNet call, stacking, ranges, loading."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from nodegraph import RunSettings
from nodes.control.nodes import ControlNetApply, ControlNetApplyAdvanced, ControlNetLoader
from nodes.control.values import ControlNet
from nodes.sampling.ksampler import KSampler
from nodes.values import Conditioning, Latent
from tests import comfy_cases as C
from tests import family_fixtures as ff


class Ctx:
    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.settings = RunSettings(options=options or {"device": "cpu"})

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


@functools.cache
def tiny_controlnet(family: str = "sd1", seed: int = 5) -> Any:
    """A diffusers ControlNetModel from the family's tiny UNet, every weight random (no zero
    convolutions, so that its residuals show)."""
    from diffusers import ControlNetModel

    unet = ff.build_pipeline(family).unet
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 16, 32, 32))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval().requires_grad_(False)


def control_net(family: str = "sd1", seed: int = 5) -> ControlNet:
    return ControlNet(tiny_controlnet(family, seed), torch.device("cpu"), torch.float32, "tiny")


def hint(seed: int = 0, size: int = 64) -> torch.Tensor:
    return torch.rand((1, size, size, 3), generator=torch.Generator().manual_seed(seed))


def prompts() -> tuple[Conditioning, Conditioning]:
    data = C.inputs()
    return Conditioning.of(data["sd1.cond"]), Conditioning.of(data["sd1.uncond"])


class HandUnet(torch.nn.Module):
    """The UNet with ControlNets added as StableDiffusionControlNetPipeline calls them (one
    batched ControlNet call per net, MultiControlNetModel's sum)."""

    def __init__(self, unet: Any, nets: list[tuple[Any, torch.Tensor, float]]) -> None:
        super().__init__()
        self.unet, self.nets, self.config = unet, nets, unet.config

    def forward(
        self, sample: torch.Tensor, t: Any, encoder_hidden_states: Any,
        added_cond_kwargs: Any = None, **kw: Any,
    ) -> Any:  # fmt: skip
        from diffusers.models.controlnets import MultiControlNetModel

        multi = MultiControlNetModel([n for n, _, _ in self.nets])
        hints = [h.movedim(-1, 1).expand(sample.shape[0], -1, -1, -1) for _, h, _ in self.nets]
        down, mid = multi(
            sample, t, encoder_hidden_states, controlnet_cond=hints,
            conditioning_scale=[s for _, _, s in self.nets], added_cond_kwargs=added_cond_kwargs,
            return_dict=False,
        )  # fmt: skip
        return self.unet(
            sample, t, encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=added_cond_kwargs, down_block_additional_residuals=down,
            mid_block_additional_residual=mid, **kw,
        )  # fmt: skip


def ksample(model: Any, positive: Conditioning, negative: Conditioning, steps: int = 4) -> Any:
    node = KSampler(model=model, seed=3, steps=steps, cfg=6.0, sampler_name="euler",
                    scheduler="normal", positive=positive, negative=negative,
                    latent_image=Latent(C.empty()), denoise=1.0)  # fmt: skip
    return node.invoke(Ctx()).samples


def apply(
    pos: Conditioning, neg: Conditioning, net: ControlNet, strength: float = 0.8,
    start: float = 0.0, end: float = 1.0, seed: int = 0,
) -> tuple[Conditioning, Conditioning]:  # fmt: skip
    out = ControlNetApplyAdvanced(positive=pos, negative=neg, control_net=net, image=hint(seed),
                                  strength=strength, start_percent=start,
                                  end_percent=end).invoke(Ctx())  # fmt: skip
    return out.positive, out.negative


def equals_the_hand_call(model: Any, pos: Any, neg: Any, net: ControlNet, strength: float) -> None:
    """KSampler with ControlNetApplyAdvanced equals diffusers' ControlNet + UNet call, bit for
    bit, and differs from no ControlNet."""
    ours = ksample(model, *apply(pos, neg, net, strength=strength))
    hand = dataclasses.replace(model, unet=HandUnet(model.unet, [(net.net, hint(0), strength)]))
    assert torch.equal(ours, ksample(hand, pos, neg))
    assert not torch.equal(ours, ksample(model, pos, neg))


def test_apply_advanced_through_ksampler_equals_diffusers_controlnet_call():
    model = C.tiny_model("sd1")
    pos, neg = prompts()
    equals_the_hand_call(model, pos, neg, control_net(), 0.8)


def test_an_sdxl_controlnet_equals_diffusers_controlnet_call_with_its_size_conditions():
    model = C.tiny_model("sdxl")
    g = torch.Generator().manual_seed(3)
    pos, neg = (Conditioning.of(torch.randn((1, 77, 96), generator=g),
                                torch.randn((1, 64), generator=g)) for _ in range(2))  # fmt: skip
    equals_the_hand_call(model, pos, neg, control_net("sdxl"), 0.9)


def test_strength_zero_and_an_empty_range_are_no_controlnet():
    model = C.tiny_model("sd1")
    pos, neg = prompts()
    plain = ksample(model, pos, neg)
    zero = apply(pos, neg, control_net(), strength=0.0)
    assert zero == (pos, neg)
    assert torch.equal(ksample(model, *apply(pos, neg, control_net(), end=0.0)), plain)
    assert torch.equal(ksample(model, *apply(pos, neg, control_net(), start=1.0)), plain)
    part = ksample(model, *apply(pos, neg, control_net(), end=0.5))
    full = ksample(model, *apply(pos, neg, control_net()))
    assert not torch.equal(part, plain) and not torch.equal(part, full)


def test_two_stacked_controlnets_sum_as_multicontrolnet():
    model = C.tiny_model("sd1")
    pos, neg = prompts()
    a, b = control_net(seed=5), control_net(seed=6)
    stacked = apply(*apply(pos, neg, a, strength=0.7, seed=0), b, strength=1.3, seed=1)
    nets = [(a.net, hint(0), 0.7), (b.net, hint(1), 1.3)]
    hand = dataclasses.replace(model, unet=HandUnet(model.unet, nets))
    assert torch.equal(ksample(model, *stacked), ksample(hand, pos, neg))


def test_control_net_apply_also_guides_the_negative_prompt():
    model = C.tiny_model("sd1")
    pos, neg = prompts()
    net = control_net()
    node = ControlNetApply(conditioning=pos, control_net=net, image=hint(0), strength=0.8)
    ours = ksample(model, node.invoke(Ctx()), neg)
    hand = dataclasses.replace(model, unet=HandUnet(model.unet, [(net.net, hint(0), 0.8)]))
    assert torch.equal(ours, ksample(hand, pos, neg))


def test_only_the_prompt_with_a_control_gets_residuals():
    model = C.tiny_model("sd1")
    pos, neg = prompts()
    net = control_net()
    controlled, _ = apply(pos, neg, net)
    mixed = ksample(model, controlled, neg)  # the negative prompt's rows get zeros
    assert not torch.equal(mixed, ksample(model, *apply(pos, neg, net)))
    assert not torch.equal(mixed, ksample(model, pos, neg))


def test_a_hint_of_another_size_is_resized_to_the_latent():
    from nodes.control.residuals import hint_for
    from nodes.control.values import AppliedControl

    image = hint(0, size=96).movedim(-1, 1)
    control = AppliedControl(control_net(), image, 1.0)
    out = hint_for(control, torch.zeros(2, 4, 8, 8), torch.float32)
    want = torch.nn.functional.interpolate(image, size=(64, 64), mode="nearest-exact")
    assert out.shape == (2, 3, 64, 64) and torch.equal(out[1], want[0])


def test_a_controlnet_of_another_family_names_the_node_and_input():
    pos, neg = prompts()
    with pytest.raises(ValueError, match="ControlNetApplyAdvanced: control_net .*another family"):
        apply(pos, neg, control_net("sd2_v"))
    node = ControlNetApply(conditioning=pos, control_net=control_net("sd2_v"), image=hint(0),
                           strength=1.0)  # fmt: skip
    with pytest.raises(ValueError, match="ControlNetApply: control_net"):
        node.invoke(Ctx())


def original_layout(net: Any) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel's weights in the original `control_model.` layout."""
    own, unet_like = {}, {}
    for key, value in net.state_dict().items():
        module, _, param = key.rpartition(".")
        parts = module.split(".")
        if parts[0] == "controlnet_cond_embedding":
            last = 2 * len(net.controlnet_cond_embedding.blocks) + 2
            ends = {"conv_in": 0, "conv_out": last}
            index = ends[parts[1]] if parts[1] in ends else 2 * int(parts[-1]) + 2
            own[f"input_hint_block.{index}.{param}"] = value
        elif parts[0] == "controlnet_down_blocks":
            own[f"zero_convs.{parts[1]}.0.{param}"] = value
        elif parts[0] == "controlnet_mid_block":
            own[f"middle_block_out.0.{param}"] = value
        else:
            unet_like[key] = value
    c = net.config
    ups = [t.replace("Down", "Up") for t in reversed(c.down_block_types)]
    shape = SimpleNamespace(
        block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
        up_block_types=ups,
    )  # fmt: skip
    own.update(ff.unet_to_original(unet_like, shape))
    return {f"control_model.{k}": v.contiguous() for k, v in own.items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    net = tiny_controlnet()
    net.save_pretrained(root / "controlnet" / "tiny-diffusers")
    save_file(net.state_dict(), root / "controlnet" / "tiny.safetensors")
    save_file(original_layout(net), root / "controlnet" / "tiny_original.safetensors")
    save_file(difference_layout(net), root / "controlnet" / "tiny_diff.safetensors")
    return root


def difference_layout(net: Any) -> dict[str, torch.Tensor]:
    """The ControlNet as a difference file from the tiny SD 1.x model's UNet (original layout,
    with ComfyUI's `difference` marker)."""
    base = C.tiny_model("sd1").unet.state_dict()
    offsets = copy.deepcopy(net)
    with torch.no_grad():
        for key, value in offsets.state_dict().items():
            if key in base:
                value -= base[key]
    return {**original_layout(offsets), "difference": torch.zeros(1)}


def test_a_difference_controlnet_is_made_whole_with_the_model_and_needs_it(models: Path):
    from nodes.control.nodes import DiffControlNetLoader

    ctx = Ctx({"models": [str(models)], "device": "cpu"})
    loaded = DiffControlNetLoader(model=C.tiny_model("sd1"),
                                  control_net_name="tiny_diff.safetensors").invoke(ctx)  # fmt: skip
    reference = tiny_controlnet().state_dict()
    ours = loaded.net.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.allclose(ours[k], reference[k], atol=1e-6) for k in reference)
    with pytest.raises(Exception, match="difference ControlNet: load it with DiffControlNetLoader"):
        ControlNetLoader(control_net_name="tiny_diff.safetensors").invoke(ctx)
    plain = DiffControlNetLoader(model=C.tiny_model("sd1"), control_net_name="tiny.safetensors")
    assert all(torch.equal(v, reference[k]) for k, v in plain.invoke(ctx).net.state_dict().items())


@pytest.mark.parametrize(
    "name", ["tiny-diffusers", "tiny.safetensors", "tiny_original.safetensors"]
)
def test_the_loader_reads_diffusers_folders_and_files(models: Path, name: str):
    ctx = Ctx({"models": [str(models)], "device": "cpu"})
    loaded = ControlNetLoader(control_net_name=name).invoke(ctx)
    reference = tiny_controlnet().state_dict()
    ours = loaded.net.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert loaded.net.config.cross_attention_dim == 32
