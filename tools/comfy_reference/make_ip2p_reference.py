"""Reference numbers from ComfyUI itself for tests/test_instruct_pix2pix.py.

Run by hand with ComfyUI importable (run_with_comfyui.sh, as make_reference.py); never by the
tests. ComfyUI's own InstructPixToPixConditioning node and KSampler run on ComfyUI's
SD15_instructpix2pix model class whose diffusion model is the tests' tiny 8-channel UNet (the
same diffusers module nodegraph loads from tests.family_fixtures' "sd1_ip2p" file). ComfyUI's
VAE class cannot hold the tiny VAE (it fixes the real VAE's widths), so the node gets a VAE
answering `encode` as ComfyUI's does: pixels * 2 - 1 through the same tiny VAE, the mode of the
posterior, unscaled (ComfyUI's DiagonalGaussianRegularizer without sampling).

Writes tests/data/comfy_reference/{ip2p.json, ip2p.safetensors}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import ip2p_cases as P  # noqa: E402
from tools.comfy_reference import family_harness as H  # noqa: E402


class EncodeOnly:
    """A stand-in for ComfyUI's VAE: the node only calls `encode(pixels)`."""

    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae = vae
        self.seen: list[tuple[int, ...]] = []

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(pixels.shape))
        x = pixels[..., :3].movedim(-1, 1) * 2.0 - 1.0
        return self.vae.encode(x).latent_dist.mode()


def comfy_ip2p_model(unet: torch.nn.Module) -> Any:
    """ComfyUI's SD 1.5 InstructPix2Pix model around the tiny UNet, in a ModelPatcher."""
    import comfy.model_base as mb
    import comfy.model_patcher as mp
    import comfy.supported_models as sm

    from tools.comfy_reference.make_reference import DiffusersUNet

    config = sm.SD15_instructpix2pix({"disable_unet_model_creation": True})
    model = mb.SD15_instructpix2pix(config, device=torch.device("cpu"))
    model.diffusion_model = DiffusersUNet(unet)
    cpu = torch.device("cpu")
    return mp.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def main() -> None:
    model_, _, vae_ = H.tiny_checkpoint(P.FAMILY)  # nodegraph's modules, before ComfyUI loads
    inputs = P.inputs()
    comfy_nodes = H.comfy_nodes()
    from comfy_extras.nodes_ip2p import InstructPixToPixConditioning

    model = comfy_ip2p_model(model_.unet)
    vae = EncodeOnly(vae_.vae)
    tensors = dict(inputs)
    cases = []
    for case in P.CASES:
        positive = [[inputs["cond"], {}]]
        negative = [[inputs["uncond"], {}]]
        vae.seen.clear()
        pos, neg, latent = InstructPixToPixConditioning.execute(
            positive=positive, negative=negative, pixels=inputs[case["pixels"]], vae=vae
        ).result
        tensors[f"{case['name']}.concat"] = pos[0][1]["concat_latent_image"]
        tensors[f"{case['name']}.latent"] = latent["samples"]
        if case.get("plain_negative"):
            neg = negative
        source = {"samples": latent["samples"]}
        if "latent" in case:
            source = {"samples": torch.zeros(case["latent"])}
        if "noise_mask" in case:
            source["noise_mask"] = inputs[case["noise_mask"]]
        out = comfy_nodes.KSampler().sample(
            model=model, positive=pos, negative=neg, latent_image=source, **case["inputs"]
        )
        tensors[case["name"]] = out[0]["samples"]
        cases.append({**case, "encoded_shape": list(vae.seen[0])})
        print(case["name"], vae.seen, float(out[0]["samples"].abs().max()))
    H.write("ip2p", tensors, cases=cases)


if __name__ == "__main__":
    main()
