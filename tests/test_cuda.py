"""On a CUDA device (skipped without one; run on a GPU machine: `pytest tests/test_cuda.py`):
models compute in fp16 (bf16 where the weights are bf16), VAEs that ask for it in fp32, and the
pictures are the CPU's within half precision; --vram-budget keeps the models not in use on the
CPU and --lowvram each model on the device only while its node runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodes.loading.checkpoints import load_checkpoint
from nodes.loading.residency import RESIDENCY, nbytes
from tests import diffusion_fixtures as df
from tests import family_fixtures as ff
from tests import test_memory_budget as budget

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
models, no_budget_after = budget.models, budget.no_budget_after
HALF_PRECISION = 2e-2
"""Largest difference of a decoded picture (0..1) between fp16 on CUDA and float32 on the CPU."""


def run(models: Path, out: Path, device: str) -> dict[str, Any]:
    settings = RunSettings(output_dir=out, temp_dir=out / "tmp",
                           options={"models": [str(models)], "device": device})  # fmt: skip
    result = Executor(df.diffusion_registry()).run(budget.workflow(), settings)
    assert result.ok, result.error
    return result.outputs


def test_fp16_on_cuda_gives_the_cpus_picture(models, tmp_path):
    cpu, cuda = run(models, tmp_path / "cpu", "cpu"), run(models, tmp_path / "cuda", "cuda")
    model, clip, vae = cuda["a"]
    assert (model.dtype, clip.dtype, vae.dtype) == (torch.float16, torch.float16, torch.float32)
    assert next(model.unet.parameters()).device.type == "cuda"
    for key in ("decode", "hint"):
        difference = (cpu[key][0] - cuda[key][0].cpu().float()).abs().max().item()
        assert difference <= HALF_PRECISION, (key, difference)


@pytest.mark.parametrize("family", ["sdxl", "sd1"])
def test_vaes_that_ask_for_it_are_upcast_and_bf16_weights_stay_bf16(family):
    path = ff.single_file(family, dtype=torch.bfloat16)
    model, clip, vae = load_checkpoint(path.name, {"models": [str(path.parent)], "device": "cuda"})
    assert model.dtype == clip.dtype == torch.bfloat16
    assert vae.vae.config.force_upcast and vae.dtype == torch.float32


def test_past_the_budget_the_models_not_in_use_wait_on_the_cpu(models, tmp_path, no_budget_after):
    a = load_checkpoint("a.safetensors", {"models": [str(models)], "device": "cuda"})[0]
    RESIDENCY.configure({"vram_budget": 1.5 * nbytes(a.unet) / 2**30})
    outputs = run(models, tmp_path / "budget", "cuda")
    units = [outputs[k][0].unet for k in ("a", "b")]
    on_device = [m for m in units if next(m.parameters()).device.type == "cuda"]
    assert len(on_device) <= 1 and RESIDENCY.moves > 0
    allocated = torch.cuda.memory_allocated()
    RESIDENCY.configure({"vram_budget": 1.5 * nbytes(a.unet) / 2**30, "lowvram": True})
    run(models, tmp_path / "lowvram", "cuda")
    assert all(next(m.parameters()).device.type == "cpu" for m in units)
    assert torch.cuda.memory_allocated() < allocated
