"""tools/train_model.py --smoke: every stage runs, a loadable diffusers folder comes out, and a
second run resumes from the checkpoints instead of starting over.  Never touches the shipped
model folder."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict
from pathlib import Path

import pytest


def _train(run_dir: Path, export_dir: Path, *extra: str) -> str:
    """Run the training script in-process (saves re-importing torch) and return what it printed."""
    import torch

    from tools import train_model

    argv = ["--smoke", "--run-dir", str(run_dir), "--export-dir", str(export_dir), *extra]
    threads, out = torch.get_num_threads(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert train_model.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return out.getvalue()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("smoke")
    run_dir, export_dir = base / "run", base / "model"
    out = _train(run_dir, export_dir)
    return run_dir, export_dir, out


def test_smoke_writes_a_diffusers_folder(smoke_run):
    _, export_dir, out = smoke_run
    assert "total wall time" in out and "command:" in out
    index = json.loads((export_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    assert index["requires_safety_checker"] is False
    for part in ("unet", "vae", "text_encoder"):
        assert list((export_dir / part).glob("*.safetensors")), part
    assert (export_dir / "tokenizer" / "vocab.json").exists()
    assert (export_dir / "tokenizer" / "merges.txt").exists()
    assert (export_dir / "scheduler" / "scheduler_config.json").exists()
    state = json.loads((export_dir / "training_state.json").read_text())
    assert state["unet_step"] == 4
    # the recolour tuning continued from the UNet stage's last checkpoint, in its own folder
    assert "tune: starting from" in out and "ckpt_0000004.pt" in out
    assert state["tune_step"] == 2 and state["samples_seen"] == 6 * 8


def test_smoke_folder_loads_and_generates(smoke_run):
    import torch
    from diffusers import StableDiffusionPipeline

    _, export_dir, _ = smoke_run
    pipe = StableDiffusionPipeline.from_pretrained(str(export_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.scaling_factor > 0
    assert pipe.vae.config.latent_channels == 4
    image = pipe("a red circle on a blue background", num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    size = json.loads((export_dir / "training_state.json").read_text())["plan"]["resolution"]
    assert image.size == (size, size)


def test_tokenizer_has_one_token_per_word(smoke_run):
    from transformers import CLIPTokenizer

    from tools import shapes

    _, export_dir, _ = smoke_run
    tok = CLIPTokenizer.from_pretrained(str(export_dir / "tokenizer"), local_files_only=True)
    for word in shapes.caption_words():
        ids = tok(word, add_special_tokens=False).input_ids
        assert tok.convert_ids_to_tokens(ids) == [word + "</w>"]
    ids = tok("a red circle on a blue background").input_ids
    assert len(ids) == 9 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    # unknown words and punctuation still tokenize (letter by letter), never fail
    assert len(tok("a zebra, please", add_special_tokens=False).input_ids) > 3


def test_smoke_resumes_from_checkpoints(smoke_run):
    run_dir, export_dir, _ = smoke_run
    out = _train(run_dir, export_dir, "--unet-steps", "6")
    assert "vae: done earlier" in out
    assert "unet: resumed from" in out and "at step 4" in out
    assert "tune: done earlier (step 2" in out
    state = json.loads((export_dir / "training_state.json").read_text())
    assert state["unet_step"] == 6


def test_smoke_resumes_from_shipped_weights(smoke_run, tmp_path):
    _, export_dir, _ = smoke_run
    fresh_run = tmp_path / "lost_run"
    copy_dir = tmp_path / "model_copy"
    import shutil

    shutil.copytree(export_dir, copy_dir)
    step = json.loads((copy_dir / "training_state.json").read_text())["unet_step"]
    out = _train(fresh_run, copy_dir, "--resume-from-shipped", "--unet-steps", str(step + 2))
    assert "vae: taken from" in out
    assert f"resumed from the shipped weights in {copy_dir} at step {step}" in out
    assert json.loads((copy_dir / "training_state.json").read_text())["unet_step"] == step + 2


def test_smoke_runs_the_resolution_alignment_and_recolour_options(tmp_path):
    from tools.train_model import Plan

    other = 128 if Plan().resolution == 64 else 64
    out = _train(
        tmp_path / "run", tmp_path / "model", "--resolution", str(other),
        "--vae-align", "0.5", "--recolour", "0.5", "--recolour-range", "300", "700",
        "--recolour-blend", "0.5", "--tune-steps", "0", "--plan", "beta_end=0.009",
        "--plan", "zero_terminal_snr=true", "--plan", "prediction=v_prediction",
    )
    assert "tune:" not in out
    assert "recolour geometry" in out and "twins: encoded 168 recoloured pictures" in out
    plan = json.loads((tmp_path / "model" / "training_state.json").read_text())["plan"]
    assert plan["vae_align"] == 0.5 and plan["tune"]["steps"] == 0
    assert plan["recolour"] == {
        "probability": 0.5, "t_from": 300, "t_until": 700, "blend": 0.5, "uncaptioned": True,
    }
    assert plan["resolution"] == other
    scheduler = json.loads((tmp_path / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_start"], scheduler["beta_end"]) == (plan["beta_start"], 0.009)
    assert scheduler["prediction_type"] == "v_prediction"
    assert len(scheduler["trained_betas"]) == 1000
    unet = json.loads((tmp_path / "model" / "unet" / "config.json").read_text())
    assert unet["sample_size"] * 8 == other
    # cross-attention at the 8x8 and 4x4 latent levels, a plain level in front per doubling
    levels = {64: ["CrossAttnDownBlock2D"] * 2, 128: ["DownBlock2D", *["CrossAttnDownBlock2D"] * 2]}
    assert unet["down_block_types"] == levels[other]


def test_the_default_plan_is_the_shipped_models():
    from tools.train_model import Plan

    state = Path(__file__).resolve().parents[1] / "nodes" / "shipped_model" / "training_state.json"
    shipped = json.loads(state.read_text())["plan"]
    assert asdict(Plan()) == shipped


def test_recolour_geometry_of_the_pixels_themselves_is_one():
    from types import SimpleNamespace

    from tools.train_model import recolour_geometry

    class Pixels:
        def encode(self, x):
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    class OnlyRed:  # a code that sees the red channel only: blind to some recolourings
        def encode(self, x):
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=x[:, :1]))

    for resolution in (64, 128):
        assert recolour_geometry(Pixels(), resolution) == 1.0
        assert recolour_geometry(OnlyRed(), resolution) < 1.0


def test_plan_fields_are_set_from_the_command_line_with_their_types():
    from tools.train_model import Plan, set_plan_field

    plan = Plan()
    set_plan_field(plan, "unet_lr=5e-4")
    set_plan_field(plan, "tune.steps=12")
    set_plan_field(plan, "tune.recolour.uncaptioned=true")
    assert (plan.unet_lr, plan.tune.steps, plan.tune.recolour.uncaptioned) == (5e-4, 12, True)
    assert plan.recolour.uncaptioned is True  # the main stage's settings are their own
    for bad, message in [("tune.lr", "expected FIELD=VALUE"), ("no_such=1", "'no_such' is not"),
                         ("tune.nope=1", "'nope' is not one of steps, lr"),
                         ("unet_lr.x=1", "unet_lr has no fields"),
                         ("tune=3", "has fields of its own"),
                         ("tune.steps=many", "not a valid int"), ("recolour.blend=x", "float"),
                         ("recolour.uncaptioned=maybe", "not true or false")]:
        with pytest.raises(SystemExit, match=message):
            set_plan_field(plan, bad)
    assert plan.tune.steps == 12


def test_every_training_input_leads_back_to_its_picture():
    """Plain and recoloured-twin inputs: the input is what is seen, noised as DDPM does; the
    epsilon target's implied clean latent is the captioned picture, not the twin."""
    import torch
    from diffusers import DDPMScheduler

    from tools.train_model import Plan, noisy_input_and_target, scheduler_config

    sched = DDPMScheduler.from_config(scheduler_config(Plan()))
    g = torch.Generator().manual_seed(0)
    latents, twins, noise = (torch.randn(3, 4, 16, 16, generator=g) for _ in range(3))
    t = torch.tensor([100, 600, 999])
    seen = torch.stack([latents[0], twins[1], twins[2]])
    a = sched.alphas_cumprod[t]
    noisy, target = noisy_input_and_target(a, latents, seen, noise)

    assert torch.allclose(noisy, sched.add_noise(seen, noise, t), atol=1e-5)
    assert torch.allclose(target[0], noise[0])
    a = a[:, None, None, None]
    implied = (noisy - (1 - a).sqrt() * target) / a.sqrt()
    assert torch.allclose(implied, latents, atol=1e-3)
    assert not torch.allclose(implied[1:], twins[1:], atol=0.1)  # the twin is only what is seen



def test_v_prediction_targets_lead_back_to_the_picture_too():
    import torch

    from tools.train_model import noisy_input_and_target, zero_terminal_snr_betas

    alpha_bar = torch.cumprod(1 - torch.tensor(zero_terminal_snr_betas(0.0005, 0.007)), 0)
    g = torch.Generator().manual_seed(1)
    latents, twins, noise = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    a = alpha_bar[torch.tensor([50, 600, 999])].float()
    noisy, v = noisy_input_and_target(a, latents, twins, noise, "v_prediction")
    a = a[:, None, None, None]
    implied = a.sqrt() * noisy - (1 - a).sqrt() * v  # the clean latent v implies
    assert torch.allclose(implied, latents, atol=1e-4)
    assert torch.allclose(v[2], -latents[2], atol=1e-3)  # no signal left: v is minus the picture


def test_offset_noise_varies_each_channels_mean_colour():
    """Plain noise on 16x16 latents has channel means of std 1/16; offset noise adds its std."""
    import torch

    from tools.train_model import training_noise

    torch.manual_seed(0)
    latents = torch.zeros(4096, 4, 16, 16)
    plain = training_noise(latents).mean(dim=(2, 3)).std().item()
    noise = training_noise(latents, 0.2)
    offset = noise.mean(dim=(2, 3)).std().item()
    assert plain == pytest.approx(1 / 16, rel=0.05)
    assert offset == pytest.approx((0.2**2 + 1 / 16**2) ** 0.5, rel=0.05)
    spatial = noise - noise.mean(dim=(2, 3), keepdim=True)
    assert spatial.std().item() == pytest.approx(1.0, rel=0.02)  # the rest is still unit noise


def test_a_zero_terminal_snr_schedule_runs_on_every_sampler():
    import torch

    from nodes.sampling.native import SAMPLERS, make_scheduler
    from nodes.values import Model
    from tools.train_model import Plan, scheduler_config, zero_terminal_snr_betas

    betas = torch.tensor(zero_terminal_snr_betas(0.0005, 0.007), dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert alpha_bar[-1].item() == pytest.approx(2.0**-24)
    assert alpha_bar[0].item() == pytest.approx(1 - 0.0005, abs=1e-6)
    assert bool((betas > 0).all() and (betas < 1).all())

    plan = Plan(zero_terminal_snr=True, prediction="v_prediction")
    model = Model(None, scheduler_config(plan), torch.device("cpu"), torch.float32, "ztsnr")
    for sampler in SAMPLERS:
        scheduler, _ = make_scheduler(model, sampler, "normal")
        scheduler.set_timesteps(20)
        assert scheduler.config.prediction_type == "v_prediction"
        assert int(scheduler.timesteps[0]) == 999
        sigmas = getattr(scheduler, "sigmas", None)
        if sigmas is not None:
            assert torch.isfinite(sigmas).all(), sampler
