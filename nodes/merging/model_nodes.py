"""ComfyUI's ModelMergeSimple, ModelMergeBlocks, ModelMergeAdd and ModelMergeSubtract: the
second model's UNet weights merged into the first's as patches."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from nodegraph import InputField, Node, NodeContext

from ..formats.unet_names import longest_prefix, original_unet_names
from ..values import MODEL, Model
from .weights import Ratios, merge_patch

CATEGORY = "advanced/model_merging"


def _ratio(what: str) -> float:
    return InputField(1.0, description=what, ge=0.0, le=1.0, step=0.01)


def _multiplier() -> float:
    return InputField(1.0, description="Scale of the difference.", ge=-10.0, le=10.0, step=0.01)


def merged(node: str, model1: Model, model2: Model, ratios: Ratios, *key: object) -> Model:
    """model1 with model2's weights patched in (model1's own patches first)."""
    if model1.family != model2.family:
        raise ValueError(
            f"{node}: model2 is a {model2.family} model, model1 a {model1.family} one: "
            "their weights do not line up"
        )
    patches = merge_patch(
        model1.unet, model2.unet, model2.patches, ratios, (node, model2.name, *key)
    )
    return dataclasses.replace(model1, patches=(*model1.patches, *patches))


class ModelMergeSimple(Node):
    """ratio of model1's weights plus the rest of model2's (1: model1, 0: model2)."""

    category = CATEGORY
    model1: MODEL = InputField(description="The first model.")
    model2: MODEL = InputField(description="The second model.")
    ratio: float = _ratio("Share of model1.")

    def invoke(self, ctx: NodeContext) -> MODEL:
        r = self.ratio
        return merged("ModelMergeSimple", self.model1, self.model2, lambda n: (1.0 - r, r), r)


class ModelMergeSubtract(Node):
    """(model1 - model2) * multiplier, weight by weight (a difference model)."""

    category = CATEGORY
    model1: MODEL = InputField(description="The model subtracted from.")
    model2: MODEL = InputField(description="The model subtracted.")
    multiplier: float = _multiplier()

    def invoke(self, ctx: NodeContext) -> MODEL:
        m = self.multiplier
        return merged("ModelMergeSubtract", self.model1, self.model2, lambda n: (-m, m), m)


class ModelMergeAdd(Node):
    """model1 + model2, weight by weight (add a difference model)."""

    category = CATEGORY
    model1: MODEL = InputField(description="The first model.")
    model2: MODEL = InputField(description="The model added.")

    def invoke(self, ctx: NodeContext) -> MODEL:
        return merged("ModelMergeAdd", self.model1, self.model2, lambda n: (1.0, 1.0))


def block_ratios(model: Model, shares: Mapping[str, float]) -> Ratios:
    """ComfyUI's ModelMergeBlocks rule: each weight takes the share of the longest of `shares`'
    keys its original (CompVis) name starts with; a weight no key fits takes the first share."""
    names = [n for n, _ in model.unet.named_parameters()]
    original = original_unet_names(model.unet.config, names)
    default = next(iter(shares.values()))

    def ratios(name: str) -> tuple[float, float]:
        block = longest_prefix(original.get(name, name), shares)
        share = default if block is None else shares[block]
        return 1.0 - share, share

    return ratios


class ModelMergeBlocks(Node):
    """ModelMergeSimple with a ratio per part of the UNet: input blocks, middle, output."""

    category = CATEGORY
    model1: MODEL = InputField(description="The first model.")
    model2: MODEL = InputField(description="The second model.")
    input: float = _ratio("Share of model1 in the input (down) blocks.")
    middle: float = _ratio("Share of model1 in the middle block.")
    out: float = _ratio("Share of model1 in the output (up) blocks and the last layers.")

    def invoke(self, ctx: NodeContext) -> MODEL:
        # by original-name prefix: input_blocks, middle_block, out (and output_blocks); the time
        # and label embeddings match none and take input's share
        shares = {"input": self.input, "middle": self.middle, "out": self.out}
        ratios = block_ratios(self.model1, shares)
        return merged("ModelMergeBlocks", self.model1, self.model2, ratios, *shares.values())
