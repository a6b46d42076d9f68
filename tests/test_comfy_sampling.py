"""ComfyUI's sampling against ComfyUI's own numbers (tests/data/comfy_reference, made by
tools/comfy_reference/make_reference.py from ComfyUI's node classes on the same tiny UNets).

Every scheduler's sigmas to 1e-6; every sampler's final latent, txt2img and at denoise 0.5, to
1e-4 (relative to the latent's scale where it is large); KSamplerAdvanced splits; the custom-
sampling nodes; ModelSampling patches; v-prediction; and properties that need no oracle.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from nodes.sampling import custom, ksampler, sampler_options
from nodes.sampling.comfy.model_sampling import ModelSampling
from nodes.sampling.comfy.samplers import SAMPLERS
from nodes.sampling.comfy.schedulers import SCHEDULERS, schedule
from nodes.sampling.model_sampling_nodes import ModelSamplingContinuousEDM, ModelSamplingDiscrete
from nodes.values import Conditioning, Latent
from tests import comfy_cases as C

DATA = Path(__file__).parent / "data" / "comfy_reference"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
CASES = {case["name"]: case for case in MANIFEST["cases"]}
SIGMA_TOL, LATENT_TOL = 1e-6, 1e-4


class Ctx:
    """A node context that records progress and warnings."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.warnings: list[str] = []

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        self.steps.append((value, total))

    def warn(self, message: str) -> None:
        self.warnings.append(message)


pytestmark = pytest.mark.usefixtures("reference_threads")


@cache
def reference() -> dict[str, torch.Tensor]:
    return load_file(DATA / "tensors.safetensors")


@cache
def model(family: str, patch: str | None = None) -> Any:
    base = C.tiny_model(family)
    if patch is None:
        return base
    spec = json.loads(patch)
    if spec["node"] == "discrete":
        node = ModelSamplingDiscrete(model=base, sampling=spec["sampling"], zsnr=spec["zsnr"])
    else:
        node = ModelSamplingContinuousEDM(
            model=base,
            sampling=spec["sampling"],
            sigma_max=spec["sigma_max"],
            sigma_min=spec["sigma_min"],
        )
    return node.invoke(Ctx())


def case_model(case: dict[str, Any]) -> Any:
    patch = case.get("model_sampling")
    return model(case["family"], None if patch is None else json.dumps(patch, sort_keys=True))


def cond(case: dict[str, Any], name: str) -> Conditioning:
    return Conditioning.of(reference()[f"{case['family']}.{name}"])


def latent(case: dict[str, Any], results: dict[str, torch.Tensor]) -> Latent:
    source = case["latent"]
    mask = reference()[case["noise_mask"]] if "noise_mask" in case else None
    if source == "empty":
        return Latent(C.empty(case.get("batch", 1)), mask)
    return Latent(results.get(source, reference().get(source)).clone(), mask)


def close(ours: torch.Tensor, theirs: torch.Tensor, tol: float) -> float:
    """The largest difference, in units of the tolerance scaled to the reference's size."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    nan = theirs.isnan()
    assert torch.equal(ours.isnan(), nan), "NaN where ComfyUI has none, or the other way"
    ours, theirs = ours.float()[~nan], theirs[~nan]
    if theirs.numel() == 0:
        return 0.0
    scale = max(1.0, float(theirs.abs().max()))
    return float((ours - theirs).abs().max()) / (tol * scale)


def test_the_reference_names_every_sampler_and_scheduler():
    assert MANIFEST["comfyui_commit"]
    assert list(SAMPLERS) == MANIFEST["sampler_names"]  # every ComfyUI name runs, in its order
    assert list(SCHEDULERS) == MANIFEST["scheduler_names"]
    txt2img = [c["inputs"]["sampler_name"] for n, c in CASES.items() if n.startswith("txt2img.")]
    assert txt2img == MANIFEST["sampler_names"]


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c["kind"] == "sigmas"])
def test_scheduler_sigmas_match_comfyui(name):
    case = CASES[name]
    ms = ModelSampling.for_model(case_model(case))
    ours = schedule(ms, case["inputs"]["scheduler"], case["inputs"]["steps"])
    assert close(ours, reference()[name], SIGMA_TOL) <= 1


def prompt(case: dict[str, Any], slot: str) -> Conditioning:
    """A case's prompt: each tensor through its chain of conditioning nodes, all combined."""
    from nodes.conditioning import areas, combine

    out = None
    for text, chain in case["prompts"][slot]:
        c = cond(case, text)
        for node, inputs in chain:
            args = {k: reference()[v] if k == "mask" else v for k, v in inputs.items()}
            c = getattr(areas, node)(conditioning=c, **args).invoke(Ctx())
        out = c if out is None else combine.ConditioningCombine(
            conditioning_1=out, conditioning_2=c).invoke(Ctx())  # fmt: skip
    return out


def run_case(case: dict[str, Any], results: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The case through nodegraph's node of the same name, with the same inputs."""
    m, ctx, kind = case_model(case), Ctx(), case["kind"]
    given = {"positive": cond(case, "cond"), "negative": cond(case, "uncond"),
             "latent_image": latent(case, results)}  # fmt: skip
    if "prompts" in case:
        given.update({slot: prompt(case, slot) for slot in case["prompts"]})
    if case.get("concat"):  # InpaintModelConditioning's additions to both prompts
        extras = {"concat_latent_image": reference()[f"{case['family']}.masked"],
                  "concat_mask": reference()[case["noise_mask"]]}  # fmt: skip
        for key in ("positive", "negative"):
            given[key] = given[key].with_options(**extras)
    if kind in ("KSampler", "KSamplerAdvanced"):
        node = getattr(ksampler, kind)(model=m, **given, **case["inputs"])
        return {case["name"]: node.invoke(ctx).samples}
    parts = {
        "sampler": custom_sampler(m, case["sampler"]),
        "sigmas": custom_sigmas(m, case["sigmas"]),
        "latent_image": given["latent_image"],
    }
    if kind == "SamplerCustom":
        node = custom.SamplerCustom(
            model=m,
            positive=given["positive"],
            negative=given["negative"],
            **parts,
            **case["inputs"],
        )
    else:
        seed = case["noise"]
        noise = custom.DisableNoise() if seed is None else custom.RandomNoise(noise_seed=seed)
        guider = custom_guider(m, case, case["guider"])
        node = custom.SamplerCustomAdvanced(noise=noise.invoke(ctx), guider=guider, **parts)
    out = node.invoke(ctx)
    return {
        case["name"]: out.output.samples,
        case["name"] + ".denoised": out.denoised_output.samples,
    }


def custom_sampler(m: Any, spec: str | dict[str, Any]) -> Any:
    if isinstance(spec, str):
        return custom.KSamplerSelect(sampler_name=spec).invoke(Ctx())
    fields = {k: v for k, v in spec.items() if k != "node"}
    if spec["node"] in C.SAMPLERS_FROM_MODEL:
        fields["model"] = m
    return getattr(sampler_options, spec["node"])(**fields).invoke(Ctx())


def custom_sigmas(m: Any, spec: dict[str, Any]) -> torch.Tensor:
    ctx = Ctx()
    fields = {k: v for k, v in spec.items() if k not in C.SIGMA_STEPS}
    node = getattr(custom, fields.pop("node"))
    if spec["node"] in C.SIGMAS_FROM_MODEL:
        fields["model"] = m
    sigmas = node(**fields).invoke(ctx)
    if "split" in spec:
        halves = custom.SplitSigmas(sigmas=sigmas, step=spec["split"]).invoke(ctx)
        sigmas = halves.high_sigmas if spec["half"] == "high" else halves.low_sigmas
    if spec.get("flip"):
        sigmas = custom.FlipSigmas(sigmas=sigmas.clone()).invoke(ctx)
    return sigmas


def custom_guider(m: Any, case: dict[str, Any], spec: dict[str, Any]) -> Any:
    fields = {k: v for k, v in spec.items() if k != "node"}
    prompts = {name: cond(case, slot) for name, slot in C.GUIDER_PROMPTS[spec["node"]].items()}
    return getattr(custom, spec["node"])(model=m, **prompts, **fields).invoke(Ctx())


SAMPLING = [
    n
    for n, c in CASES.items()
    if c["kind"] in ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
]


@pytest.mark.parametrize("name", [n for n in SAMPLING if not n.startswith("split.")])
def test_sampling_matches_comfyui(name):
    produced = run_case(CASES[name], {})
    for key, ours in produced.items():
        assert close(ours, reference()[key], LATENT_TOL) <= 1, key


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_sde", "uni_pc", "dpm_adaptive", "lcm"])
def test_decoded_pictures_match_comfyuis_to_one_level(sampler):
    """The final latents decoded (as SaveImage stores them: 0..255, truncated) are within 1/255
    of ComfyUI's latents decoded the same way."""
    from nodes.latents.codec import VAEDecode

    name = f"txt2img.{sampler}"
    _, _, vae = C.tiny_checkpoint("sd1")
    ours = run_case(CASES[name], {})[name]
    decode = lambda t: VAEDecode(samples=Latent(t), vae=vae).invoke(Ctx())  # noqa: E731
    pictures = [decode(t) for t in (ours, reference()[name])]
    levels = [(255.0 * p.clamp(0, 1)).to(torch.uint8).int() for p in pictures]
    assert (levels[0] - levels[1]).abs().max() <= 1


@pytest.mark.parametrize("sampler", C.SPLIT_SAMPLERS)
def test_ksampler_advanced_split_matches_comfyui(sampler):
    results: dict[str, torch.Tensor] = {}
    for part in ("first", "rest", "cut"):
        results.update(run_case(CASES[f"split.{sampler}.{part}"], results))
    for key, ours in results.items():
        assert close(ours, reference()[key], LATENT_TOL) <= 1, key


def ksample(m: Any, case: dict[str, Any], image: torch.Tensor, **inputs: Any) -> torch.Tensor:
    defaults = {"seed": 3, "steps": 6, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}
    node = ksampler.KSampler(model=m, positive=cond(case, "cond"), negative=cond(case, "uncond"),
                             latent_image=Latent(image), **{**defaults, **inputs})  # fmt: skip
    return node.invoke(Ctx()).samples


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm_2"])
def test_a_split_with_leftover_noise_resumed_is_one_walk(sampler):
    """Single-step samplers: stopping at step k with the leftover noise and resuming at k with
    no new noise is the uninterrupted walk (multistep and noisy samplers restart their
    history and noise at the split, in ComfyUI as here)."""
    case, m = CASES["txt2img.euler"], model("sd1")
    common = {"noise_seed": 3, "steps": 6, "cfg": 5.0, "sampler_name": sampler,
              "scheduler": "karras", "positive": cond(case, "cond"),
              "negative": cond(case, "uncond")}  # fmt: skip

    def advanced(latent: torch.Tensor, **kw: Any) -> torch.Tensor:
        node = ksampler.KSamplerAdvanced(model=m, latent_image=Latent(latent), **common, **kw)
        return node.invoke(Ctx()).samples

    whole = advanced(C.empty())
    first = advanced(C.empty(), end_at_step=2, return_with_leftover_noise="enable")
    rest = advanced(first, start_at_step=2, add_noise="disable")
    assert (rest - whole).abs().max() <= 1e-5 * max(1.0, float(whole.abs().max()))
    assert (first - whole).abs().max() > 1e-2  # the first part really stopped early


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_a_seed_gives_the_same_picture_alone_and_first_in_a_batch(sampler):
    """ComfyUI draws the whole batch's noise at once from the seed on the CPU: image 0 of a
    batch of 4 is the batch-of-1 picture (deterministic samplers)."""
    case, m = CASES["txt2img.euler"], model("sd1")
    alone = ksample(m, case, C.empty(1), sampler_name=sampler)
    batch = ksample(m, case, C.empty(4), sampler_name=sampler)
    assert batch.shape[0] == 4
    assert (batch[:1] - alone).abs().max() <= 1e-5 * max(1.0, float(alone.abs().max()))
    assert (batch[1] - batch[0]).abs().max() > 1e-2  # the others got other noise


def test_an_unknown_sampler_name_is_refused_at_validation_with_the_nearest():
    from nodegraph.validate import LiteralProblem, coerce_literal

    spec = ksampler.KSampler.spec.inputs["sampler_name"]
    with pytest.raises(LiteralProblem) as problem:
        coerce_literal(spec, "eulr_ancestral")
    message = str(problem.value)
    assert "Did you mean 'euler_ancestral'?" in message
    assert all(repr(name) in message for name in MANIFEST["sampler_names"])  # the names


LATENT_OPS = [n for n, c in CASES.items() if c["kind"] == "latent_op"]


@pytest.mark.parametrize("name", LATENT_OPS)
def test_latent_nodes_match_comfyui(name):
    from nodes.latents import batch, transform

    case = CASES[name]
    node = getattr(transform, case["node"], None) or getattr(batch, case["node"])
    latents = {k: Latent(reference()[v].clone()) for k, v in case["latents"].items()}
    inputs = {k: reference()[v] if k == "mask" else v for k, v in case["inputs"].items()}
    out = node(**latents, **inputs).invoke(Ctx())
    assert close(out.samples, reference()[name], SIGMA_TOL) <= 1
    if name + ".batch_index" in reference():
        assert list(out.batch_index) == reference()[name + ".batch_index"].tolist()


def test_a_latent_from_a_batch_gets_the_noise_it_had_in_the_batch():
    """LatentFromBatch keeps the batch index, so image 2 of a batch sampled alone is image 2
    of the batch sampled whole (ComfyUI's prepare_noise with batch_index)."""
    from nodes.latents.batch import LatentFromBatch

    case, m = CASES["txt2img.euler"], model("sd1")
    whole = ksample(m, case, C.empty(3))
    taken = LatentFromBatch(samples=Latent(C.empty(3)), batch_index=2, length=1).invoke(Ctx())
    node = ksampler.KSampler(model=m, positive=cond(case, "cond"), negative=cond(case, "uncond"),
                             latent_image=taken, seed=3, steps=6, cfg=5.0, sampler_name="euler",
                             scheduler="normal")  # fmt: skip
    alone = node.invoke(Ctx())
    assert alone.batch_index == (2,)
    assert (alone.samples - whole[2:3]).abs().max() <= 1e-5 * max(1.0, float(whole.abs().max()))


def test_a_noise_mask_keeps_what_lies_outside_it():
    """SetLatentNoiseMask on a plain model: where the mask is 0 the latent comes back as it
    went in (ComfyUI blends the kept latent back in at every step); inside it changes."""
    from nodes.latents.inpaint import SetLatentNoiseMask

    case, m = CASES["txt2img.euler"], model("sd1")
    image = reference()["sd1.image"]
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0  # repaint the right half
    masked = SetLatentNoiseMask(samples=Latent(image), mask=mask).invoke(Ctx())
    node = ksampler.KSampler(model=m, positive=cond(case, "cond"), negative=cond(case, "uncond"),
                             latent_image=masked, seed=3, steps=6, cfg=5.0, sampler_name="euler",
                             scheduler="normal", denoise=0.8)  # fmt: skip
    out = node.invoke(Ctx()).samples
    assert torch.allclose(out[..., :3], image[..., :3], atol=1e-5)  # left of the soft edge
    assert (out[..., 5:] - image[..., 5:]).abs().max() > 1e-1


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c["kind"] == "conditioning_op"])
def test_conditioning_arithmetic_matches_comfyui(name):
    from nodes.conditioning import combine

    case = CASES[name]
    conds = {k: Conditioning.of(reference()[t], None if p is None else reference()[p])
             for k, (t, p) in case["conds"].items()}  # fmt: skip
    (out,) = getattr(combine, case["node"])(**conds, **case["inputs"]).invoke(Ctx()).conds
    assert close(out.embeds, reference()[name], SIGMA_TOL) <= 1
    if name + ".pooled" in reference():
        assert close(out.pooled, reference()[name + ".pooled"], SIGMA_TOL) <= 1
    else:
        assert out.pooled is None
