"""The cases of ComfyUI's sampling the tests compare against ComfyUI's own numbers.

tools/comfy_reference/make_reference.py runs them through ComfyUI (by hand, ComfyUI installed)
and writes tests/data/comfy_reference/; tests/test_comfy_sampling.py runs them through nodegraph
and compares. Both build the same inputs from here: the tiny random-weight checkpoints of
tests/family_fixtures.py and seeded conditioning tensors.
"""

from __future__ import annotations

from typing import Any

import torch

FAMILIES = ("sd1", "sd2_v")
SAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde",
    "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece",
    "ddim", "uni_pc", "uni_pc_bh2",
]  # fmt: skip
"""ComfyUI's KSampler sampler list, in its order (ComfyUI 0.8.0)."""
SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta",
                   "normal", "linear_quadratic", "kl_optimal"]  # fmt: skip
LATENT = (4, 8, 8)
SPLIT_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_sde", "uni_pc", "lms", "dpm_2")
V_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_sde", "uni_pc", "lcm", "ddim")
CFG1_SAMPLERS = ("euler", "dpmpp_2m", "euler_cfg_pp", "dpmpp_2m_cfg_pp")


def tiny_model(family: str) -> Any:
    """The family's tiny checkpoint as nodegraph loads it (a single original-layout file)."""
    from nodes.loading.checkpoints import load_checkpoint
    from tests import family_fixtures as ff

    path = ff.single_file(family)
    model, _, _ = load_checkpoint(path.name, {"models": [str(path.parent)]})
    return model


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
    return out


def empty(batch: int = 1) -> torch.Tensor:
    """EmptyLatentImage's latent for the tiny models."""
    return torch.zeros((batch, *LATENT))


def _ks(name: str, sampler: str, **kw: Any) -> dict[str, Any]:
    case = {
        "kind": "ksampler",
        "family": "sd1",
        "sampler": sampler,
        "scheduler": "normal",
        "steps": 6,
        "cfg": 5.0,
        "seed": 42,
        "denoise": 1.0,
        "latent": "empty",
    }
    return {**case, **kw, "name": name}


def _adv(name: str, sampler: str, **kw: Any) -> dict[str, Any]:
    case = {
        "kind": "advanced",
        "family": "sd1",
        "sampler": sampler,
        "scheduler": "normal",
        "steps": 6,
        "cfg": 5.0,
        "seed": 42,
        "add_noise": "enable",
        "start": 0,
        "end": 10000,
        "leftover": "disable",
        "latent": "empty",
    }
    return {**case, **kw, "name": name}


def _custom(name: str, kind: str, sigmas: dict[str, Any], **kw: Any) -> dict[str, Any]:
    case = {
        "kind": kind,
        "family": "sd1",
        "sampler": "euler",
        "cfg": 5.0,
        "seed": 7,
        "add_noise": True,
        "latent": "empty",
        "sigmas": sigmas,
    }
    return {**case, **kw, "name": name}


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
        {"kind": "sigmas", "family": "sd1", "scheduler": s, "steps": n, "name": f"sigmas.{s}.{n}"}
        for s in SCHEDULER_NAMES
        for n in (1, 4, 9, 20, 33)
    ]
    for patch, spec in MODEL_SAMPLINGS.items():
        for s in ("normal", "karras", "simple", "ddim_uniform", "beta", "sgm_uniform"):
            cases.append(
                {
                    "kind": "sigmas",
                    "family": "sd1",
                    "scheduler": s,
                    "steps": 9,
                    "model_sampling": spec,
                    "name": f"sigmas.{patch}.{s}",
                }
            )
    return cases


def sampling_cases() -> list[dict[str, Any]]:
    """Every sampler txt2img and at denoise 0.5; every scheduler; v-prediction; cfg 1; a
    batch; KSamplerAdvanced splits; the custom-sampling nodes; ModelSampling patches."""
    cases = [_ks(f"txt2img.{s}", s) for s in SAMPLER_NAMES]
    cases += [_ks(f"img2img.{s}", s, denoise=0.5, latent="sd1.image") for s in SAMPLER_NAMES]
    cases += [
        _ks(f"scheduler.{s}.{sampler}", sampler, scheduler=s, steps=7)
        for s in SCHEDULER_NAMES
        for sampler in ("euler", "dpmpp_2m")
    ]
    cases += [_ks(f"v.{s}", s, family="sd2_v") for s in V_SAMPLERS]
    cases += [
        _ks(f"v.img2img.{s}", s, family="sd2_v", denoise=0.6, latent="sd2_v.image")
        for s in ("euler", "dpmpp_2m")
    ]
    cases += [_ks(f"cfg1.{s}", s, cfg=1.0) for s in CFG1_SAMPLERS]
    cases += [_ks(f"batch2.{s}", s, batch=2, seed=5) for s in ("euler_ancestral", "dpmpp_2m_sde")]
    for s in SPLIT_SAMPLERS:
        cases += [
            _adv(f"split.{s}.first", s, end=3, leftover="enable"),
            _adv(f"split.{s}.rest", s, start=3, add_noise="disable", latent=f"split.{s}.first"),
            _adv(f"split.{s}.cut", s, end=3),
        ]
    cases.append(
        _adv("advanced.img2img.window", "dpmpp_2m", start=2, end=5, steps=8, latent="sd1.image")
    )
    cases += [
        _custom("custom.basic_karras", "custom", BASIC, sampler="dpmpp_2m_sde"),
        _custom("custom.karras", "custom", KARRAS, sampler="heun"),
        _custom(
            "custom.exponential",
            "custom",
            {
                "node": "ExponentialScheduler",
                "steps": 5,
                "sigma_max": 14.614642,
                "sigma_min": 0.0291675,
            },
        ),
        _custom(
            "custom.turbo",
            "custom",
            {"node": "SDTurboScheduler", "steps": 2, "denoise": 1.0},
            sampler="euler_ancestral",
            cfg=1.0,
        ),
        _custom(
            "custom.turbo_img2img",
            "custom",
            {"node": "SDTurboScheduler", "steps": 1, "denoise": 0.5},
            latent="sd1.image",
            cfg=1.0,
        ),
        _custom("custom.split_high", "custom", {**BASIC, "split": 2, "half": "high"}),
        _custom(
            "custom.split_low",
            "custom",
            {**BASIC, "split": 2, "half": "low"},
            latent="sd1.image",
            add_noise=False,
        ),
        _custom(
            "custom.flip",
            "custom",
            {**BASIC, "scheduler": "normal", "flip": True},
            latent="sd1.image",
            add_noise=False,
            cfg=1.0,
        ),
        _custom(
            "custom.basic_denoise",
            "custom",
            {**BASIC, "denoise": 0.4},
            latent="sd1.image",
            sampler="dpmpp_2m",
        ),
    ]
    guiders = {
        "basic": {"node": "BasicGuider"},
        "cfg": {"node": "CFGGuider", "cfg": 3.0},
        "dual_regular": {
            "node": "DualCFGGuider",
            "cfg_conds": 4.0,
            "cfg_cond2_negative": 2.0,
            "style": "regular",
        },
        "dual_nested": {
            "node": "DualCFGGuider",
            "cfg_conds": 4.0,
            "cfg_cond2_negative": 2.0,
            "style": "nested",
        },
        "dual_cfg2_one": {
            "node": "DualCFGGuider",
            "cfg_conds": 3.0,
            "cfg_cond2_negative": 1.0,
            "style": "regular",
        },
    }
    cases += [
        _custom(f"guider.{name}", "custom_advanced", BASIC, guider=spec)
        for name, spec in guiders.items()
    ]
    cases.append(
        _custom(
            "guider.cfg_no_noise",
            "custom_advanced",
            BASIC,
            guider=guiders["cfg"],
            add_noise=False,
            latent="sd1.image",
            sampler="euler_ancestral",
        )
    )
    samplers = {"discrete_lcm": "lcm", "edm_edm": "dpmpp_2m", "discrete_v_zsnr": "euler"}
    for patch, spec in MODEL_SAMPLINGS.items():
        cases.append(
            _ks(
                f"model_sampling.{patch}",
                samplers.get(patch, "euler_ancestral"),
                model_sampling=spec,
                scheduler="karras",
                steps=5,
            )
        )
    return cases
