"""Reference numbers from ComfyUI itself for tests/test_gligen.py.

Run by hand with ComfyUI importable (run_with_comfyui.sh, as make_reference.py); never by the
tests. ComfyUI's own GLIGEN loader (comfy.gligen.load_gligen), GLIGENTextBoxApply node and
KSampler run the tests' tiny GLIGEN model (tests.gligen_cases) on ComfyUI's SD 1.5 model class
whose diffusion model is the tests' tiny SD 1.x UNet. Three stand-ins, each only what the code
under test touches:
- the UNet is diffusers': ComfyUI's `middle_patch` (the GLIGEN layer of the current
  `transformer_index`) is called where ComfyUI's transformer block calls it, after each block's
  self-attention, through diffusers' own fuser hook;
- the phrase's pooled text is the case's tensor (a CLIP answering tokenize / encode_from_tokens);
- ComfyUI's loader tells SD 1.x GLIGEN files by a text width of 768 (then 8 heads); the tiny
  model's width is 32, so its layers are built with that SD 1.x rule.

Writes tests/data/comfy_reference/{gligen.json, gligen.safetensors}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nodes.sampling.gligen import attention_blocks  # noqa: E402  (before ComfyUI's `nodes`)
from tests import gligen_cases as G  # noqa: E402
from tools.comfy_reference import family_harness as H  # noqa: E402
from tools.comfy_reference.make_reference import DiffusersUNet  # noqa: E402


class _Patch(torch.nn.Module):
    """A diffusers fuser slot calling ComfyUI's middle patch for one transformer index."""

    def __init__(self, patches: list, index: int) -> None:
        super().__init__()
        self.patches, self.index = patches, index

    def forward(self, x: torch.Tensor, objs: Any) -> torch.Tensor:
        for patch in self.patches:
            x = patch(x, {"transformer_index": self.index})
        return x


class _NoTokens(torch.nn.Module):
    def forward(self, **kwargs: Any) -> None:
        return None


class PatchedUNet(DiffusersUNet):
    """A diffusers UNet answering ComfyUI's diffusion-model call, with its middle patches."""

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kw):
        patches = (transformer_options or {}).get("patches", {}).get("middle_patch")
        if not patches:
            return self.unet(x, timesteps, encoder_hidden_states=context, return_dict=False)[0]
        blocks = attention_blocks(self.unet)
        self.unet.position_net = _NoTokens()
        for i, block in enumerate(blocks):
            for t in block.transformer_blocks:
                t.fuser = _Patch(patches, i)
        try:
            kwargs = {"cross_attention_kwargs": {"gligen": {}}}
            return self.unet(x, timesteps, encoder_hidden_states=context, return_dict=False,
                             **kwargs)[0]  # fmt: skip
        finally:
            del self.unet.position_net
            for block in blocks:
                for t in block.transformer_blocks:
                    del t.fuser


class PooledClip:
    """A CLIP whose phrases' pooled texts are given tensors (by phrase)."""

    def __init__(self, pooled: dict[str, torch.Tensor]) -> None:
        self.pooled = pooled

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens(self, tokens: str, return_pooled: Any = False) -> tuple:
        assert return_pooled == "unprojected"
        return torch.zeros(1, 77, G.KEY_DIM), self.pooled[tokens]


def comfy_gligen(state: dict[str, torch.Tensor]) -> Any:
    """comfy.gligen.load_gligen on the tiny file, its layers built with SD 1.x's 8 heads."""
    import comfy.gligen as cg
    import comfy.model_patcher as mp

    original = cg.GatedSelfAttentionDense

    class SD1Heads(original):
        def __init__(self, query_dim, context_dim, n_heads, d_head):
            super().__init__(query_dim, context_dim, 8, query_dim // 8)

    cg.GatedSelfAttentionDense = SD1Heads
    try:
        model = cg.load_gligen(state)
    finally:
        cg.GatedSelfAttentionDense = original
    cpu = torch.device("cpu")
    return mp.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def comfy_sd15(unet: torch.nn.Module) -> Any:
    import comfy.model_base as mb
    import comfy.model_patcher as mp
    import comfy.supported_models as sm

    config = sm.SD15({"disable_unet_model_creation": True})
    model = mb.BaseModel(config, model_type=mb.ModelType.EPS, device=torch.device("cpu"))
    model.diffusion_model = PatchedUNet(unet)
    cpu = torch.device("cpu")
    return mp.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def main() -> None:
    model_ = H.tiny_checkpoint(G.FAMILY)[0]  # nodegraph's modules, before ComfyUI loads
    inputs = G.inputs()
    state = G.gligen_state(model_.unet)
    comfy_nodes = H.comfy_nodes()
    gligen, model = comfy_gligen(state), comfy_sd15(model_.unet)
    clip = PooledClip({k: inputs[k] for k in ("cat", "dog")})
    node = comfy_nodes.GLIGENTextBoxApply()

    def boxed(base: str, boxes: list[list[Any]]) -> list:
        cond = [[inputs[base], {}]]
        for text, width, height, x, y in boxes:
            cond = node.append(cond, clip, gligen, text, width, height, x, y)[0]
        return cond

    tensors = dict(inputs)
    for case in G.CASES:
        positive = boxed("cond", case["positive"])
        if "positive2" in case:
            positive = positive + boxed("cond2", case["positive2"])
        negative = boxed("uncond", case.get("negative", []))
        latent = {"samples": torch.zeros(case.get("latent", [1, 4, 8, 8]))}
        out = comfy_nodes.KSampler().sample(
            model=model, positive=positive, negative=negative, latent_image=latent,
            **case["inputs"],
        )  # fmt: skip
        tensors[case["name"]] = out[0]["samples"]
        print(case["name"], float(out[0]["samples"].abs().max()))
    tensors.update({f"file.{k}": v for k, v in state.items()})
    H.write("gligen", tensors, cases=G.CASES)


if __name__ == "__main__":
    main()
