"""HypernetworkLoader on the tiny SD 1.x checkpoint with a tiny A1111-style hypernetwork the test
writes (torch.save of plain tensors, dicts and strings): ComfyUI's MLPs on the key and value
inputs of self- and cross-attention, equal to a hand computation; strength 0 and the plain
model unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodes.formats.hypernetwork import Settings, build_mlp, parse_hypernetwork
from nodes.loading.checkpoints import load_checkpoint
from nodes.loading.folders import use_model_dirs
from nodes.loading.hypernetwork_nodes import HypernetworkLoader, HypernetworkPatch
from nodes.loading.patching import patched
from tests import family_fixtures as ff
from tests.diffusion_fixtures import diffusion_registry

WIDTH = 32  # the tiny SD1 UNet's first level and its text width: attn1 there and every attn2
BLOCK = "down_blocks.0.attentions.0.transformer_blocks.0"
MID = "mid_block.attentions.0.transformer_blocks.0"  # 64 wide: no MLPs for it in the file


def mlp_weights(g: torch.Generator, width: int) -> dict[str, torch.Tensor]:
    """A1111's layer structure [1, 2, 1] with relu and layer norm: Linear, ReLU, LayerNorm,
    Linear, LayerNorm (the ReLU holds no weights, so the names skip index 1)."""
    return {
        "linear.0.weight": torch.randn(2 * width, width, generator=g) * 0.3,
        "linear.0.bias": torch.randn(2 * width, generator=g) * 0.1,
        "linear.2.weight": 1 + torch.randn(2 * width, generator=g) * 0.1,
        "linear.2.bias": torch.randn(2 * width, generator=g) * 0.1,
        "linear.3.weight": torch.randn(width, 2 * width, generator=g) * 0.3,
        "linear.3.bias": torch.randn(width, generator=g) * 0.1,
        "linear.4.weight": 1 + torch.randn(width, generator=g) * 0.1,
        "linear.4.bias": torch.randn(width, generator=g) * 0.1,
    }


def content(**settings: Any) -> dict[Any, Any]:
    g = torch.Generator().manual_seed(7)
    return {
        WIDTH: [mlp_weights(g, WIDTH), mlp_weights(g, WIDTH)],
        40: [mlp_weights(g, 40), mlp_weights(g, 40)],  # a width this UNet does not have
        "name": "tiny",
        "layer_structure": [1, 2, 1],
        "activation_func": "relu",
        "is_layer_norm": True,
        "use_dropout": False,
        "activate_output": False,
        "last_layer_dropout": False,
        "step": 1000,
        "sd_checkpoint_name": "tiny-sd1",
        **settings,
    }


def by_hand(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """ComfyUI's MLP for these weights: its `last layer` test counts the layer norms, so the
    final Linear gets the ReLU too."""
    h = F.relu(F.linear(x, w["linear.0.weight"], w["linear.0.bias"]))
    h = F.layer_norm(h, (h.shape[-1],), w["linear.2.weight"], w["linear.2.bias"])
    h = F.relu(F.linear(h, w["linear.3.weight"], w["linear.3.bias"]))
    return F.layer_norm(h, (h.shape[-1],), w["linear.4.weight"], w["linear.4.bias"])


def attend(attn: Any, x: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of diffusers' Attention from its three inputs, by hand."""
    q, k, v = attn.to_q(x), attn.to_k(k_in), attn.to_v(v_in)
    heads, (b, n, _) = attn.heads, q.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)

    scores = (split(q) @ split(k).transpose(-1, -2)) * (q.shape[-1] // heads) ** -0.5
    out = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, -1)
    return attn.to_out[1](attn.to_out[0](out))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hypernet_models")
    (root / "checkpoints").mkdir()
    (root / "hypernetworks").mkdir()
    (root / "checkpoints" / "sd1.safetensors").symlink_to(ff.single_file("sd1"))
    torch.save(content(), root / "hypernetworks" / "tiny.pt")
    torch.save(content(activation_func="gelu"), root / "hypernetworks" / "gelu.pt")
    use_model_dirs([root])
    return root


def settings(tmp_path: Path, root: Path, allow_pickle: bool = True) -> RunSettings:
    opts = {"models": [str(root)], "device": "cpu", "allow_pickle": allow_pickle}
    return RunSettings(output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp", options=opts)


class Ctx:
    def __init__(self, run: RunSettings) -> None:
        self.settings, self.warnings = run, []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        pass


def load(tmp_path: Path, root: Path, strength: float, name: str = "tiny.pt") -> tuple[Any, Any]:
    model = load_checkpoint("sd1.safetensors", {"models": [str(root)]})[0]
    ctx = Ctx(settings(tmp_path, root))
    node = HypernetworkLoader(model=model, hypernetwork_name=name, strength=strength)
    return model, node.invoke(ctx)


def test_the_file_reads_as_comfyui_builds_its_mlps():
    nets = parse_hypernetwork(content())
    assert set(nets) == {WIDTH, 40}
    kinds = [type(m).__name__ for m in nets[WIDTH][0]]
    assert kinds == ["Linear", "ReLU", "LayerNorm", "Linear", "ReLU", "LayerNorm"]
    x = torch.randn(2, 5, WIDTH, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(nets[WIDTH][1](x), by_hand(content()[WIDTH][1], x), atol=1e-6)
    three = {f"{i}.{p}": torch.zeros(4, 4) if p == "weight" else torch.zeros(4)
             for i in range(3) for p in ("weight", "bias")}  # fmt: skip
    dropout = Settings(activation="linear", dropout=True)
    assert [type(m).__name__ for m in build_mlp(three, dropout)] == [
        "Linear", "Dropout", "Linear", "Linear"]  # fmt: skip
    last = Settings(activation="tanh", dropout=True, last_layer_dropout=True)
    assert [type(m).__name__ for m in build_mlp(three, last)] == [
        "Linear", "Tanh", "Dropout", "Linear", "Tanh", "Dropout", "Linear"]  # fmt: skip


@pytest.mark.parametrize("strength", [1.0, -0.6])
def test_attention_keys_and_values_go_through_the_mlps(tmp_path, root, strength):
    model, out = load(tmp_path, root, strength)
    (patch,) = out.patches
    assert isinstance(patch, HypernetworkPatch) and out.unet is model.unet
    k_mlp, v_mlp = content()[WIDTH]
    g = torch.Generator().manual_seed(11)
    x, text = torch.randn(1, 16, WIDTH, generator=g), torch.randn(1, 77, WIDTH, generator=g)
    wide = torch.randn(1, 4, 64, generator=g)
    attn1 = model.unet.get_submodule(f"{BLOCK}.attn1")
    attn2 = model.unet.get_submodule(f"{BLOCK}.attn2")
    mid = model.unet.get_submodule(f"{MID}.attn1")
    with torch.no_grad():
        cross = attend(attn2, x, text + by_hand(k_mlp, text) * strength,
                       text + by_hand(v_mlp, text) * strength)  # fmt: skip
        self_ = attend(attn1, x, x + by_hand(k_mlp, x) * strength, x + by_hand(v_mlp, x) * strength)
        plain = [attn2(x, encoder_hidden_states=text), attn1(x), mid(wide)]
        with patched(out.unet, out.patches):
            got = [attn2(x, encoder_hidden_states=text), attn1(x), mid(wide)]
        after = [attn2(x, encoder_hidden_states=text), attn1(x), mid(wide)]
    assert torch.allclose(got[0], cross, atol=1e-5)
    assert torch.allclose(got[1], self_, atol=1e-5)
    assert (got[0] - plain[0]).abs().max() > 1e-2 and (got[1] - plain[1]).abs().max() > 1e-2
    assert torch.equal(got[2], plain[2])  # 64 wide: the file has no MLPs of that width
    assert all(torch.equal(a, b) for a, b in zip(after, plain, strict=True))  # hooks removed
    assert not attn2.to_k._forward_pre_hooks and not attn1.to_v._forward_pre_hooks


def unet_out(model: Any, patches: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    latent, text = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, WIDTH, generator=g)
    with torch.no_grad(), patched(model.unet, patches) as unet:
        return unet(latent, torch.tensor([500]), encoder_hidden_states=text).sample


def test_strength_zero_is_the_plain_model_and_the_plain_model_stays_plain(tmp_path, root):
    model, zero = load(tmp_path, root, 0.0)
    _, full = load(tmp_path, root, 1.0)
    before = unet_out(model, model.patches)
    assert torch.equal(unet_out(zero, zero.patches), before)
    hyper = unet_out(full, full.patches)
    assert (hyper - before).abs().max() > 1e-3
    assert torch.equal(unet_out(model, model.patches), before)  # the next run without it


def dropout_content(use_dropout: bool) -> dict[Any, Any]:
    """A1111's [1, 2, 2, 1], linear activation, dropout after the first layer."""
    g = torch.Generator().manual_seed(9)
    sizes = [(2 * WIDTH, WIDTH), (2 * WIDTH, 2 * WIDTH), (WIDTH, 2 * WIDTH)]

    def mlp() -> dict[str, torch.Tensor]:
        out = {}
        for i, (o, n) in enumerate(sizes):
            out[f"linear.{i}.weight"] = torch.randn(o, n, generator=g) * 0.3
            out[f"linear.{i}.bias"] = torch.randn(o, generator=g) * 0.1
        return out

    return {WIDTH: [mlp(), mlp()], "activation_func": "linear", "use_dropout": use_dropout,
            "layer_structure": [1, 2, 2, 1], "dropout_structure": [0, 0.3, 0, 0]}  # fmt: skip


def test_dropout_is_active_as_in_comfyui_and_repeats_run_to_run(tmp_path, root):
    torch.save(dropout_content(True), root / "hypernetworks" / "dropout.pt")
    torch.save(dropout_content(False), root / "hypernetworks" / "no_dropout.pt")
    nets = parse_hypernetwork(dropout_content(True))
    assert [type(m).__name__ for m in nets[WIDTH][0]] == ["Linear", "Dropout", "Linear", "Linear"]
    _, out = load(tmp_path, root, 1.0, "dropout.pt")
    _, without = load(tmp_path, root, 1.0, "no_dropout.pt")
    first, second = unet_out(out, out.patches), unet_out(out, out.patches)
    assert torch.equal(first, second)  # its masks are seeded afresh each run
    assert (first - unet_out(without, without.patches)).abs().max() > 1e-3  # dropout is on


def test_the_loader_runs_in_a_workflow_and_pickles_need_the_opt_in(tmp_path, root):
    wf = {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "sd1.safetensors"}},
        "hn": {"class_type": "HypernetworkLoader",
               "inputs": {"model": ["ckpt", 0], "hypernetwork_name": "tiny.pt", "strength": 0.5}},
        "show": {"class_type": "ShowValue", "inputs": {"value": ["hn", 0]}},
    }  # fmt: skip
    executor = Executor(diffusion_registry())
    refused = executor.run(wf, settings(tmp_path, root, allow_pickle=False))
    assert not refused.ok and "allow_pickle" in str(refused.error)
    result = executor.run(wf, settings(tmp_path, root))
    assert result.ok, result.error
    (model,) = result.outputs["hn"]
    (patch,) = model.patches
    assert patch.strength == 0.5 and set(patch.nets) == {WIDTH, 40}


def test_an_unknown_activation_leaves_the_model_as_comfyui_does(tmp_path, root):
    model = load_checkpoint("sd1.safetensors", {"models": [str(root)]})[0]
    ctx = Ctx(settings(tmp_path, root))
    node = HypernetworkLoader(model=model, hypernetwork_name="gelu.pt", strength=1.0)
    assert node.invoke(ctx) is model
    assert "unsupported hypernetwork activation 'gelu'" in ctx.warnings[0]


def test_ksampler_samples_through_the_hypernetwork(tmp_path, root):
    from nodes.sampling.ksampler import KSampler
    from nodes.values import Conditioning, Latent
    from tests import comfy_cases as C

    data = C.inputs()
    pos, neg = Conditioning.of(data["sd1.cond"]), Conditioning.of(data["sd1.uncond"])

    def sample(model: Any) -> torch.Tensor:
        node = KSampler(model=model, seed=1, steps=3, cfg=5.0, sampler_name="euler",
                        scheduler="normal", positive=pos, negative=neg,
                        latent_image=Latent(C.empty()), denoise=1.0)  # fmt: skip
        return node.invoke(Ctx(settings(tmp_path, root))).samples

    model, zero = load(tmp_path, root, 0.0)
    _, full = load(tmp_path, root, 1.0)
    plain = sample(model)
    assert torch.equal(sample(zero), plain)
    assert (sample(full) - plain).abs().max() > 1e-3
    assert torch.equal(sample(model), plain)
