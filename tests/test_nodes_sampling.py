"""AddNoise, Denoise and KSampler semantics on the tiny model: strengths, seeds, samplers,
ComfyUI's denoise, progress and interrupts, and the cache keeping tensors as they are."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from nodegraph import RunSettings, events
from nodes.loading.checkpoints import load_checkpoint
from nodes.sampling.comfy.model_sampling import ModelSampling
from nodes.sampling.comfy.run import Sampler, ksampler_sigmas
from nodes.sampling.comfy.samplers import SAMPLERS as SAMPLERS_BY_NAME
from nodes.sampling.native import SAMPLERS, add_noise, denoise, plan_start, strength_steps
from tests import diffusion_fixtures as df
from tests.diffusion_fixtures import TINY_NAME, write_picture

tiny_sd = df.tiny_sd
diffusion_executor = df.diffusion_executor
CPU = {"device": "cpu"}


@pytest.fixture(scope="module")
def bundle(tiny_sd):
    return load_checkpoint(TINY_NAME, CPU)


@pytest.fixture
def settings(tmp_path: Path) -> RunSettings:
    return RunSettings(output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp", options=CPU)


@contextmanager
def counting(unet):
    calls = []
    handle = unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def _latent(model, seed=5):
    return torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


def _cond(clip, text):
    from nodes.conditioning.text import encode_text

    return encode_text(clip, text)


def test_strength_keeps_the_last_steps_and_noises_at_the_first_kept_timestep(bundle):
    model = bundle[0]
    latent = _latent(model)
    for strength, keep in ((0.3, 3), (0.55, 5), (0.99, 9), (0.1, 1)):
        assert strength_steps(10, strength) == keep
        noisy, _ = add_noise(
            model, latent, seed=7, sampler="euler", schedule="normal", steps=10, keep=keep,
            strength=strength,
        )  # fmt: skip
        full = plan_start(model, "euler", "normal", 10, 10).timesteps
        assert torch.equal(noisy.timesteps, full[10 - keep :])
        sigma = plan_start(model, "euler", "normal", 10, keep).scheduler.sigmas[10 - keep]
        noise = torch.randn(latent.shape, generator=torch.Generator("cpu").manual_seed(7))
        assert torch.allclose(noisy.latent, model.latent_in(latent) + sigma * noise, atol=1e-6)


def test_strength_one_ignores_the_input(bundle):
    model = bundle[0]
    a, _ = add_noise(model, _latent(model, 1), seed=3, sampler="euler", schedule="normal",
                     steps=8, keep=8, strength=1.0)  # fmt: skip
    b, _ = add_noise(model, torch.zeros(1, 4, 8, 8), seed=3, sampler="euler", schedule="normal",
                     steps=8, keep=8, strength=1.0)  # fmt: skip
    assert torch.equal(a.latent, b.latent)
    init = plan_start(model, "euler", "normal", 8, 8).scheduler.init_noise_sigma
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(3))
    assert torch.allclose(a.latent, noise * init)
    assert a.start == 0 and a.remaining == 8


def test_too_low_strength_passes_through_with_a_warning(diffusion_executor, settings, tmp_path):
    picture = write_picture(tmp_path / "p.png")
    wf = img2img_workflow(str(picture), strength=0.05, steps=10)
    result = diffusion_executor.run(wf, settings)
    assert result.ok
    assert result.outputs["denoise"][0].samples is result.outputs["src"][0].samples
    assert any("too low" in w.message and w.node_id == "noise" for w in result.warnings)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("schedule", ["normal", "karras"])
def test_every_sampler_runs_its_steps(bundle, sampler, schedule):
    model, clip, _ = bundle
    pos, neg = _cond(clip, "a red circle"), _cond(clip, "")
    noisy, warnings = add_noise(model, _latent(model), seed=1, sampler=sampler, schedule=schedule,
                                steps=4, keep=2, strength=0.5)  # fmt: skip
    if sampler == "ddim" and schedule == "karras":
        assert warnings and "karras" in warnings[0]
    with counting(model.unet) as calls:
        out = denoise(model, noisy, pos, neg, 5.0)
    # second-order schedulers (heun, dpm_2, dpmpp_sde): two evaluations per step but the last
    order = plan_start(model, sampler, schedule, 4, 2).scheduler.order
    assert len(calls) == (2 * 2 - 1 if order == 2 else 2)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    assert not torch.equal(out, noisy.latent)


def test_ancestral_sampler_equals_the_pipeline(tiny_sd, bundle):
    """euler_ancestral draws its step noise from the seed's generator after the first draw."""
    import diffusers

    model, clip, vae = bundle
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_sd / TINY_NAME), local_files_only=True, safety_checker=None
    )
    sched = diffusers.EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = diffusers.StableDiffusionPipeline(**{**pipe.components, "scheduler": sched})
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a red circle", negative_prompt="", height=64, width=64, num_inference_steps=6,
                  guidance_scale=6.0, generator=torch.Generator("cpu").manual_seed(11),
                  output_type="latent").images  # fmt: skip
    noisy, _ = add_noise(model, torch.zeros(1, 4, 8, 8), seed=11, sampler="euler_ancestral",
                         schedule="normal", steps=6, keep=6, strength=1.0)  # fmt: skip
    ours = denoise(model, noisy, _cond(clip, "a red circle"), _cond(clip, ""), 6.0)
    assert (model.latent_in(ours) - theirs).abs().max() <= 1e-5  # the pipeline returns it scaled


def test_ksampler_denoise_follows_comfyui():
    """denoise d: the last steps + 1 sigmas of a schedule for int(steps / d) steps."""
    ms = ModelSampling.discrete({"beta_start": 0.00085, "beta_end": 0.012})
    euler = Sampler("euler", SAMPLERS_BY_NAME["euler"])
    full = ksampler_sigmas(ms, euler, "normal", 20)
    assert len(full) == 21 and float(full[-1]) == 0.0
    for steps, d, total in ((10, 0.5, 20), (10, 0.3, 33), (7, 0.75, 9)):
        longer = ksampler_sigmas(ms, euler, "normal", total)
        assert torch.equal(ksampler_sigmas(ms, euler, "normal", steps, d), longer[-(steps + 1) :])
    assert len(ksampler_sigmas(ms, euler, "normal", 10, 0.0)) == 0
    dpm2 = Sampler("dpm_2", SAMPLERS_BY_NAME["dpm_2"])  # one more step, less the penultimate
    longer = ksampler_sigmas(ms, euler, "normal", 11)
    dropped = torch.cat([longer[:-2], longer[-1:]])
    assert torch.equal(ksampler_sigmas(ms, dpm2, "normal", 10), dropped)


def test_ksampler_walks_steps_of_the_stretched_schedule(diffusion_executor, settings, bundle):
    model, _, _ = bundle
    # The text-to-image source runs first (and is cached); then only the sampler runs.
    assert diffusion_executor.run(comfy_workflow("txt2img", 6, 1.0), settings).ok
    wf = comfy_workflow(latent_from="txt2img", steps=6, denoise=0.4)
    with counting(model.unet) as calls:
        result = diffusion_executor.run(wf, settings)
    assert result.ok, result.error
    assert len(calls) == 6  # always `steps` evaluations (cond and uncond batched)
    walked = result.outputs["sampler"][0].samples
    # SamplerCustom on BasicScheduler(denoise 0.4) walks the same sigmas from the same noise
    wf["sigmas"] = node("BasicScheduler", model=["ckpt", 0], scheduler="normal", steps=6,
                        denoise=0.4)  # fmt: skip
    wf["select"] = node("KSamplerSelect", sampler_name="euler")
    wf["custom"] = node(
        "SamplerCustom",
        model=["ckpt", 0],
        add_noise=True,
        noise_seed=42,
        cfg=8.0,
        positive=["pos", 0],
        negative=["neg", 0],
        sampler=["select", 0],
        sigmas=["sigmas", 0],
        latent_image=["src", 0],
    )
    wf["show2"] = node("ShowValue", value=["custom", 0])
    result = diffusion_executor.run(wf, settings)
    assert result.ok, result.error
    assert torch.equal(walked, result.outputs["custom"][0].samples)


def test_ksampler_at_full_denoise_is_the_whole_walk(diffusion_executor, settings):
    """denoise 1 is the full schedule from pure noise: KSamplerAdvanced over all its steps."""
    wf = comfy_workflow("empty", steps=5, denoise=1.0)
    inputs = {k: v for k, v in wf["sampler"]["inputs"].items() if k not in ("seed", "denoise")}
    wf["advanced"] = node("KSamplerAdvanced", **inputs, noise_seed=42, add_noise="enable",
                          start_at_step=0, end_at_step=10000,
                          return_with_leftover_noise="disable")  # fmt: skip
    wf["show2"] = node("ShowValue", value=["advanced", 0])
    result = diffusion_executor.run(wf, settings)
    assert result.ok, result.error
    assert torch.equal(result.outputs["sampler"][0].samples, result.outputs["advanced"][0].samples)


def interrupt_after(node_id: str, count: int):
    """(the node's progress events, an interrupt set after `count` of them, the listener)."""
    seen: list[events.Progress] = []
    interrupt = threading.Event()

    def on_event(event):
        if isinstance(event, events.Progress) and event.node_id == node_id:
            seen.append(event)
            if len(seen) == count:
                interrupt.set()

    return seen, interrupt, on_event


def test_denoise_reports_each_step_and_stops_when_interrupted(
    diffusion_executor, settings, tmp_path
):
    picture = write_picture(tmp_path / "p.png")
    seen, interrupt, on_event = interrupt_after("denoise", 2)
    wf = img2img_workflow(str(picture), strength=0.8, steps=10)
    result = diffusion_executor.run(wf, settings, on_event=on_event, interrupt=interrupt)
    assert result.status == "interrupted"
    assert [(e.value, e.max) for e in seen] == [(1, 8), (2, 8)]
    seen.clear()
    result = diffusion_executor.run(wf, settings, on_event=on_event)
    assert result.ok and [e.value for e in seen] == list(range(1, 9))
    # each step carries a live preview, 8x the latent's size
    assert all(e.preview is not None and e.preview.size == (64, 64) for e in seen)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_sde", "uni_pc", "lms", "dpm_adaptive"])
def test_ksampler_reports_each_step_with_a_preview_and_stops_when_interrupted(
    diffusion_executor, settings, sampler
):
    seen, interrupt, on_event = interrupt_after("sampler", 2)
    wf = comfy_workflow("empty", steps=5, denoise=1.0)
    wf["sampler"]["inputs"].update(sampler_name=sampler, seed=777)  # not cached by another test
    result = diffusion_executor.run(wf, settings, on_event=on_event, interrupt=interrupt)
    assert result.status == "interrupted" and len(seen) == 2
    seen.clear()
    result = diffusion_executor.run(wf, settings, on_event=on_event)
    assert result.ok, result.error
    assert seen and all(e.max == 5 for e in seen) and seen[-1].value <= 5
    if sampler != "dpm_adaptive":  # the adaptive sampler reports its own accepted steps
        assert [e.value for e in seen] == [1, 2, 3, 4, 5]
    assert all(e.preview is not None and e.preview.size == (64, 64) for e in seen)


def test_a_change_of_end_at_step_reruns_only_the_sampler_it_feeds(diffusion_executor, settings):
    """A base KSamplerAdvanced stopping at end_at_step with its leftover noise, handed to a
    second one: changing the second's steps re-runs it (and its decode), not the first."""
    wf = comfy_workflow("empty", steps=6, denoise=1.0)
    inputs = {k: v for k, v in wf["sampler"]["inputs"].items() if k not in ("seed", "denoise")}
    common = {**inputs, "noise_seed": 42, "return_with_leftover_noise": "enable"}
    wf["sampler"] = node("KSamplerAdvanced", **common, add_noise="enable", start_at_step=0,
                         end_at_step=3)  # fmt: skip
    wf["finish"] = node("KSamplerAdvanced", **{**common, "latent_image": ["sampler", 0]},
                        add_noise="disable", start_at_step=3, end_at_step=10000)  # fmt: skip
    wf["decode"]["inputs"]["samples"] = ["finish", 0]
    assert diffusion_executor.run(wf, settings).ok
    wf["finish"]["inputs"]["end_at_step"] = 5
    ran: list[str] = []
    on_event = lambda e: isinstance(e, events.NodeStarted) and ran.append(e.node_id)  # noqa: E731
    result = diffusion_executor.run(wf, settings, on_event=on_event)
    assert result.ok, result.error
    assert set(ran) == {"finish", "decode", "show"}


def test_cache_hands_back_the_same_tensors_and_sweeps_rerun_only_the_tail(
    diffusion_executor, settings, tmp_path
):
    picture = write_picture(tmp_path / "p.png")
    wf = img2img_workflow(str(picture), strength=0.3, steps=10)
    first = diffusion_executor.run(wf, settings)
    assert first.ok and not diffusion_executor.run(wf, settings).executed
    wf["save"]["inputs"]["filename_prefix"] = "other"  # only the save node runs again
    again = diffusion_executor.run(wf, settings)
    assert again.executed == ["save"]
    assert again.outputs["decode"][0] is first.outputs["decode"][0]
    for strength in (0.5, 0.7):
        wf["noise"]["inputs"]["strength"] = strength
        swept = diffusion_executor.run(wf, settings)
        assert swept.ok
        assert sorted(swept.executed) == sorted(["noise", "denoise", "decode", "save"])
        assert swept.outputs["src"][0] is first.outputs["src"][0]


# --------------------------------------------------------------------------- workflows


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _base() -> dict:
    return {
        "ckpt": node("CheckpointLoader", name=TINY_NAME),
        "pos": node("TextEncode", clip=["ckpt", 1], text="a red circle"),
        "neg": node("TextEncode", clip=["ckpt", 1], text=""),
    }


def img2img_workflow(picture: str, strength: float, steps: int) -> dict:
    wf = _base()
    wf["load"] = node("LoadImage", image=picture)
    wf["src"] = node("VAEEncode", pixels=["load", 0], vae=["ckpt", 2])
    wf["noise"] = node(
        "AddNoise", model=["ckpt", 0], latent=["src", 0], strength=strength, seed=3,
        steps=steps, sampler="euler", scheduler="normal",
    )  # fmt: skip
    wf["denoise"] = node(
        "Denoise", model=["ckpt", 0], noisy=["noise", 0], positive=["pos", 0],
        negative=["neg", 0], cfg=5.0,
    )  # fmt: skip
    wf["decode"] = node("VAEDecode", samples=["denoise", 0], vae=["ckpt", 2])
    wf["save"] = node("SaveImage", images=["decode", 0], filename_prefix="t")
    return wf


def comfy_workflow(latent_from: str, steps: int, denoise: float) -> dict:
    wf = {
        "ckpt": node("CheckpointLoaderSimple", ckpt_name=TINY_NAME),
        "pos": node("CLIPTextEncode", clip=["ckpt", 1], text="a red circle"),
        "neg": node("CLIPTextEncode", clip=["ckpt", 1], text=""),
        "src": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "sampler": node(
            "KSampler",
            model=["ckpt", 0],
            seed=42,
            steps=steps,
            cfg=8.0,
            sampler_name="euler",
            scheduler="normal",
            positive=["pos", 0],
            negative=["neg", 0],
            latent_image=["src", 0],
            denoise=denoise,
        ),  # fmt: skip
        "decode": node("VAEDecode", samples=["sampler", 0], vae=["ckpt", 2]),
        "show": node("PreviewImage", images=["decode", 0]),
    }
    if latent_from == "txt2img":  # a non-empty start: a text-to-image result
        wf["empty"] = wf["src"]
        inputs = {**wf["sampler"]["inputs"], "latent_image": ["empty", 0], "denoise": 1.0}
        wf["src"] = {"class_type": "KSampler", "inputs": inputs}
    return wf
