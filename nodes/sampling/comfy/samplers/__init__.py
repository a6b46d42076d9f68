"""Every sampler name of ComfyUI's KSampler list, each to its function (SamplerSpec).

The algorithms live by kind: Euler / Heun / DPM2 (euler), linear multistep and its kin
(multistep), DPM-Solver++ and the SDE samplers (dpmpp), one-step-at-a-time stochastic ones
(stepwise), DPM-Solver fast / adaptive (dpm_solver), UniPC (unipc), DEIS (deis), SA-Solver
(sa_solver); `steps` holds what they share (the step loop, the model call that reports the
step, Euler / CFG++ moves, half-log-SNR math).
"""

from __future__ import annotations

from ..sampler_api import SamplerSpec
from . import deis, dpm_solver, dpmpp, euler, multistep, sa_solver, stepwise, unipc

SAMPLER_NAMES = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde",
    "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece",
    "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip
"""ComfyUI's KSampler sampler list (0.8.0), in its order."""

_ALL: dict[str, SamplerSpec] = {}
for _module in (euler, multistep, dpmpp, stepwise, dpm_solver, unipc, deis, sa_solver):
    _ALL.update(_module.SAMPLERS)
if "euler" in _ALL:  # ComfyUI's "ddim" is Euler (with random noise for inpainting's re-noise)
    euler_spec = _ALL["euler"]
    _ALL["ddim"] = SamplerSpec(euler_spec.fn, options=euler_spec.options, random_inpaint_noise=True)
SAMPLERS: dict[str, SamplerSpec] = {name: _ALL[name] for name in SAMPLER_NAMES if name in _ALL}
"""The names nodegraph runs, in ComfyUI's order (a name missing here is refused at validation)."""
