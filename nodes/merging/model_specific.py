"""ComfyUI's ModelMergeSDXL: ModelMergeBlocks with one ratio per part of an SDXL UNet.

Its inputs are named by original-layout weight prefixes (`time_embed.`, `input_blocks.4`, ...),
which are not Python identifiers, so the class is built from that list of names."""

from __future__ import annotations

from typing import Any

from nodegraph import InputField, Node, NodeContext

from ..formats.unet_names import SDXL_MERGE_BLOCKS
from ..values import MODEL
from .model_nodes import CATEGORY, _ratio, block_ratios, merged


def _merge(self: Node, ctx: NodeContext) -> MODEL:
    shares = {block: float(getattr(self, block)) for block in SDXL_MERGE_BLOCKS}
    model1, model2 = self.model1, self.model2  # type: ignore[attr-defined]
    ratios = block_ratios(model1, shares)
    return merged("ModelMergeSDXL", model1, model2, ratios, *shares.values())


def _sdxl_node(name: str, doc: str) -> type[Node]:
    """The node class: two models, then one ratio (share of model1) per SDXL_MERGE_BLOCKS."""
    annotations: dict[str, Any] = {"model1": "MODEL", "model2": "MODEL"}
    fields: dict[str, Any] = {
        "model1": InputField(description="The first model."),
        "model2": InputField(description="The second model."),
    }
    for block in SDXL_MERGE_BLOCKS:
        annotations[block] = float
        fields[block] = _ratio(f"Share of model1 in the weights named {block}*.")
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": doc,
        "__annotations__": annotations,
        "category": f"{CATEGORY}/model_specific",
        "invoke": _merge,
        **fields,
    }
    return type(Node)(name, (Node,), namespace)


ModelMergeSDXL = _sdxl_node(
    "ModelMergeSDXL",
    "ModelMergeSimple with a ratio per part of an SDXL UNet (1: model1, 0: model2): the time "
    "and label embeddings, each input, middle and output block, and the last layers.",
)
