"""LoRA-family files: parsing, key aliases, the maths against hand merges, in-place patching."""

from __future__ import annotations

import copy
import logging
import threading

import pytest
import torch
from torch import nn

from nodes.formats.lora import lora_aliases, match_lora, parse_lora
from nodes.loading.patching import Patch, patched

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
# A few diffusers <-> LDM (original) UNet names for the tiny UNet below, written by hand.
ORIGINAL = {
    "down_blocks.0.attentions.0.proj_in.weight": "input_blocks.1.1.proj_in.weight",
    f"{ATTN}.to_q.weight": "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
    f"{ATTN}.to_out.0.weight": "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight",
    "down_blocks.0.resnets.0.conv1.weight": "input_blocks.1.0.in_layers.2.weight",
}


class Small(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8, dtype=dtype)
        self.conv = nn.Conv2d(4, 6, 3, dtype=dtype)


@pytest.fixture(autouse=True)
def seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=32, cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()


@pytest.fixture(scope="module")
def clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(2)
    config = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, vocab_size=1000, bos_token_id=0,
                            eos_token_id=2, pad_token_id=1)
    return CLIPTextModel(config).eval()


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _patch(model, state, prefixes, strength=1.0, original=None) -> Patch:
    aliases = lora_aliases([n for n, _ in model.named_parameters()], prefixes, original)
    matched, unmatched = match_lora(parse_lora(state), aliases)
    assert not unmatched
    return Patch(matched, strength, ("test", strength))


def _patched_weights(model, state, prefixes, strength=1.0, original=None):
    with patched(model, [_patch(model, state, prefixes, strength, original)]):
        return _weights(model)


def _kohya(name: str, down, up, alpha=None) -> dict[str, torch.Tensor]:
    state = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
    if alpha is not None:
        state[f"{name}.alpha"] = torch.tensor(float(alpha))
    return state


def _lora_delta(down, up, alpha, shape) -> torch.Tensor:
    rank = down.shape[0]
    scale = 1.0 if alpha is None else alpha / rank
    return scale * (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)).reshape(shape)


# (module, down shape, up shape, alpha): linear, 3x3 LoCon, a 2-D LoRA on a 1x1 conv, a 1x1 conv
# LoRA on a linear layer, and one without alpha.
UNET_LORAS = [
    (f"{ATTN}.to_q", (4, 32), (32, 4), 2.0),
    ("down_blocks.0.resnets.0.conv1", (4, 32, 3, 3), (32, 4, 1, 1), 8.0),
    ("down_blocks.0.attentions.0.proj_in", (4, 32), (32, 4), 1.0),
    (f"{ATTN}.to_k", (2, 32, 1, 1), (32, 2, 1, 1), 1.0),
    (f"{ATTN}.to_out.0", (4, 32), (32, 4), None),
]


def _unet_state(spell) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    state: dict[str, torch.Tensor] = {}
    for module, down_shape, up_shape, alpha in UNET_LORAS:
        state.update(spell(module, torch.randn(down_shape), torch.randn(up_shape), alpha))
    return state


def _kohya_spelling(module, down, up, alpha):
    return _kohya(f"lora_unet_{module.replace('.', '_')}", down, up, alpha)


def test_kohya_lora_equals_hand_merge_on_linear_and_conv(unet):
    before = _weights(unet)
    state = _unet_state(_kohya_spelling)
    after = _patched_weights(unet, state, ["lora_unet"], strength=0.7)
    for module, *_ in UNET_LORAS:
        prefix = f"lora_unet_{module.replace('.', '_')}"
        alpha = state.get(f"{prefix}.alpha")
        weight = before[f"{module}.weight"]
        expected = weight + 0.7 * _lora_delta(state[f"{prefix}.lora_down.weight"],
                                              state[f"{prefix}.lora_up.weight"],
                                              None if alpha is None else alpha.item(),
                                              weight.shape)
        torch.testing.assert_close(after[f"{module}.weight"], expected, atol=1e-6, rtol=0)
    touched = {f"{module}.weight" for module, *_ in UNET_LORAS}
    assert all(torch.equal(after[k], v) for k, v in before.items() if k not in touched)
    assert all(torch.equal(t, before[k]) for k, t in unet.state_dict().items())


def test_locon_tucker_core_equals_the_three_convs():
    down, mid, up = torch.randn(3, 4, 1, 1), torch.randn(3, 3, 3, 3), torch.randn(6, 3, 1, 1)
    state = _kohya("lora_unet_conv", down, up, 1.5)
    state["lora_unet_conv.lora_mid.weight"] = mid
    (adapter,) = parse_lora(state).values()
    delta = adapter.delta((6, 4, 3, 3))
    x = torch.randn(2, 4, 7, 7)
    chained = nn.functional.conv2d(nn.functional.conv2d(nn.functional.conv2d(x, down), mid), up)
    torch.testing.assert_close(nn.functional.conv2d(x, delta), 1.5 / 3 * chained,
                               atol=1e-5, rtol=1e-5)


def _peft_spelling(module, down, up, alpha):
    state = {f"unet.{module}.lora_A.weight": down, f"unet.{module}.lora_B.weight": up}
    if alpha is not None:
        state[f"unet.{module}.alpha"] = torch.tensor(alpha)
    return state


def _original_spelling(module, down, up, alpha):
    original = ORIGINAL.get(f"{module}.weight", f"{module}.weight").removesuffix(".weight")
    return _kohya(f"lora_unet_{original.replace('.', '_')}", down, up, alpha)


def _old_diffusers_spelling(module, down, up, alpha):
    parent, _, leaf = module.removesuffix(".0").rpartition(".")
    name = f"unet.{parent}.processor.{leaf}_lora"
    return {f"{name}.down.weight": down, f"{name}.up.weight": up}


def test_peft_and_original_name_spellings_patch_the_same(unet):
    kohya = _patched_weights(unet, _unet_state(_kohya_spelling), ["lora_unet"], 0.8)
    for spell in (_peft_spelling, _original_spelling):
        other = _patched_weights(unet, _unet_state(spell), ["lora_unet"], 0.8, ORIGINAL)
        assert all(torch.equal(other[k], kohya[k]) for k in kohya), spell.__name__
    original_keys = [k for k in _unet_state(_original_spelling) if "input_blocks" in k]
    assert len(original_keys) == 2 * len(ORIGINAL) + 3  # three of them have an alpha


def test_old_diffusers_processor_spelling_patches_the_same(unet):
    attention = [f"{ATTN}.to_q", f"{ATTN}.to_out.0"]
    torch.manual_seed(4)
    loras = {m: (torch.randn(4, 32), torch.randn(32, 4)) for m in attention}
    kohya = {k: v for m, (d, u) in loras.items() for k, v in _kohya_spelling(m, d, u, None).items()}
    old = {k: v for m, (d, u) in loras.items()
           for k, v in _old_diffusers_spelling(m, d, u, None).items()}
    assert f"unet.{ATTN}.processor.to_out_lora.up.weight" in old
    expected = _patched_weights(unet, kohya, ["lora_unet"], 0.5)
    got = _patched_weights(unet, old, ["lora_unet"], 0.5)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    out = f"{ATTN}.to_out.0.weight"
    assert not torch.equal(got[out], _weights(unet)[out])


def test_text_encoder_spellings_patch_the_same(clip):
    # transformers 5 names CLIPTextModel's parameters without `text_model.`; files keep it.
    names = [n for n, _ in clip.named_parameters()]
    original = {n: f"text_model.{n}" for n in names}
    layer = "text_model.encoder.layers.1"
    loras = {f"{layer}.{m}": (torch.randn(4, i), torch.randn(o, 4), 2.0)
             for m, i, o in [("self_attn.q_proj", 32, 32), ("self_attn.out_proj", 32, 32),
                             ("mlp.fc1", 32, 64)]}
    spellings = {
        "kohya": lambda m: (f"lora_te_{m.replace('.', '_')}", ".lora_down.weight",
                            ".lora_up.weight"),
        "kohya_te1": lambda m: (f"lora_te1_{m.replace('.', '_')}", ".lora_down.weight",
                                ".lora_up.weight"),
        "peft": lambda m: (f"text_encoder.{m}", ".lora_A.weight", ".lora_B.weight"),
        "peft_mlp_layer": lambda m: (f"text_encoder.{m}", ".lora_linear_layer.down.weight",
                                     ".lora_linear_layer.up.weight"),
    }
    results = {}
    for spelling, spell in spellings.items():
        state = {}
        for module, (down, up, alpha) in loras.items():
            name, down_suffix, up_suffix = spell(module)
            state |= {name + down_suffix: down, name + up_suffix: up,
                      f"{name}.alpha": torch.tensor(alpha)}
        results[spelling] = _patched_weights(clip, state, ["lora_te", "lora_te1"], 0.9, original)
    old = {}
    for module, (down, up, _) in loras.items():
        old_name = (module.replace("self_attn.q_proj", "self_attn.to_q")
                    .replace("self_attn.out_proj", "self_attn.to_out"))
        if "mlp" in module:
            continue
        old |= {f"text_encoder.{old_name}_lora.down.weight": down,
                f"text_encoder.{old_name}_lora.up.weight": up}
    old_result = _patched_weights(clip, old, ["lora_te"], 0.9, original)
    before = _weights(clip)
    for module, (down, up, alpha) in loras.items():
        key = f"{module.removeprefix('text_model.')}.weight"
        expected = before[key] + 0.9 * _lora_delta(down, up, alpha, before[key].shape)
        for spelling, weights in results.items():
            torch.testing.assert_close(weights[key], expected, atol=1e-6, rtol=0, msg=spelling)
        if "mlp" not in module:
            torch.testing.assert_close(old_result[key],
                                       before[key] + 0.9 * _lora_delta(down, up, None, (32, 32)),
                                       atol=1e-6, rtol=0)


def _hada(a, b, t=None):
    if t is None:
        return a @ b
    out = torch.empty(a.shape[1], b.shape[1], *t.shape[2:])
    for k in range(t.shape[2]):
        for j in range(t.shape[3]):
            out[:, :, k, j] = a.T @ t[:, :, k, j] @ b
    return out


def _kron(a, b):
    if b.dim() == 4:
        full = a[:, None, :, None, None, None] * b[None, :, None, :, :, :]
        return full.reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1], *b.shape[2:])
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(a.shape[0] * b.shape[0], -1)


def test_loha_lokr_and_diff_equal_their_formulas(caplog):
    model = Small()
    before = _weights(model)
    r = 3
    loha = {"w1_a": torch.randn(8, r), "w1_b": torch.randn(r, 6), "w2_a": torch.randn(8, r),
            "w2_b": torch.randn(r, 6)}
    loha_conv = {"w1_a": torch.randn(r, 6), "w1_b": torch.randn(r, 4),
                 "t1": torch.randn(r, r, 3, 3), "w2_a": torch.randn(r, 6),
                 "w2_b": torch.randn(r, 4), "t2": torch.randn(r, r, 3, 3)}
    state = {f"lora_unet_lin.hada_{k}": v for k, v in loha.items()}
    state |= {f"lora_unet_conv.hada_{k}": v for k, v in loha_conv.items()}
    state |= {"lora_unet_lin.alpha": torch.tensor(1.5), "lora_unet_conv.alpha": torch.tensor(6.0)}
    weights = _patched_weights(model, state, ["lora_unet"], 0.6)
    expected_lin = before["lin.weight"] + 0.6 * 1.5 / r * (
        _hada(loha["w1_a"], loha["w1_b"]) * _hada(loha["w2_a"], loha["w2_b"]))
    torch.testing.assert_close(weights["lin.weight"], expected_lin, atol=1e-6, rtol=0)
    expected_conv = before["conv.weight"] + 0.6 * 6.0 / r * (
        _hada(loha_conv["w1_a"], loha_conv["w1_b"], loha_conv["t1"])
        * _hada(loha_conv["w2_a"], loha_conv["w2_b"], loha_conv["t2"]))
    torch.testing.assert_close(weights["conv.weight"], expected_conv, atol=1e-5, rtol=0)

    lokr = {"w1": torch.randn(2, 2), "w2_a": torch.randn(4, 2), "w2_b": torch.randn(2, 3)}
    lokr_conv = {"w1_a": torch.randn(2, 1), "w1_b": torch.randn(1, 2),
                 "w2": torch.randn(3, 2, 3, 3)}
    lokr_tucker = {"w1": torch.randn(2, 2), "w2_a": torch.randn(2, 3), "w2_b": torch.randn(2, 2),
                   "t2": torch.randn(2, 2, 3, 3)}
    state = {f"lora_unet_lin.lokr_{k}": v for k, v in lokr.items()}
    state |= {f"lora_unet_conv.lokr_{k}": v for k, v in lokr_conv.items()}
    state |= {"lora_unet_lin.alpha": torch.tensor(4.0), "lora_unet_conv.alpha": torch.tensor(3.0)}
    weights = _patched_weights(model, state, ["lora_unet"], 1.0)
    expected_lin = before["lin.weight"] + 4.0 / 2 * _kron(lokr["w1"], lokr["w2_a"] @ lokr["w2_b"])
    torch.testing.assert_close(weights["lin.weight"], expected_lin, atol=1e-6, rtol=0)
    expected_conv = before["conv.weight"] + 3.0 / 1 * _kron(
        lokr_conv["w1_a"] @ lokr_conv["w1_b"], lokr_conv["w2"])
    torch.testing.assert_close(weights["conv.weight"], expected_conv, atol=1e-6, rtol=0)
    state = {f"lora_unet_conv.lokr_{k}": v for k, v in lokr_tucker.items()}
    weights = _patched_weights(model, state, ["lora_unet"], 1.0)
    w2 = _hada(lokr_tucker["w2_a"], lokr_tucker["w2_b"], lokr_tucker["t2"])
    torch.testing.assert_close(weights["conv.weight"],
                               before["conv.weight"] + _kron(lokr_tucker["w1"], w2),
                               atol=1e-6, rtol=0)

    diff, diff_b = torch.randn(8, 6), torch.randn(8)
    state = {"lin.diff": diff, "lin.diff_b": diff_b, "conv.diff": torch.randn(3, 3)}
    with caplog.at_level(logging.WARNING):
        weights = _patched_weights(model, state, ["lora_unet"], 0.25)
    torch.testing.assert_close(weights["lin.weight"], before["lin.weight"] + 0.25 * diff,
                               atol=1e-7, rtol=0)
    torch.testing.assert_close(weights["lin.bias"], before["lin.bias"] + 0.25 * diff_b,
                               atol=1e-7, rtol=0)
    assert torch.equal(weights["conv.weight"], before["conv.weight"])  # wrong shape: skipped
    assert "does not fit" in caplog.text
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())


def _comfy_dora(weight, diff, magnitude, strength):
    """ComfyUI's weight_decompose written out: the output-axis norm is of the unpatched weight."""
    merged = weight + diff
    if magnitude.shape[0] == weight.shape[0]:
        norm = torch.linalg.vector_norm(weight, dim=tuple(range(1, weight.dim())), keepdim=True)
    else:
        dims = (0, *range(2, weight.dim()))
        norm = torch.linalg.vector_norm(merged, dim=dims, keepdim=True)
    target = merged * magnitude.reshape(norm.shape) / (norm + torch.finfo(weight.dtype).eps)
    return weight + strength * (target - weight)


@pytest.mark.parametrize(("target", "magnitude_shape"), [
    ("lin", (8, 1)), ("lin", (8,)), ("lin", (1, 6)), ("conv", (6, 1, 1, 1)), ("conv", (1, 4, 1, 1)),
])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_dora_equals_comfyui_formula(target, magnitude_shape, strength):
    model = Small()
    before = _weights(model)[f"{target}.weight"]
    down_shape = (2, 6) if target == "lin" else (2, 4, 3, 3)
    up_shape = (8, 2) if target == "lin" else (6, 2, 1, 1)
    down, up = torch.randn(down_shape) * 0.3, torch.randn(up_shape) * 0.3
    magnitude = torch.rand(magnitude_shape) + 0.5
    state = _kohya(f"lora_unet_{target}", down, up, 1.0)
    state[f"lora_unet_{target}.dora_scale"] = magnitude
    weights = _patched_weights(model, state, ["lora_unet"], strength)
    expected = _comfy_dora(before, _lora_delta(down, up, 1.0, before.shape), magnitude, strength)
    torch.testing.assert_close(weights[f"{target}.weight"], expected, atol=1e-6, rtol=0)


def test_patched_restores_exactly_and_strength_zero_is_a_no_op():
    model = Small(torch.bfloat16)
    before = _weights(model)
    lora = _kohya("lora_unet_lin", torch.randn(2, 6), torch.randn(8, 2), 1.0)
    patch = _patch(model, lora, ["lora_unet"], 0.5)
    with patched(model, [patch]):
        assert not torch.equal(model.lin.weight, before["lin.weight"])
        assert model.lin.weight.dtype == torch.bfloat16
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())
    with patched(model, [_patch(model, lora, ["lora_unet"], 0.0)]):
        assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"), patched(model, [patch]):
        raise RuntimeError("boom")
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())


def test_patches_stack_in_order_and_nest():
    model = Small()
    before = _weights(model)["lin.weight"]
    first = _kohya("lora_unet_lin", torch.randn(2, 6), torch.randn(8, 2), 1.0)
    second = {"lin.diff": torch.randn(8, 6)}
    p1, p2 = _patch(model, first, ["lora_unet"], 0.5), _patch(model, second, ["lora_unet"], -1.5)
    assert p1 == Patch({}, 0.5, ("test", 0.5)) and hash(p1) == hash(Patch({}, 0.5, ("test", 0.5)))
    expected = (before + 0.5 * _lora_delta(first["lora_unet_lin.lora_down.weight"],
                                           first["lora_unet_lin.lora_up.weight"], 1.0, (8, 6))
                - 1.5 * second["lin.diff"])
    with patched(model, [p1, p2]):
        torch.testing.assert_close(model.lin.weight.detach(), expected, atol=1e-6, rtol=0)
    with patched(model, [p1]):
        once = model.lin.weight.detach().clone()
        with patched(model, [p2]):  # re-entrant: the same thread may patch on top
            torch.testing.assert_close(model.lin.weight.detach(), expected, atol=1e-6, rtol=0)
        assert torch.equal(model.lin.weight, once)
    assert torch.equal(model.lin.weight, before)


def test_patched_holds_a_per_module_lock():
    model, other = Small(), Small()
    patch = _patch(model, {"lin.diff": torch.ones(8, 6)}, [], 1.0)
    entered = threading.Event()

    def run() -> None:
        with patched(model, [patch]):
            entered.set()

    with patched(model, [patch]):
        thread = threading.Thread(target=run)
        thread.start()
        with patched(other, []):  # another module is not blocked
            pass
        assert not entered.wait(0.2)
    thread.join(5)
    assert entered.is_set()


def test_unmatched_and_unknown_keys_are_reported(caplog):
    model = Small()
    state = _kohya("lora_unet_lin", torch.randn(2, 6), torch.randn(8, 2))
    state |= _kohya("lora_unet_no_such_module", torch.randn(2, 6), torch.randn(8, 2))
    state |= {"lora_unet_lin.lora_up.weight_extra": torch.zeros(1),
              "lora_unet_half.lora_up.weight": torch.zeros(8, 2)}
    with caplog.at_level(logging.WARNING):
        adapters = parse_lora(state)
    assert "lora_unet_lin.lora_up.weight_extra" in caplog.text
    assert "lora_unet_half" in caplog.text and "lora_unet_half" not in adapters
    aliases = lora_aliases([n for n, _ in model.named_parameters()], ["lora_unet"])
    matched, unmatched = match_lora(adapters, aliases)
    assert list(matched) == ["lin.weight"]
    assert unmatched == ["lora_unet_no_such_module"]


def test_unet_output_equals_hand_merged_copy(unet):
    state = _unet_state(_kohya_spelling)
    patch = _patch(unet, state, ["lora_unet"], 0.9)
    merged = copy.deepcopy(unet)
    params = dict(merged.named_parameters())
    with torch.no_grad():
        for module, *_ in UNET_LORAS:
            prefix = f"lora_unet_{module.replace('.', '_')}"
            alpha = state.get(f"{prefix}.alpha")
            weight = params[f"{module}.weight"]
            weight += 0.9 * _lora_delta(state[f"{prefix}.lora_down.weight"],
                                        state[f"{prefix}.lora_up.weight"],
                                        None if alpha is None else alpha.item(), weight.shape)
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor(10), torch.randn(1, 3, 32))
    with torch.no_grad():
        plain = unet(*inputs).sample
        with patched(unet, [patch]):
            lora = unet(*inputs).sample
        expected = merged(*inputs).sample
        again = unet(*inputs).sample
    torch.testing.assert_close(lora, expected, atol=1e-5, rtol=1e-5)
    assert (lora - plain).abs().max() > 1e-3
    assert torch.equal(again, plain)
