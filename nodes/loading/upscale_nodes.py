"""UpscaleModelLoader: an upscale model from the upscale_models folders (ComfyUI's loader)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from nodegraph import InputField, Node, NodeContext

from ..upscaling.model import KIND, STORE, UPSCALE_MODEL, load_upscale_model
from .checkpoint_nodes import model_fingerprint
from .folders import model_names


def loaded_models() -> list[str]:
    return STORE.files()


class UpscaleModelLoader(Node):
    """Load an upscale model (ESRGAN, Real-ESRGAN, SwinIR, ...: told by spandrel)."""

    category = "loaders"
    display_name = "Load Upscale Model"
    model_name: str = InputField(
        description="The model, among models/upscale_models.", choices=partial(model_names, KIND)
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return model_fingerprint(KIND, literals["model_name"], run)

    def invoke(self, ctx: NodeContext) -> UPSCALE_MODEL:
        return load_upscale_model(self.model_name, ctx.settings.options)
