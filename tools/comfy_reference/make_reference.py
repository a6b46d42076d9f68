"""Reference numbers from ComfyUI itself for tests/test_comfy_sampling.py.

Run by hand, with ComfyUI importable (see README.md here); never by the tests. ComfyUI's own
node classes (KSampler, KSamplerAdvanced, SamplerCustom, SamplerCustomAdvanced, the schedulers,
guiders and ModelSampling nodes) sample the tests' tiny random-weight SD 1.x (eps) and SD 2.x
(v-prediction) UNets, wrapped as ComfyUI diffusion models, from fixed conditioning tensors. The
UNet forward is the same diffusers module on both sides, so what is compared is the sampling.

Writes tests/data/comfy_reference/{manifest.json, tensors.safetensors}.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "comfy_reference"
sys.path.insert(0, str(ROOT))

from tests import comfy_cases as C  # noqa: E402
from tools.comfy_reference.toy import comfy_modules  # noqa: E402


def comfy_commit() -> str:
    """The ComfyUI commit on sys.path: $COMFYUI_COMMIT, else its git checkout's HEAD, else
    its version file."""
    import comfy.samplers

    if os.environ.get("COMFYUI_COMMIT"):
        return os.environ["COMFYUI_COMMIT"]
    folder = Path(comfy.samplers.__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        version = (folder / "comfyui_version.py").read_text()
        return version.strip().splitlines()[-1]


class DiffusersUNet(torch.nn.Module):
    """A diffusers UNet answering ComfyUI's diffusion-model call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kw):
        return self.unet(x, timesteps, encoder_hidden_states=context, return_dict=False)[0]


def comfy_model(family: str, unet: torch.nn.Module) -> Any:
    """A ComfyUI ModelPatcher around the tests' tiny UNet of `family`."""
    import comfy.model_base as mb
    import comfy.model_patcher as mp
    import comfy.supported_models as sm

    config = (sm.SD20 if family.startswith("sd2") else sm.SD15)(
        {"disable_unet_model_creation": True}
    )
    kind = mb.ModelType.V_PREDICTION if family == "sd2_v" else mb.ModelType.EPS
    model = mb.BaseModel(config, model_type=kind, device=torch.device("cpu"))
    model.diffusion_model = DiffusersUNet(unet)
    if unet.config.in_channels > 4:  # a 9-channel inpainting UNet: mask and masked image
        model.set_inpaint()
    cpu = torch.device("cpu")
    return mp.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def main() -> None:
    torch.set_num_threads(1)  # the tests compare on one thread: the same float reductions
    inputs = C.inputs()
    unets = {family: C.tiny_model(family).unet for family in C.FAMILIES}
    comfy_modules()
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs
    import comfy_extras.nodes_model_advanced as nma

    comfy_nodes = comfy_nodes_module()
    models = {family: comfy_model(family, unet) for family, unet in unets.items()}
    tensors: dict[str, torch.Tensor] = dict(inputs)
    names = {"sampler_names": list(comfy.samplers.SAMPLER_NAMES),
             "scheduler_names": list(comfy.samplers.SCHEDULER_NAMES)}  # fmt: skip
    manifest: dict[str, Any] = {"comfyui_commit": comfy_commit(), **names, "cases": []}
    if names["sampler_names"] != C.SAMPLER_NAMES:
        print("note: ComfyUI's sampler list differs from nodegraph's", file=sys.stderr)

    def patched(case: dict[str, Any]) -> Any:
        model = models[case["family"]]
        extra = case.get("model_sampling")
        if extra is None:
            return model
        if extra["node"] == "discrete":
            return nma.ModelSamplingDiscrete().patch(model, extra["sampling"], extra["zsnr"])[0]
        edm = nma.ModelSamplingContinuousEDM()
        return edm.patch(model, extra["sampling"], extra["sigma_max"], extra["sigma_min"])[0]

    for case in C.sigma_cases():
        ms = patched(case).get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(ms, case["inputs"]["scheduler"],
                                                 case["inputs"]["steps"])  # fmt: skip
        tensors[case["name"]] = sigmas.float()
        manifest["cases"].append(case)
    for case in C.sampling_cases():
        model, kind = patched(case), case["kind"]
        cond = functools.partial(comfy_cond, inputs, case["family"])
        source = case["latent"]
        image = tensors[source] if source != "empty" else C.empty(case.get("batch", 1))
        given = {"positive": cond("cond"), "negative": cond("uncond"),
                 "latent_image": {"samples": image.clone()}}  # fmt: skip
        if "prompts" in case:
            given.update({slot: comfy_prompt(comfy_nodes, inputs, cond, spec)
                          for slot, spec in case["prompts"].items()})  # fmt: skip
        if "noise_mask" in case:
            given["latent_image"]["noise_mask"] = inputs[case["noise_mask"]]
        if case.get("concat"):  # InpaintModelConditioning's additions to both prompts
            extra = {"concat_latent_image": inputs[f"{case['family']}.masked"],
                     "concat_mask": inputs[case["noise_mask"]]}  # fmt: skip
            for key in ("positive", "negative"):
                given[key] = [[t, {**o, **extra}] for t, o in given[key]]
        if kind in ("KSampler", "KSamplerAdvanced"):
            out = getattr(comfy_nodes, kind)().sample(model=model, **given, **case["inputs"])
            tensors[case["name"]] = out[0]["samples"]
        else:
            sampler = custom_sampler(ncs, model, case["sampler"])
            sigmas = custom_sigmas(ncs, model, case["sigmas"])
            parts = {"sampler": sampler, "sigmas": sigmas, "latent_image": given["latent_image"]}
            if kind == "SamplerCustom":
                node = ncs.SamplerCustom
                parts.update(model=model, positive=given["positive"], **case["inputs"],
                             negative=given["negative"])  # fmt: skip
            else:
                node = ncs.SamplerCustomAdvanced
                seed = case["noise"]
                parts["guider"] = custom_guider(ncs, model, case["guider"], cond)
                parts["noise"] = (ncs.DisableNoise.execute() if seed is None
                                  else ncs.RandomNoise.execute(seed)).result[0]  # fmt: skip
            output, denoised = node.execute(**parts).result
            tensors[case["name"]] = output["samples"]
            tensors[case["name"] + ".denoised"] = denoised["samples"]
        manifest["cases"].append(case)
        print(case["name"], float(tensors[case["name"]].abs().max()))

    for case in C.latent_cases():
        args = {k: {"samples": inputs[v].clone()} for k, v in case["latents"].items()}
        args.update({k: inputs[v] if k == "mask" else v for k, v in case["inputs"].items()})
        out = comfy_latent_op(comfy_nodes, case["node"], args)
        tensors[case["name"]] = out["samples"]
        if "batch_index" in out:
            tensors[case["name"] + ".batch_index"] = torch.tensor(out["batch_index"])
        manifest["cases"].append(case)

    for case in C.conditioning_cases():
        args = {k: [[inputs[t], {} if p is None else {"pooled_output": inputs[p]}]]
                for k, (t, p) in case["conds"].items()}  # fmt: skip
        cls = getattr(comfy_nodes, case["node"])
        ((embeds, extra),) = getattr(cls(), cls.FUNCTION)(**args, **case["inputs"])[0]
        tensors[case["name"]] = embeds
        if extra.get("pooled_output") is not None:
            tensors[case["name"] + ".pooled"] = extra["pooled_output"]
        manifest["cases"].append(case)

    OUT.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.float().clone().contiguous() for k, v in tensors.items()}
    save_file(contiguous, OUT / "tensors.safetensors")
    lines = ",\n".join(json.dumps(case) for case in manifest["cases"])
    head = json.dumps({k: v for k, v in manifest.items() if k != "cases"})[:-1]
    (OUT / "manifest.json").write_text(f'{head}, "cases": [\n{lines}\n]}}\n')
    print(f"{len(manifest['cases'])} cases written to {OUT}")


def comfy_latent_op(comfy_nodes: Any, node: str, args: dict[str, Any]) -> dict[str, Any]:
    """One of ComfyUI's latent nodes run on `args` (nodes.py's or comfy_extras')."""
    ours = sys.modules["nodes"]
    sys.modules["nodes"] = comfy_nodes  # these modules import ComfyUI's nodes.py as `nodes`
    try:
        # nodes_post_processing first: it and nodes_latent import each other
        importlib.import_module("comfy_extras.nodes_post_processing")
        nl = importlib.import_module("comfy_extras.nodes_latent")
        nm = importlib.import_module("comfy_extras.nodes_mask")
    finally:
        sys.modules["nodes"] = ours

    if hasattr(comfy_nodes, node) and hasattr(getattr(comfy_nodes, node), "FUNCTION"):
        cls = getattr(comfy_nodes, node)
        return getattr(cls(), cls.FUNCTION)(**args)[0]
    cls = getattr(nm, node, None) or getattr(nl, node)
    return cls.execute(**args).result[0]


def comfy_cond(inputs: dict[str, torch.Tensor], family: str, name: str) -> list:
    """A conditioning tensor as ComfyUI's CONDITIONING: [[tensor, options]]."""
    return [[inputs[f"{family}.{name}"], {}]]


def comfy_prompt(comfy_nodes: Any, inputs: dict[str, torch.Tensor], cond: Any, spec: list) -> list:
    """A case's prompt through ComfyUI's conditioning nodes and ConditioningCombine."""
    out = None
    for text, chain in spec:
        c = cond(text)
        for node, given in chain:
            cls = getattr(comfy_nodes, node)
            args = {k: inputs[v] if k == "mask" else v for k, v in given.items()}
            c = getattr(cls(), cls.FUNCTION)(conditioning=c, **args)[0]
        out = c if out is None else comfy_nodes.ConditioningCombine().combine(out, c)[0]
    return out


def comfy_nodes_module() -> Any:
    """ComfyUI's nodes.py, loaded under another name (nodegraph has a `nodes` package)."""
    import importlib.util

    import comfy.samplers

    path = Path(comfy.samplers.__file__).resolve().parents[1] / "nodes.py"
    spec = importlib.util.spec_from_file_location("comfyui_nodes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def custom_sampler(ncs: Any, model: Any, spec: str | dict[str, Any]) -> Any:
    """The SAMPLER of a case: KSamplerSelect by name, or a sampler node with its options."""
    if isinstance(spec, str):
        return ncs.KSamplerSelect.execute(spec).result[0]
    fields = {k: v for k, v in spec.items() if k != "node"}
    if spec["node"] in C.SAMPLERS_FROM_MODEL:
        fields["model"] = model
    return getattr(ncs, spec["node"]).execute(**fields).result[0]


def custom_sigmas(ncs: Any, model: Any, spec: dict[str, Any]) -> torch.Tensor:
    """The SIGMAS of a custom-sampling case, through ComfyUI's scheduler and sigma nodes."""
    fields = {k: v for k, v in spec.items() if k not in C.SIGMA_STEPS}
    node = getattr(ncs, fields.pop("node"))
    if spec["node"] in C.SIGMAS_FROM_MODEL:
        fields["model"] = model
    sigmas = node.execute(**fields).result[0]
    if "split" in spec:
        high, low = ncs.SplitSigmas.execute(sigmas, spec["split"]).result
        sigmas = high if spec["half"] == "high" else low
    if spec.get("flip"):
        sigmas = ncs.FlipSigmas.execute(sigmas.clone()).result[0]
    return sigmas


def custom_guider(ncs: Any, model: Any, spec: dict[str, Any], cond: Any) -> Any:
    """The GUIDER of a SamplerCustomAdvanced case, through ComfyUI's guider nodes."""
    fields = {k: v for k, v in spec.items() if k != "node"}
    prompts = {name: cond(slot) for name, slot in C.GUIDER_PROMPTS[spec["node"]].items()}
    return getattr(ncs, spec["node"]).execute(model=model, **prompts, **fields).result[0]


if __name__ == "__main__":
    main()
