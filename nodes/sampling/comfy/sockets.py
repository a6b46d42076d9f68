"""The custom-sampling socket types, as ComfyUI names them."""

from __future__ import annotations

import torch

from nodegraph.types import socket

from .guidance import Guider
from .noise import Noise
from .run import Sampler

SAMPLER = socket("SAMPLER", Sampler)
SIGMAS = socket("SIGMAS", torch.Tensor)
NOISE = socket("NOISE", Noise)
GUIDER = socket("GUIDER", Guider)
