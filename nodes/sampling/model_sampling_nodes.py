"""ComfyUI's ModelSamplingDiscrete and ModelSamplingContinuousEDM: the same UNet sampled with
another prediction type or sigma table (the model's weights are shared, not copied)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from nodegraph import InputField, Node, NodeContext

from ..values import MODEL
from .comfy.model_sampling import ModelSampling

EDM_PREDICTIONS = {"v_prediction": ("v_prediction", 1.0), "edm": ("edm", 0.5), "eps": ("eps", 1.0)}
"""ModelSamplingContinuousEDM's sampling -> (prediction type, sigma_data)."""


class ModelSamplingDiscrete(Node):
    """Sample the model as eps, v-prediction, LCM or x0 on its training table (zsnr: rescaled
    to zero terminal SNR)."""

    category = "advanced/model"
    model: MODEL = InputField(description="The model to patch.")
    sampling: Literal["eps", "v_prediction", "lcm", "x0", "img_to_img"] = InputField(
        "eps", description="The prediction type."
    )
    zsnr: bool = InputField(False, description="Rescale the table to zero terminal SNR.")

    def invoke(self, ctx: NodeContext) -> MODEL:
        table = ModelSampling.discrete(self.model.scheduler_config, self.sampling, self.zsnr)
        return dataclasses.replace(self.model, sampling=table)


class ModelSamplingContinuousEDM(Node):
    """Sample the model on EDM's continuous log-sigma line between sigma_min and sigma_max."""

    category = "advanced/model"
    model: MODEL = InputField(description="The model to patch.")
    sampling: Literal["v_prediction", "edm", "eps"] = InputField(
        "v_prediction", description="The prediction type."
    )
    sigma_max: float = InputField(
        120.0, description="The top sigma.", ge=0.0, le=1000.0, step=0.001
    )
    sigma_min: float = InputField(
        0.002, description="The bottom sigma.", ge=0.0, le=1000.0, step=0.001
    )

    def invoke(self, ctx: NodeContext) -> MODEL:
        prediction, sigma_data = EDM_PREDICTIONS[self.sampling]
        line = ModelSampling.continuous_edm(prediction, self.sigma_min, self.sigma_max, sigma_data)
        return dataclasses.replace(self.model, sampling=line)
