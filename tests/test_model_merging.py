"""ModelMerge* and CLIPMerge* on two tiny SD 1.x checkpoints the tests build (different seeds):
the merged weights as ComfyUI computes them, applied as patches while the model runs, and the
checkpoints untouched."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from nodes.formats.lora import Diff
from nodes.loading.checkpoints import load_checkpoint
from nodes.loading.patching import Patch, patched
from nodes.merging import clip_nodes, model_nodes
from tests import comfy_cases as C
from tests import family_fixtures as ff


def checkpoint(seed: int) -> tuple[Any, Any, Any]:
    path = ff.single_file("sd1", seed=seed)
    return load_checkpoint(path.name, {"models": [str(path.parent)]})


@pytest.fixture(scope="module")
def pair() -> tuple[Any, Any]:
    return checkpoint(0), checkpoint(1)


def weights(module: torch.nn.Module, patches: Any) -> dict[str, torch.Tensor]:
    """The module's weights while it runs with the patches."""
    with patched(module, patches) as m:
        return {k: v.detach().clone() for k, v in m.named_parameters()}


def plain(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("ratio", [1.0, 0.0, 0.5, 0.3])
def test_merge_simple_takes_ratio_of_the_first_and_leaves_both_untouched(pair, ratio):
    (m1, _, _), (m2, _, _) = pair
    w1, w2 = plain(m1.unet), plain(m2.unet)
    assert not same(w1, w2)
    out = model_nodes.ModelMergeSimple(model1=m1, model2=m2, ratio=ratio).invoke(None)
    want = {k: w1[k] * ratio + w2[k] * (1.0 - ratio) for k in w1}
    assert same(weights(out.unet, out.patches), want)
    assert same(plain(m1.unet), w1) and same(plain(m2.unet), w2)  # nothing changed in memory
    assert m1.patches == () and out.unet is m1.unet  # one copy of the weights, patched


def test_subtract_and_add_make_and_apply_a_difference(pair):
    (m1, _, _), (m2, _, _) = pair
    w1, w2 = plain(m1.unet), plain(m2.unet)
    diff = model_nodes.ModelMergeSubtract(model1=m1, model2=m2, multiplier=2.0).invoke(None)
    assert same(weights(diff.unet, diff.patches), {k: (w1[k] - w2[k]) * 2.0 for k in w1})
    zero = model_nodes.ModelMergeSubtract(model1=m1, model2=m2, multiplier=0.0).invoke(None)
    assert all(v.abs().max() == 0 for v in weights(zero.unet, zero.patches).values())
    added = model_nodes.ModelMergeAdd(model1=m2, model2=diff).invoke(None)  # w2 + 2 (w1 - w2)
    assert same(weights(added.unet, added.patches), {k: 2 * w1[k] - w2[k] for k in w1})


def test_merge_blocks_weighs_input_middle_and_output_blocks_apart(pair):
    (m1, _, _), (m2, _, _) = pair
    w1, w2 = plain(m1.unet), plain(m2.unet)
    node = model_nodes.ModelMergeBlocks(model1=m1, model2=m2, input=1.0, middle=0.0, out=0.5)
    out = weights(node.invoke(None).unet, node.invoke(None).patches)
    for name, value in out.items():
        if name.startswith(("down_blocks.", "conv_in.", "time_embedding.")):  # input's share
            want = w1[name]
        elif name.startswith("mid_block."):
            want = w2[name]
        else:  # up_blocks, conv_norm_out, conv_out: the output blocks and `out`
            assert name.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")), name
            want = (w1[name] + w2[name]) / 2
        assert torch.allclose(value, want, atol=1e-6), name


def test_the_second_models_own_patches_are_merged_with_it(pair):
    (m1, _, _), (m2, _, _) = pair
    name = "conv_in.weight"
    w1, w2 = plain(m1.unet)[name], plain(m2.unet)[name]
    lora = Patch({name: Diff(diff=torch.ones_like(w2))}, 0.5, "lora-like")
    m2_patched = dataclasses.replace(m2, patches=(lora,))
    out = model_nodes.ModelMergeSimple(model1=m1, model2=m2_patched, ratio=0.25).invoke(None)
    merged = weights(out.unet, out.patches)[name]
    assert torch.allclose(merged, 0.25 * w1 + 0.75 * (w2 + 0.5), atol=1e-6)


def test_a_merged_model_samples_and_ratio_one_is_the_first_model(pair):
    from nodes.sampling.ksampler import KSampler
    from nodes.values import Conditioning, Latent

    (m1, _, _), (m2, _, _) = pair
    data = C.inputs()
    pos, neg = Conditioning.of(data["sd1.cond"]), Conditioning.of(data["sd1.uncond"])

    def sample(model: Any) -> torch.Tensor:
        node = KSampler(model=model, seed=1, steps=3, cfg=5.0, sampler_name="euler",
                        scheduler="normal", positive=pos, negative=neg,
                        latent_image=Latent(C.empty()), denoise=1.0)  # fmt: skip
        return node.invoke(Ctx()).samples

    first = model_nodes.ModelMergeSimple(model1=m1, model2=m2, ratio=1.0).invoke(None)
    assert torch.equal(sample(first), sample(m1))
    half = model_nodes.ModelMergeSimple(model1=m1, model2=m2, ratio=0.5).invoke(None)
    assert not torch.equal(sample(half), sample(m1))


def test_models_of_two_families_are_refused_by_name():
    m1, m2 = C.tiny_model("sd1"), C.tiny_model("sd2_v")
    with pytest.raises(ValueError, match="ModelMergeSimple: model2 is a sd2"):
        model_nodes.ModelMergeSimple(model1=m1, model2=m2, ratio=0.5).invoke(None)


def test_clip_merges_mix_the_text_encoders_weight_by_weight(pair):
    (_, c1, _), (_, c2, _) = pair
    e1, e2 = plain(c1.text_encoder), plain(c2.text_encoder)
    out = clip_nodes.CLIPMergeSimple(clip1=c1, clip2=c2, ratio=0.5).invoke(None)
    ((key, _), *_) = out.patches
    assert key == c1.towers[0].key
    patches = [p for k, p in out.patches if k == key]
    merged = weights(out.text_encoder, patches)
    for name, value in merged.items():
        assert torch.allclose(value, (e1[name] + e2[name]) / 2, atol=1e-6), name
    diff = clip_nodes.CLIPMergeSubtract(clip1=c1, clip2=c2, multiplier=1.0).invoke(None)
    merged = weights(diff.text_encoder, [p for _, p in diff.patches])
    assert all(torch.allclose(merged[k], e1[k] - e2[k], atol=1e-6) for k in merged)
    added = clip_nodes.CLIPMergeAdd(clip1=c1, clip2=c2).invoke(None)
    merged = weights(added.text_encoder, [p for _, p in added.patches])
    assert all(torch.allclose(merged[k], e1[k] + e2[k], atol=1e-6) for k in merged)


class Ctx:
    def progress(self, value: int, total: int, preview: Any = None) -> None:
        pass

    def warn(self, message: str) -> None:
        pass
