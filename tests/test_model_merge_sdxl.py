"""ModelMergeSDXL on two tiny SDXL checkpoints the tests build (different seeds): ComfyUI's
ModelMergeBlocks rule with one ratio per SDXL part, named by original-layout prefixes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodes.formats.unet_names import SDXL_MERGE_BLOCKS
from nodes.loading.checkpoints import load_checkpoint
from nodes.loading.folders import use_model_dirs
from nodes.merging.model_specific import ModelMergeSDXL
from tests import family_fixtures as ff
from tests.diffusion_fixtures import diffusion_registry
from tests.test_model_merging import plain, weights

IN4 = "down_blocks.1.downsamplers.0.conv.weight"  # input_blocks.4.0.op (the tiny UNet's 2nd down)
OUT2 = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"  # output_blocks.2.1...


def checkpoint(seed: int) -> Any:
    path = ff.single_file("sdxl", seed=seed)
    return load_checkpoint(path.name, {"models": [str(path.parent)]})[0]


@pytest.fixture(scope="module")
def pair() -> tuple[Any, Any]:
    return checkpoint(0), checkpoint(1)


def merge(m1: Any, m2: Any, **ratios: float) -> dict[str, torch.Tensor]:
    shares = {block: 1.0 for block in SDXL_MERGE_BLOCKS} | ratios
    out = ModelMergeSDXL.model_construct(model1=m1, model2=m2, **shares).invoke(None)
    assert out.unet is m1.unet and m1.patches == ()
    return weights(out.unet, out.patches)


def test_inputs_are_comfyuis_in_its_order():
    names = list(ModelMergeSDXL.spec.inputs)
    assert names[:4] == ["model1", "model2", "time_embed.", "label_emb."]
    assert names[4:13] == [f"input_blocks.{i}" for i in range(9)]
    assert names[13:16] == ["middle_block.0", "middle_block.1", "middle_block.2"]
    assert names[16:] == [*(f"output_blocks.{i}" for i in range(9)), "out."]
    spec = ModelMergeSDXL.spec.inputs["input_blocks.4"]
    assert (spec.default, spec.ge, spec.le, spec.step) == (1.0, 0.0, 1.0, 0.01)


@pytest.mark.parametrize("ratio", [1.0, 0.0, 0.5])
def test_one_ratio_everywhere_is_model1_model2_or_their_average(pair, ratio):
    m1, m2 = pair
    w1, w2 = plain(m1.unet), plain(m2.unet)
    assert len(w1) == 410 and not torch.allclose(w1[IN4], w2[IN4])
    out = merge(m1, m2, **{block: ratio for block in SDXL_MERGE_BLOCKS})
    for name, value in out.items():
        want = w1[name] * ratio + w2[name] * (1.0 - ratio)
        assert torch.allclose(value, want, atol=1e-6), name
    assert torch.equal(plain(m1.unet)[IN4], w1[IN4])  # the checkpoint is not changed


def test_a_block_ratio_changes_exactly_that_blocks_weights(pair):
    m1, m2 = pair
    w1, w2 = plain(m1.unet), plain(m2.unet)
    out = merge(m1, m2, **{"input_blocks.4": 0.2, "output_blocks.2": 0.7})
    assert torch.allclose(out[IN4], 0.2 * w1[IN4] + 0.8 * w2[IN4], atol=1e-6)
    assert torch.allclose(out[OUT2], 0.7 * w1[OUT2] + 0.3 * w2[OUT2], atol=1e-6)
    changed = {n for n in out if not torch.equal(out[n], w1[n])}
    # input_blocks.4 of the tiny UNet (1 layer per level) is the 2nd downsampler (weight, bias);
    # output_blocks.2 is up_blocks.1's first resnet and attention: 38 tensors, 26 of which differ
    # between the two checkpoints (the norms' ones and zeros are the same in both)
    block = [
        n for n in out if n.startswith(("up_blocks.1.resnets.0.", "up_blocks.1.attentions.0."))
    ]
    differ = {n for n in [IN4, IN4[:-6] + "bias", *block] if not torch.equal(w1[n], w2[n])}
    assert len(block) == 38 and len(differ) == 28
    assert changed == differ


def test_embeddings_middle_and_out_take_their_own_ratios(pair):
    m1, m2 = pair
    w1, w2 = plain(m1.unet), plain(m2.unet)
    shares = {"time_embed.": 0.1, "label_emb.": 0.2, "middle_block.1": 0.3, "out.": 0.4,
              "input_blocks.0": 0.6, "output_blocks.8": 0.8}  # fmt: skip
    out = merge(m1, m2, **shares)
    expect = {
        "time_embedding.linear_1.weight": 0.1,
        "add_embedding.linear_2.bias": 0.2,
        "mid_block.attentions.0.proj_in.weight": 0.3,
        "mid_block.resnets.0.conv1.weight": 1.0,  # middle_block.0 left at 1
        "conv_norm_out.weight": 0.4,
        "conv_out.bias": 0.4,
        "conv_in.weight": 0.6,
        "up_blocks.2.resnets.1.conv2.weight": 1.0,  # output_blocks.7
    }
    for name, r in expect.items():
        assert torch.allclose(out[name], r * w1[name] + (1 - r) * w2[name], atol=1e-6), name


def test_the_engine_runs_it_by_comfyuis_input_names(tmp_path: Path, pair):
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    for seed in (0, 1):
        (root / "checkpoints" / f"xl{seed}.safetensors").symlink_to(ff.single_file("sdxl", seed))
    use_model_dirs([root])  # the loaders' choices
    settings = RunSettings(
        output_dir=tmp_path / "out",
        temp_dir=tmp_path / "tmp",
        options={"models": [str(root)], "device": "cpu"},
    )
    wf = {
        "a": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl0.safetensors"}},
        "b": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl1.safetensors"}},
        "m": {"class_type": "ModelMergeSDXL",
              "inputs": {"model1": ["a", 0], "model2": ["b", 0], "input_blocks.4": 0.25,
                         **{b: 1.0 for b in SDXL_MERGE_BLOCKS if b != "input_blocks.4"}}},
        "show": {"class_type": "ShowValue", "inputs": {"value": ["m", 0]}},
    }  # fmt: skip
    result = Executor(diffusion_registry()).run(wf, settings)
    assert result.ok, result.error
    (model,) = result.outputs["m"]
    w1, w2 = plain(pair[0].unet), plain(pair[1].unet)
    got = weights(model.unet, model.patches)
    assert torch.allclose(got[IN4], 0.25 * w1[IN4] + 0.75 * w2[IN4], atol=1e-6)
    assert torch.equal(got[OUT2], w1[OUT2])
