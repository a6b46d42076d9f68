"""The cases of ComfyUI's sampling the tests compare against ComfyUI's own numbers.

tools/comfy_reference/make_reference.py runs them through ComfyUI (by hand, ComfyUI installed)
and writes tests/data/comfy_reference/; tests/test_comfy_sampling.py runs them through nodegraph
and compares. Both build the same inputs from here: the tiny random-weight checkpoints of
tests/family_fixtures.py and seeded conditioning tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from nodes.sampling.comfy.samplers import SAMPLER_NAMES as SAMPLER_TABLE
from nodes.sampling.comfy.schedulers import SCHEDULERS as SCHEDULER_TABLE

FAMILIES = ("sd1", "sd2_v", "sd1_inpaint")
SAMPLER_NAMES = list(SAMPLER_TABLE)
"""Every sampler name nodegraph runs: the reference checks it is ComfyUI's list, in order."""
SCHEDULER_NAMES = list(SCHEDULER_TABLE)
LATENT = (4, 8, 8)
WIDE = (32, 48)
"""The latent size (height, width) of the area cases: room for areas to fade in."""
SPLIT_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_sde", "uni_pc", "lms", "dpm_2")
V_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_sde", "uni_pc", "lcm", "ddim")
CFG1_SAMPLERS = ("euler", "dpmpp_2m", "euler_cfg_pp", "dpmpp_2m_cfg_pp")


def tiny_checkpoint(family: str) -> tuple[Any, Any, Any]:
    """The family's tiny checkpoint as nodegraph loads it (a single original-layout file):
    (model, clip, vae)."""
    from nodes.loading.checkpoints import load_checkpoint
    from tests import family_fixtures as ff

    path = ff.single_file(family)
    return load_checkpoint(path.name, {"models": [str(path.parent)]})


def tiny_model(family: str) -> Any:
    """The family's tiny model (its UNet and sampling configuration)."""
    return tiny_checkpoint(family)[0]


def inputs() -> dict[str, torch.Tensor]:
    """Seeded conditioning and latents per family: `<family>.cond`, `.uncond`, `.cond2`,
    `.image` (a VAE-space latent for img2img)."""
    from tests import family_fixtures as ff

    out = {}
    g = torch.Generator().manual_seed(1234)
    for family in FAMILIES:
        width = ff.family(family).unet["cross_attention_dim"]
        for name in ("cond", "uncond", "cond2"):
            out[f"{family}.{name}"] = torch.randn((1, 77, width), generator=g)
        out[f"{family}.image"] = torch.randn((1, *LATENT), generator=g) * 4.0
    size = LATENT[-1] * 8  # a soft-edged disc at the pictures' size, and a latent of its inside
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = ((yy - size * 0.4) ** 2 + (xx - size * 0.55) ** 2).sqrt()
    out["mask"] = (1.0 - (radius - size * 0.25).clamp(0, 4) / 4).reshape(1, 1, size, size)
    out["sd1_inpaint.masked"] = torch.randn((1, *LATENT), generator=g) * 4.0
    out["sd1.uncond_image"] = torch.randn((1, 4, 5, 6), generator=g) * 4.0
    out["sd1.small"] = torch.randn((2, 4, 4, 6), generator=g) * 4.0
    out["sd1.batch3"] = torch.randn((3, *LATENT), generator=g) * 4.0
    out["sd1.long"] = torch.randn((1, 154, 32), generator=g)
    out["sd1.pooled"] = torch.randn((1, 32), generator=g)
    out["sd1.pooled2"] = torch.randn((1, 32), generator=g)
    out["sd1.wide"] = torch.zeros((1, 4, *WIDE))  # EmptyLatentImage at 384 x 256
    h, w = WIDE[0] * 8, WIDE[1] * 8
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    blob = ((yy - h * 0.5) ** 2 + (xx - w * 0.3) ** 2).sqrt()
    out["area.blob"] = (1.0 - (blob - h * 0.3).clamp(0, 16) / 16).reshape(1, h, w)
    box = torch.zeros((1, h, w))
    box[:, 40:200, 220:350] = 0.7
    out["area.box"] = box
    return out


def empty(batch: int = 1) -> torch.Tensor:
    """EmptyLatentImage's latent for the tiny models."""
    return torch.zeros((batch, *LATENT))


SIGMA_STEPS = ("split", "half", "flip")
"""Keys of a sigmas spec that are SplitSigmas / FlipSigmas after the scheduler node."""
SIGMAS_FROM_MODEL = ("BasicScheduler", "SDTurboScheduler")
SAMPLERS_FROM_MODEL = ("SamplerSASolver",)
GUIDER_PROMPTS = {
    "BasicGuider": {"conditioning": "cond"},
    "CFGGuider": {"positive": "cond", "negative": "uncond"},
    "DualCFGGuider": {"cond1": "cond", "cond2": "cond2", "negative": "uncond"},
}
"""Each guider node's conditioning inputs -> the case's prompt tensors."""
INPAINT_SAMPLERS = ("euler", "dpmpp_2m_sde", "ddim", "lcm", "uni_pc")
META = (
    "family",
    "latent",
    "batch",
    "model_sampling",
    "sampler",
    "sigmas",
    "guider",
    "noise",
    "noise_mask",
    "concat",
    "prompts",
)
"""Case keys that are not the node's literal inputs (those go under "inputs", by input name)."""


def _case(kind: str, name: str, defaults: dict[str, Any], **kw: Any) -> dict[str, Any]:
    meta = {"family": "sd1", "latent": "empty", **{k: v for k, v in kw.items() if k in META}}
    inputs = {**defaults, **{k: v for k, v in kw.items() if k not in META}}
    return {"name": name, "kind": kind, **meta, "inputs": inputs}


KSAMPLER = {"seed": 42, "steps": 6, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}  # fmt: skip
TINY_KSAMPLER = {"seed": 42, "steps": 4, "cfg": 5.0, "sampler_name": "euler",
                 "scheduler": "normal", "denoise": 1.0}  # fmt: skip
"""The KSampler of the node-family reference cases (ip2p_cases, unclip_cases, gligen_cases)."""
ADVANCED = {"add_noise": "enable", "noise_seed": 42, "steps": 6, "cfg": 5.0,
            "sampler_name": "euler", "scheduler": "normal", "start_at_step": 0,
            "end_at_step": 10000, "return_with_leftover_noise": "disable"}  # fmt: skip
CUSTOM = {"add_noise": True, "noise_seed": 7, "cfg": 5.0}


def _ks(name: str, sampler: str, **kw: Any) -> dict[str, Any]:
    return _case("KSampler", name, {**KSAMPLER, "sampler_name": sampler}, **kw)


def _adv(name: str, sampler: str, **kw: Any) -> dict[str, Any]:
    return _case("KSamplerAdvanced", name, {**ADVANCED, "sampler_name": sampler}, **kw)


def _custom(name: str, sigmas: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """SamplerCustom (KSamplerSelect's sampler, default euler) on the given sigmas node."""
    return _case("SamplerCustom", name, CUSTOM, **{"sampler": "euler", "sigmas": sigmas, **kw})


def _guided(name: str, guider: dict[str, Any], seed: int | None = 7, **kw: Any) -> dict[str, Any]:
    """SamplerCustomAdvanced with RandomNoise(seed) (None: DisableNoise) and a guider node."""
    spec = {"sampler": "euler", "sigmas": BASIC, "guider": guider, "noise": seed, **kw}
    return _case("SamplerCustomAdvanced", name, {}, **spec)


BASIC = {"node": "BasicScheduler", "scheduler": "karras", "steps": 6, "denoise": 1.0}
KARRAS = {"node": "KarrasScheduler", "steps": 6, "sigma_max": 14.614642, "sigma_min": 0.0291675,
          "rho": 7.0}  # fmt: skip
MODEL_SAMPLINGS = {
    "discrete_v_zsnr": {"node": "discrete", "sampling": "v_prediction", "zsnr": True},
    "discrete_eps_zsnr": {"node": "discrete", "sampling": "eps", "zsnr": True},
    "discrete_lcm": {"node": "discrete", "sampling": "lcm", "zsnr": False},
    "discrete_x0": {"node": "discrete", "sampling": "x0", "zsnr": False},
    "edm_edm": {"node": "edm", "sampling": "edm", "sigma_max": 120.0, "sigma_min": 0.002},
    "edm_v": {"node": "edm", "sampling": "v_prediction", "sigma_max": 120.0, "sigma_min": 0.002},
    "edm_eps": {"node": "edm", "sampling": "eps", "sigma_max": 80.0, "sigma_min": 0.03},
}


def sigma_cases() -> list[dict[str, Any]]:
    """Every scheduler's sigmas for the SD table, and a few under ModelSampling patches."""
    cases = [
        _case("sigmas", f"sigmas.{s}.{n}", {"scheduler": s, "steps": n})
        for s in SCHEDULER_NAMES
        for n in (1, 4, 9, 20, 33)
    ]
    for patch, spec in MODEL_SAMPLINGS.items():
        for s in ("normal", "karras", "simple", "ddim_uniform", "beta", "sgm_uniform"):
            inputs = {"scheduler": s, "steps": 9}
            cases.append(_case("sigmas", f"sigmas.{patch}.{s}", inputs, model_sampling=spec))
    return cases


TXT2IMG_OVERRIDES: dict[str, dict[str, Any]] = {
    # dpm_adaptive stops once within 1e-5 of its end time: with seed 42 the walk lands at that
    # edge, and whether one more tiny step is taken flips with the CPU's float rounding
    # (ComfyUI itself gives latents 0.11 apart on two machines). Seed 3 ends far from it: the
    # error estimates moved by 1e-4 change its latents by < 1e-3.
    "dpm_adaptive": {"seed": 3},
}


# fmt: off
def sampling_cases() -> list[dict[str, Any]]:
    """Every sampler txt2img and at denoise 0.5; every scheduler; v-prediction; cfg 1; a
    batch; KSamplerAdvanced splits; the custom-sampling nodes; ModelSampling patches."""
    cases = [_ks(f"txt2img.{s}", s, **TXT2IMG_OVERRIDES.get(s, {})) for s in SAMPLER_NAMES]
    cases += [_ks(f"img2img.{s}", s, denoise=0.5, latent="sd1.image") for s in SAMPLER_NAMES]
    cases += [_ks(f"scheduler.{s}.{sampler}", sampler, scheduler=s, steps=7)
              for s in SCHEDULER_NAMES for sampler in ("euler", "dpmpp_2m")]
    cases += [_ks(f"v.{s}", s, family="sd2_v") for s in V_SAMPLERS]
    cases += [_ks(f"v.img2img.{s}", s, family="sd2_v", denoise=0.6, latent="sd2_v.image")
              for s in ("euler", "dpmpp_2m")]
    cases += [_ks(f"cfg1.{s}", s, cfg=1.0) for s in CFG1_SAMPLERS]
    cases += [_ks(f"batch2.{s}", s, batch=2, seed=5) for s in ("euler_ancestral", "dpmpp_2m_sde")]
    for s in SPLIT_SAMPLERS:
        cases += [
            _adv(f"split.{s}.first", s, end_at_step=3, return_with_leftover_noise="enable"),
            _adv(f"split.{s}.rest", s, start_at_step=3, add_noise="disable",
                 latent=f"split.{s}.first"),
            _adv(f"split.{s}.cut", s, end_at_step=3),
        ]
    cases.append(_adv("advanced.img2img.window", "dpmpp_2m", start_at_step=2, end_at_step=5,
                      steps=8, latent="sd1.image"))
    exponential = {"node": "ExponentialScheduler", "steps": 5, "sigma_max": 14.614642,
                   "sigma_min": 0.0291675}
    turbo = {"node": "SDTurboScheduler", "steps": 2, "denoise": 1.0}
    image = {"latent": "sd1.image"}
    cases += [
        _custom("custom.basic_karras", BASIC, sampler="dpmpp_2m_sde"),
        _custom("custom.karras", KARRAS, sampler="heun"),
        _custom("custom.exponential", exponential),
        _custom("custom.turbo", turbo, sampler="euler_ancestral", cfg=1.0),
        _custom("custom.turbo_img2img", {**turbo, "steps": 1, "denoise": 0.5}, cfg=1.0, **image),
        _custom("custom.split_high", {**BASIC, "split": 2, "half": "high"}),
        _custom("custom.split_low", {**BASIC, "split": 2, "half": "low"}, add_noise=False,
                **image),
        _custom("custom.flip", {**BASIC, "scheduler": "normal", "flip": True}, add_noise=False,
                cfg=1.0, **image),
        _custom("custom.basic_denoise", {**BASIC, "denoise": 0.4}, sampler="dpmpp_2m", **image),
    ]
    options = {
        "euler_ancestral": {"node": "SamplerEulerAncestral", "eta": 0.6, "s_noise": 0.9},
        "euler_ancestral_cfg_pp": {"node": "SamplerEulerAncestralCFGPP", "eta": 0.5,
                                   "s_noise": 1.0},
        "lms": {"node": "SamplerLMS", "order": 2},
        "dpmpp_3m_sde": {"node": "SamplerDPMPP_3M_SDE", "eta": 0.7, "s_noise": 1.1,
                         "noise_device": "cpu"},
        "dpmpp_2m_sde": {"node": "SamplerDPMPP_2M_SDE", "solver_type": "heun", "eta": 0.5,
                         "s_noise": 1.0, "noise_device": "gpu"},
        "dpmpp_sde": {"node": "SamplerDPMPP_SDE", "eta": 0.8, "s_noise": 1.0, "r": 0.4,
                      "noise_device": "cpu"},
        "dpmpp_2s_ancestral": {"node": "SamplerDPMPP_2S_Ancestral", "eta": 0.5, "s_noise": 1.0},
        "dpm_adaptive": {"node": "SamplerDPMAdaptative", "order": 2, "rtol": 0.1, "atol": 0.01,
                         "h_init": 0.1, "pcoeff": 0.1, "icoeff": 0.9, "dcoeff": 0.05,
                         "accept_safety": 0.8, "eta": 0.3, "s_noise": 1.0},
        "sa_solver": {"node": "SamplerSASolver", "eta": 0.8, "sde_start_percent": 0.1,
                      "sde_end_percent": 0.7, "s_noise": 1.0, "predictor_order": 2,
                      "corrector_order": 3, "use_pece": True, "simple_order_2": False},
        "seeds_2": {"node": "SamplerSEEDS2", "solver_type": "phi_2", "eta": 0.0,
                    "s_noise": 1.0, "r": 1.0},
    }
    cases += [_custom(f"options.{name}", BASIC, sampler=spec) for name, spec in options.items()]
    dual = {"node": "DualCFGGuider", "cfg_conds": 4.0, "cfg_cond2_negative": 2.0,
            "style": "regular"}
    guiders = {
        "basic": {"node": "BasicGuider"},
        "cfg": {"node": "CFGGuider", "cfg": 3.0},
        "dual_regular": dual,
        "dual_nested": {**dual, "style": "nested"},
        "dual_cfg2_one": {**dual, "cfg_conds": 3.0, "cfg_cond2_negative": 1.0},
    }
    cases += [_guided(f"guider.{name}", spec) for name, spec in guiders.items()]
    cases.append(_guided("guider.cfg_no_noise", guiders["cfg"], seed=None,
                         sampler="euler_ancestral", **image))
    cases += [_ks(f"inpaint.mask.{s}", s, noise_mask="mask", latent="sd1.image")
              for s in INPAINT_SAMPLERS]
    cases += [_ks(f"inpaint.mask_denoise.{s}", s, noise_mask="mask", latent="sd1.image",
                  denoise=0.6) for s in ("euler", "ddim")]
    inpaint = {"family": "sd1_inpaint", "latent": "sd1_inpaint.image", "noise_mask": "mask"}
    cases += [_ks(f"inpaint.model.{s}", s, **inpaint) for s in ("euler", "dpmpp_2m", "ddim")]
    cases += [_ks(f"inpaint.model_conditioning.{s}", s, **inpaint, concat=True)
              for s in ("euler", "dpmpp_2m")]
    cases.append(_ks("inpaint.model_no_mask", "euler", family="sd1_inpaint",
                     latent="sd1_inpaint.image"))
    cases += area_cases()
    samplers = {"discrete_lcm": "lcm", "edm_edm": "dpmpp_2m", "discrete_v_zsnr": "euler"}
    cases += [_ks(f"model_sampling.{patch}", samplers.get(patch, "euler_ancestral"),
                  model_sampling=spec, scheduler="karras", steps=5)
              for patch, spec in MODEL_SAMPLINGS.items()]
    return cases


def _set(node: str, **inputs: Any) -> list[Any]:
    return [node, inputs]


def area_cases() -> list[dict[str, Any]]:
    """Several Conds per prompt (ConditioningCombine) with areas, masks, strengths and schedule
    windows. A prompt is a list of (tensor, chain of ComfyUI conditioning nodes) pairs; a
    `mask` input names a tensor."""
    left = _set("ConditioningSetArea", width=256, height=256, x=0, y=0, strength=1.0)
    right = _set("ConditioningSetArea", width=192, height=256, x=192, y=0, strength=1.0)
    middle = _set("ConditioningSetAreaPercentage", width=0.5, height=0.62, x=0.25, y=0.2,
                  strength=0.6)
    top = _set("ConditioningSetArea", width=384, height=128, x=0, y=0, strength=1.0)
    plain = [["uncond", []]]
    specs = {
        "halves": {"positive": [["cond", [left]], ["cond2", [right]]], "negative": plain},
        "percentage_over_whole": {"positive": [["cond", []], ["cond2", [middle]]],
                                  "negative": plain},
        "masks": {"positive": [
            ["cond", [_set("ConditioningSetMask", mask="area.blob", strength=0.8,
                           set_cond_area="default")]],
            ["cond2", [_set("ConditioningSetMask", mask="area.box", strength=1.0,
                            set_cond_area="mask bounds")]],
            ["uncond", [_set("ConditioningSetAreaStrength", strength=0.2)]]], "negative": plain},
        "timestep_ranges": {"positive": [
            ["cond", [_set("ConditioningSetTimestepRange", start=0.0, end=0.4)]],
            ["cond2", [_set("ConditioningSetTimestepRange", start=0.4, end=1.0)]]],
            "negative": plain},
        "strengths": {"positive": [["cond", [_set("ConditioningSetAreaStrength", strength=2.5)]],
                                   ["cond2", [left]]], "negative": plain},
        "negative_area": {"positive": [["cond", []]],
                          "negative": [["uncond", []], ["cond2", [top]]]},
    }
    cases = [_ks(f"area.{name}", "euler", latent="sd1.wide", prompts=spec)
             for name, spec in specs.items()]
    cases.append(_ks("area.halves.dpmpp_2m", "dpmpp_2m", latent="sd1.wide",
                     prompts=specs["halves"]))
    cases.append(_ks("area.masks.ancestral", "euler_ancestral", latent="sd1.wide", denoise=0.7,
                     prompts=specs["masks"]))
    return cases


def latent_cases() -> list[dict[str, Any]]:
    """ComfyUI's latent nodes on seeded latents: resize (every method, crop, aspect), composite
    (feather, masks, out of bounds), blend, and the batch nodes' batch indices."""
    image, other, mask = "sd1.image", "sd1.uncond_image", "mask"
    def op(name: str, node: str, latents: dict[str, str], **inputs: Any) -> dict[str, Any]:
        return {"name": f"latent.{name}", "kind": "latent_op", "node": node,
                "latents": latents, "inputs": inputs}
    cases = [op(f"upscale.{m}.{c}", "LatentUpscale", {"samples": image}, upscale_method=m,
                width=96, height=48, crop=c)
             for m in ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
             for c in ("disabled", "center")]
    cases += [op("upscale.keep_aspect", "LatentUpscale", {"samples": image},
                 upscale_method="bilinear", width=0, height=128, crop="disabled"),
              op("upscale.min64", "LatentUpscale", {"samples": image},
                 upscale_method="nearest-exact", width=16, height=200, crop="disabled")]
    cases += [op(f"upscale_by.{m}", "LatentUpscaleBy", {"samples": image}, upscale_method=m,
                 scale_by=1.37) for m in ("bilinear", "bislerp", "area")]
    cases += [op(f"composite.{f}", "LatentComposite", {"samples_to": image, "samples_from": other},
                 x=16, y=24, feather=f) for f in (0, 16)]
    cases += [op("composite_masked.plain", "LatentCompositeMasked",
                 {"destination": image, "source": other}, x=8, y=16, resize_source=False),
              op("composite_masked.mask", "LatentCompositeMasked",
                 {"destination": image, "source": other}, x=24, y=0, resize_source=False,
                 mask=mask),
              op("composite_masked.resize", "LatentCompositeMasked",
                 {"destination": image, "source": "sd1.small"}, x=0, y=0, resize_source=True,
                 mask=mask)]
    cases += [op("blend.same", "LatentBlend", {"samples1": image, "samples2": other},
                 blend_factor=0.3),
              op("blend.resized", "LatentBlend", {"samples1": image, "samples2": "sd1.small"},
                 blend_factor=0.6)]
    cases += [op("repeat", "RepeatLatentBatch", {"samples": "sd1.batch3"}, amount=3),
              op("from_batch", "LatentFromBatch", {"samples": "sd1.batch3"}, batch_index=1,
                 length=5),
              op("batch", "LatentBatch", {"samples1": "sd1.batch3", "samples2": "sd1.small"})]
    return cases


def conditioning_cases() -> list[dict[str, Any]]:
    """ComfyUI's conditioning arithmetic on seeded prompts: (tensor name, pooled name or None)."""
    def op(name: str, node: str, conds: dict[str, tuple[str, str | None]], **inputs: Any):
        return {"name": f"conditioning.{name}", "kind": "conditioning_op", "node": node,
                "conds": conds, "inputs": inputs}
    a, b, long = ("sd1.cond", "sd1.pooled"), ("sd1.cond2", "sd1.pooled2"), ("sd1.long", None)
    return [
        op("average", "ConditioningAverage", {"conditioning_to": a, "conditioning_from": b},
           conditioning_to_strength=0.3),
        op("average_longer_from", "ConditioningAverage",
           {"conditioning_to": a, "conditioning_from": long}, conditioning_to_strength=0.6),
        op("average_shorter_from", "ConditioningAverage",
           {"conditioning_to": long, "conditioning_from": b}, conditioning_to_strength=0.25),
        op("concat", "ConditioningConcat", {"conditioning_to": a, "conditioning_from": long}),
        op("zero_out", "ConditioningZeroOut", {"conditioning": a}),
    ]
# fmt: on
