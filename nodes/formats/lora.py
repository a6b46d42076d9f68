"""LoRA-family files read as per-module weight deltas: kohya, LyCORIS, peft, old diffusers.

The maths follows ComfyUI's weight adapters: LoRA `up @ down * alpha / rank` (optional LoCon
Tucker core), LoHa Hadamard products, LoKr Kronecker products, full diffs, and DoRA's
re-normalisation by `dora_scale`. Nothing here knows about nodes or live models: `parse_lora`
reads a state dict, `lora_aliases` spells a model's parameter names every way a file may, and
`match_lora` pairs the two.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class LoraShapeError(ValueError):
    """An adapter whose delta cannot take the shape of the weight it was matched to."""


def _cast(tensor: Tensor, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    return tensor.to(device=device, dtype=dtype)


@dataclass(frozen=True, eq=False, kw_only=True)
class Adapter:
    """One module's weight delta; `apply(weight, strength)` gives the patched weight."""

    alpha: float | None = None
    dora_scale: Tensor | None = None
    reshapes: ClassVar[bool] = True  # False: the delta must already have the weight's shape

    @property
    def rank(self) -> int | None:
        """The divisor of `alpha`; None means the scale is 1."""
        return None

    @property
    def scale(self) -> float:
        """alpha / rank, or 1 without an alpha."""
        rank = self.rank
        return 1.0 if self.alpha is None or rank is None else self.alpha / rank

    def product(self, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
        """The unscaled delta in the file's own layout."""
        raise NotImplementedError

    def _fitted(self, shape: Sequence[int], dtype: torch.dtype, device) -> Tensor:
        product = self.product(dtype, device)
        shape = torch.Size(shape)
        if product.shape == shape:
            return product
        if self.reshapes and product.numel() == shape.numel():
            return product.reshape(shape)
        raise LoraShapeError(
            f"{type(self).__name__} delta {tuple(product.shape)} does not fit weight {tuple(shape)}"
        )

    def delta(
        self,
        weight_shape: Sequence[int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The full delta (before strength) shaped like the weight; DoRA is not in it."""
        return self._fitted(weight_shape, dtype, device) * self.scale

    def apply(self, weight: Tensor, strength: float = 1.0) -> Tensor:
        """A new tensor: `weight` patched at `strength`, computed in the weight's dtype."""
        diff = self._fitted(weight.shape, weight.dtype, weight.device)
        if self.dora_scale is None:
            return weight + diff * (strength * self.scale)
        return _dora(weight, diff * self.scale, self.dora_scale, strength)


def _dora(weight: Tensor, diff: Tensor, dora_scale: Tensor, strength: float) -> Tensor:
    """ComfyUI's weight_decompose: rescale `weight + diff` to the magnitudes in `dora_scale`."""
    merged = weight + diff
    ones = [1] * (weight.dim() - 1)
    if dora_scale.shape[0] == merged.shape[0]:
        # Per output channel. ComfyUI takes this norm of the unpatched weight (not of `merged`).
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(weight.shape[0], *ones)
    else:
        columns = merged.transpose(0, 1)
        norm = columns.reshape(columns.shape[0], -1).norm(dim=1)
        norm = norm.reshape(columns.shape[0], *ones).transpose(0, 1)
    magnitude = _cast(dora_scale, weight.dtype, weight.device)
    if magnitude.shape != norm.shape:
        if magnitude.numel() != norm.numel():
            raise LoraShapeError(
                f"dora_scale {tuple(dora_scale.shape)} does not fit weight {tuple(weight.shape)}"
            )
        magnitude = magnitude.reshape(norm.shape)
    merged = merged * (magnitude / (norm + torch.finfo(weight.dtype).eps))
    return merged if strength == 1.0 else weight + strength * (merged - weight)


def _core(a: Tensor, b: Tensor, t: Tensor | None, dtype, device) -> Tensor:
    """`a @ b`, or with a Tucker core `t` the conv-shaped (out, in, *kernel) product."""
    a, b = _cast(a, dtype, device), _cast(b, dtype, device)
    if t is None:
        return a @ b
    return torch.einsum("ij...,jr,ip->pr...", _cast(t, dtype, device), b, a)


@dataclass(frozen=True, eq=False, kw_only=True)
class LoRA(Adapter):
    """kohya/peft/diffusers LoRA, LyCORIS LoCon with an optional Tucker `mid`."""

    up: Tensor
    down: Tensor
    mid: Tensor | None = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def product(self, dtype, device) -> Tensor:
        down = _cast(self.down, dtype, device).flatten(1)
        if self.mid is not None:
            down = torch.einsum("ab...,bi->ai...", _cast(self.mid, dtype, device), down)
        return _cast(self.up, dtype, device).flatten(1) @ down.flatten(1)


@dataclass(frozen=True, eq=False, kw_only=True)
class LoHa(Adapter):
    """LyCORIS LoHa: `(w1_a @ w1_b) * (w2_a @ w2_b)`, optional Tucker cores t1/t2."""

    w1_a: Tensor
    w1_b: Tensor
    w2_a: Tensor
    w2_b: Tensor
    t1: Tensor | None = None
    t2: Tensor | None = None

    @property
    def rank(self) -> int:
        return self.w1_b.shape[0]

    def product(self, dtype, device) -> Tensor:
        first = _core(self.w1_a, self.w1_b, self.t1, dtype, device)
        return first * _core(self.w2_a, self.w2_b, self.t2, dtype, device)


@dataclass(frozen=True, eq=False, kw_only=True)
class LoKr(Adapter):
    """LyCORIS LoKr: `kron(w1, w2)`, each factor whole or as a low-rank pair (w2 with t2)."""

    w1: Tensor | None = None
    w1_a: Tensor | None = None
    w1_b: Tensor | None = None
    w2: Tensor | None = None
    w2_a: Tensor | None = None
    w2_b: Tensor | None = None
    t2: Tensor | None = None

    def __post_init__(self) -> None:
        for whole, a, b in ((self.w1, self.w1_a, self.w1_b), (self.w2, self.w2_a, self.w2_b)):
            if whole is None and (a is None or b is None):
                raise ValueError("LoKr needs w1 (or w1_a and w1_b) and w2 (or w2_a and w2_b)")

    @property
    def rank(self) -> int | None:
        if self.w2 is None:
            return self.w2_b.shape[0]
        return None if self.w1 is not None else self.w1_b.shape[0]

    def product(self, dtype, device) -> Tensor:
        w1 = (
            _cast(self.w1, dtype, device)
            if self.w1 is not None
            else _core(self.w1_a, self.w1_b, None, dtype, device)
        )
        w2 = (
            _cast(self.w2, dtype, device)
            if self.w2 is not None
            else _core(self.w2_a, self.w2_b, self.t2, dtype, device)
        )
        w1 = w1.reshape(*w1.shape, *[1] * (w2.dim() - w1.dim()))
        return torch.kron(w1.contiguous(), w2.contiguous())  # kron fails on einsum's strides


@dataclass(frozen=True, eq=False, kw_only=True)
class Diff(Adapter):
    """A full difference (`.diff`, `.diff_b`, `.w_norm`, `.b_norm`) of the weight's own shape."""

    diff: Tensor
    reshapes: ClassVar[bool] = False

    def product(self, dtype, device) -> Tensor:
        return _cast(self.diff, dtype, device)


# Key suffix -> (what it appends to the module name, adapter kind, part). Kind None: shared
# parts (alpha, dora_scale) of whichever adapter the module has.
_SUFFIXES: dict[str, tuple[str, str | None, str]] = {
    ".lora_up.weight": ("", "lora", "up"),
    ".lora_down.weight": ("", "lora", "down"),
    ".lora_mid.weight": ("", "lora", "mid"),
    ".lora_B.weight": ("", "lora", "up"),
    ".lora_A.weight": ("", "lora", "down"),
    ".lora_B.default.weight": ("", "lora", "up"),
    ".lora_A.default.weight": ("", "lora", "down"),
    ".lora.up.weight": ("", "lora", "up"),
    ".lora.down.weight": ("", "lora", "down"),
    ".lora_linear_layer.up.weight": ("", "lora", "up"),
    ".lora_linear_layer.down.weight": ("", "lora", "down"),
    "_lora.up.weight": ("", "legacy", "up"),
    "_lora.down.weight": ("", "legacy", "down"),
    **{
        f".hada_{part}": ("", "loha", part) for part in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")
    },
    **{
        f".lokr_{part}": ("", "lokr", part)
        for part in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")
    },
    ".diff": ("", "diff", "diff"),
    ".w_norm": ("", "diff", "diff"),
    ".diff_b": (".bias", "diff", "diff"),
    ".b_norm": (".bias", "diff", "diff"),
    ".alpha": ("", None, "alpha"),
    ".dora_scale": ("", None, "dora_scale"),
}
_SUFFIX_ORDER = sorted(_SUFFIXES, key=len, reverse=True)

# Old diffusers attention-processor modules (`attn1.processor.to_q_lora`, CLIP
# `self_attn.to_q_lora`) respelled as the modules they patch.
_LEGACY_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\.processor\."), "."),
    (re.compile(r"\.self_attn\.to_(q|k|v)$"), r".self_attn.\1_proj"),
    (re.compile(r"\.self_attn\.to_out$"), ".self_attn.out_proj"),
    (re.compile(r"\.to_out$"), ".to_out.0"),
)

_BUILDERS: dict[str, type[Adapter]] = {"lora": LoRA, "loha": LoHa, "lokr": LoKr, "diff": Diff}
# When one module has several kinds, the first here wins (ComfyUI lets the later loaders win).
_PRECEDENCE = ("diff", "lokr", "loha", "lora")


def _split(key: str) -> tuple[str, str | None, str] | None:
    """(module, kind, part) of a key, None for a key no format uses."""
    for suffix in _SUFFIX_ORDER:
        if key.endswith(suffix) and len(key) > len(suffix):
            module_suffix, kind, part = _SUFFIXES[suffix]
            module = key[: -len(suffix)]
            if kind == "legacy":
                for pattern, replacement in _LEGACY_RENAMES:
                    module = pattern.sub(replacement, module)
                kind = "lora"
            return module + module_suffix, kind, part
    return None


def parse_lora(state: Mapping[str, Tensor]) -> dict[str, Adapter]:
    """Adapters by module name as the file spells it (bias diffs as `<module>.bias`)."""
    parts: dict[str, dict[str, dict[str, Tensor]]] = {}
    shared: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        split = _split(key)
        if split is None:
            log.warning("LoRA key not understood: %s", key)
            continue
        module, kind, part = split
        if kind is None:
            shared.setdefault(module, {})[part] = tensor
        else:
            parts.setdefault(module, {}).setdefault(kind, {})[part] = tensor
    adapters: dict[str, Adapter] = {}
    for module, kinds in parts.items():
        adapter = _build(module, kinds, shared.pop(module, {}))
        if adapter is not None:
            adapters[module] = adapter
    for module in shared:
        log.warning("LoRA alpha/dora_scale without an adapter: %s", module)
    return adapters


def _build(
    module: str, kinds: dict[str, dict[str, Tensor]], shared: dict[str, Tensor]
) -> Adapter | None:
    kind = next(kind for kind in _PRECEDENCE if kind in kinds)
    for ignored in kinds.keys() - {kind}:
        log.warning("LoRA module %s: %s parts ignored, %s used", module, ignored, kind)
    options: dict[str, object] = dict(kinds[kind])
    if kind != "diff":
        alpha = shared.get("alpha")
        options["alpha"] = None if alpha is None else float(alpha.item())
        options["dora_scale"] = shared.get("dora_scale")
    try:
        return _BUILDERS[kind](**options)
    except (TypeError, ValueError) as error:
        log.warning(
            "LoRA module %s not loaded (%s parts %s): %s", module, kind, sorted(kinds[kind]), error
        )
        return None


# kohya-style prefix -> the dotted prefixes peft/diffusers files use for the same model.
DOTTED_PREFIXES: dict[str, tuple[str, ...]] = {
    "lora_unet": ("unet",),
    "lycoris": ("unet",),
    "lora_te": ("text_encoder",),
    "lora_te1": ("text_encoder",),
    "lora_te2": ("text_encoder_2",),
    "lora_transformer": ("transformer",),
}

# Extra spellings ComfyUI accepts for attention projections (`attn1.processor.to_q`).
_PROCESSOR_SPELLINGS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\.(to_[qkv])$"), r".processor.\1"),
    (re.compile(r"\.to_out\.0$"), ".processor.to_out"),
)


def _spellings(module: str, prefixes: Sequence[str]) -> Iterator[str]:
    variants = [module] + [
        pattern.sub(replacement, module)
        for pattern, replacement in _PROCESSOR_SPELLINGS
        if pattern.search(module)
    ]
    yield from variants
    for prefix in prefixes:
        yield f"{prefix}_{module.replace('.', '_')}"
        for dotted in DOTTED_PREFIXES.get(prefix, ()):
            for variant in variants:
                yield f"{dotted}.{variant}"


def lora_aliases(
    param_names: Iterable[str], prefixes: Sequence[str], original: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Every module spelling a LoRA file may use -> the model's parameter (weight) name.

    `prefixes` are kohya prefixes (`lora_unet`, `lora_te1`, ...); each also brings its dotted
    peft/diffusers prefixes from `DOTTED_PREFIXES`. `original` gives parameters another name
    (LDM UNet keys, `text_model.`-prefixed CLIP keys) that is spelled every way too; the
    model's own names win a clash. Bias parameters are reached through their weight's module.
    """
    names = list(param_names)
    sources = [(original[name], name) for name in names if original and name in original]
    sources += [(name, name) for name in names]
    aliases: dict[str, str] = {}
    for source, target in sources:
        if target.endswith(".bias"):
            continue
        for spelling in _spellings(source.removesuffix(".weight"), prefixes):
            aliases[spelling] = target
    return aliases


def _target(module: str, aliases: Mapping[str, str]) -> str | None:
    if module in aliases:
        return aliases[module]
    stem, _, leaf = module.rpartition(".")
    weight = aliases.get(stem) if leaf == "bias" else None
    if weight is None or not weight.endswith(".weight"):
        return None
    return weight.removesuffix(".weight") + ".bias"


def match_lora(
    adapters: Mapping[str, Adapter], aliases: Mapping[str, str]
) -> tuple[dict[str, Adapter], list[str]]:
    """(parameter name -> adapter, module names no alias matched)."""
    matched: dict[str, Adapter] = {}
    unmatched: list[str] = []
    for module, adapter in adapters.items():
        target = _target(module, aliases)
        if target is None:
            unmatched.append(module)
            continue
        if target in matched:
            log.warning("LoRA module %s patches %s again; the last one is used", module, target)
        matched[target] = adapter
    return matched, unmatched
