"""Reference numbers from ComfyUI itself for tests/test_unclip.py.

Run by hand with ComfyUI importable (run_with_comfyui.sh, as make_reference.py); never by the
tests. ComfyUI's own unCLIPConditioning node and KSampler run on ComfyUI's SD21UNCLIP model
class (v-prediction, its CLIPEmbeddingNoiseAugmentation sized to the tiny image embedding)
whose diffusion model is the tests' tiny unCLIP UNet: the same diffusers module nodegraph loads
from tests.family_fixtures' "sd2_unclip" file, given ComfyUI's adm `y` as its class labels.
The image embeddings are the cases' own tensors (ComfyUI's node only reads `image_embeds`).
SDXL's pooled text from pictures is ComfyUI's sdxl_pooled: unclip_adm(...)[:, :1280] with its
SDXL noise augmentor, 1280 being bigG's pooled width; here the tiny SDXL's (64) in its place.

Writes tests/data/comfy_reference/{unclip.json, unclip.safetensors}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import unclip_cases as U  # noqa: E402
from tools.comfy_reference import family_harness as H  # noqa: E402
from tools.comfy_reference.make_reference import DiffusersUNet  # noqa: E402


class UnclipUNet(DiffusersUNet):
    """A diffusers unCLIP UNet answering ComfyUI's diffusion-model call (`y`: class labels)."""

    def forward(self, x, timesteps, context=None, y=None, control=None, **kw):
        return self.unet(
            x, timesteps, encoder_hidden_states=context, class_labels=y, return_dict=False
        )[0]


def comfy_unclip_model(unet: torch.nn.Module) -> Any:
    """ComfyUI's SD 2.1 unCLIP model around the tiny UNet, in a ModelPatcher."""
    import comfy.model_base as mb
    import comfy.model_patcher as mp
    import comfy.supported_models as sm

    config = sm.SD21UnclipH({"disable_unet_model_creation": True})
    config.unet_config["adm_in_channels"] = 2 * U.EMBED
    noise_aug = {**config.noise_aug_config, "timestep_dim": U.EMBED}
    model = mb.SD21UNCLIP(config, noise_aug, model_type=mb.ModelType.V_PREDICTION,
                          device=torch.device("cpu"))  # fmt: skip
    model.diffusion_model = UnclipUNet(unet)
    cpu = torch.device("cpu")
    return mp.ModelPatcher(model, load_device=cpu, offload_device=cpu), model


def conditioning(node: Any, embeds: torch.Tensor, entries: list[list[Any]], inputs: dict) -> list:
    cond = [[embeds, {}]]
    for name, strength, augmentation in entries:
        output = SimpleNamespace(image_embeds=inputs[name])
        cond = node.apply_adm(cond, output, strength, augmentation)[0]
    return cond


def main() -> None:
    model_, _, _ = H.tiny_checkpoint(U.FAMILY)  # nodegraph's modules, before ComfyUI loads
    inputs = U.inputs()
    comfy_nodes = H.comfy_nodes()
    patcher, base = comfy_unclip_model(model_.unet)
    node = comfy_nodes.unCLIPConditioning()
    tensors = dict(inputs)
    for case in U.CASES:
        positive = conditioning(node, inputs["cond"], case["positive"], inputs)
        negative = conditioning(node, inputs["uncond"], case.get("negative", []), inputs)
        for role, cond in (("positive", positive), ("negative", negative)):
            adm = base.encode_adm(
                device=torch.device("cpu"), seed=case["inputs"]["seed"], **cond[0][1]
            )
            tensors[f"{case['name']}.{role}_adm"] = adm
        shape = case.get("latent", [1, 4, 8, 8])
        source = inputs["image"] if shape == "image" else torch.zeros(shape)
        out = comfy_nodes.KSampler().sample(
            model=patcher, positive=positive, negative=negative,
            latent_image={"samples": source}, **case["inputs"],
        )  # fmt: skip
        tensors[case["name"]] = out[0]["samples"]
        print(case["name"], float(out[0]["samples"].abs().max()))
    import comfy.model_base as mb
    from comfy.ldm.modules.encoders.noise_aug_modules import CLIPEmbeddingNoiseAugmentation

    augmentor = CLIPEmbeddingNoiseAugmentation(
        noise_schedule_config={"timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"},
        timestep_dim=U.SDXL_WIDTH,
    )
    for case in U.SDXL_CASES:
        cond = conditioning(node, inputs["cond"], case["entries"], inputs)[0][1]
        adm = mb.unclip_adm(cond["unclip_conditioning"], torch.device("cpu"), augmentor,
                            seed=case["seed"] - 10)  # fmt: skip
        tensors[case["name"]] = adm[:, : U.SDXL_WIDTH]
    H.write("unclip", tensors, cases=U.CASES, sdxl_cases=U.SDXL_CASES)


if __name__ == "__main__":
    main()
