"""The values that flow between diffusion nodes: socket types and the small classes behind them.

Conventions (as in ComfyUI): IMAGE is a float tensor (batch, height, width, 3) in 0..1; MASK is
(batch, height, width) in 0..1; LATENT holds a (batch, channels, height/8, width/8) tensor in the
VAE's own space (not scaled: the model scales it, as in ComfyUI, so any VAE fits any model), with
an optional noise mask and batch indices;
CONDITIONING is a list of Conds: the text encoders' hidden states (batch, tokens, width) with
where, when and how each guides.
Tensors stay on the device they were made on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nodegraph.types import socket


def _like(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A per-channel tensor on `like`'s device and dtype (a number as it is)."""
    return value.to(like.device, like.dtype) if isinstance(value, torch.Tensor) else value


@dataclass(eq=False)
class Model:
    """MODEL: the denoising network with the scheduler configuration it was trained with."""

    unet: Any
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    name: str
    preview_factors: torch.Tensor | None = None
    """Latent -> RGB map for live previews (nodes.sampling.preview), fitted to the VAE."""
    family: str = "sd1"
    """The checkpoint's family (a key of nodes.formats.families.FAMILIES)."""
    patches: tuple[Any, ...] = ()
    """Weight patches (LoRA, ...) applied to the UNet while it samples (nodes.loading.patching)."""
    sampling: Any = None
    """ComfyUI's model sampling set by a ModelSampling node (None: the scheduler config's)."""
    latent_scale: float = 1.0
    latent_shift: float | torch.Tensor = 0.0
    latent_std: float | torch.Tensor = 1.0
    """LATENTs are the VAE's own (as ComfyUI's); the UNet works on (latent - shift) * scale /
    std (shift and std per channel, (1, C, 1, 1), in Playground 2.5's latent format)."""
    edm: bool = False
    """Trained on EDM's continuous sigmas (CosXL): `sampling` is its own, the native (diffusers)
    nodes refuse it, and an InstructPix2Pix one takes the picture's latent in the UNet's space."""

    def latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        """A LATENT in the UNet's space (ComfyUI's process_latent_in)."""
        shift, std = _like(self.latent_shift, latent), _like(self.latent_std, latent)
        return (latent - shift) * self.latent_scale / std

    def latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        """The UNet's latent back as a LATENT (ComfyUI's process_latent_out)."""
        shift, std = _like(self.latent_shift, latent), _like(self.latent_std, latent)
        return latent * std / self.latent_scale + shift

    def cache_nbytes(self) -> int:
        return 0  # the weights belong to the model store, not to the run cache


@dataclass(eq=False)
class TextTower:
    """One text encoder of a CLIP (SDXL has two) and how its output is read.

    `key` is ComfyUI's name for it: "l" (CLIP ViT-L), "h" (OpenCLIP ViT-H), "g" (OpenCLIP bigG).
    The conditioning is hidden state `layer` (-1: the last layer's output, -2 the penultimate),
    passed through the final layer norm when `final_norm`; None is the encoder's own output (the
    last layer, normed: ComfyUI's "last"). Prompts are padded with `pad_id`.
    """

    key: str
    tokenizer: Any
    encoder: Any
    layer: int | None
    final_norm: bool
    pad_id: int

    @property
    def width(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def layers(self) -> int:
        return int(self.encoder.config.num_hidden_layers)


@dataclass(eq=False)
class Clip:
    """CLIP: the text towers of a checkpoint (one, or SDXL's two), with the LoRA patches on them.

    `family` is the checkpoint's family (nodes.formats.families); `patches` are (tower key,
    weight patch) pairs applied while encoding (nodes.loading.patching).
    """

    towers: tuple[TextTower, ...]
    device: torch.device
    dtype: torch.dtype
    name: str
    family: str = "sd1"
    patches: tuple[Any, ...] = ()

    @property
    def tokenizer(self) -> Any:
        return self.towers[0].tokenizer

    @property
    def text_encoder(self) -> Any:
        return self.towers[0].encoder

    def cache_nbytes(self) -> int:
        return 0


MODEL_INPUTS = frozenset(
    {"width", "height", "crop_w", "crop_h", "target_width", "target_height", "aesthetic_score",
     "concat_latent_image", "concat_mask"}
)  # fmt: skip
"""The options of a Cond that the UNet reads (ComfyUI's model_conds): SDXL's size and aesthetic
conditions and an inpainting UNet's masked picture; the rest say where and when a Cond guides."""


@dataclass(eq=False)
class Cond:
    """One entry of a CONDITIONING (ComfyUI's [embeddings, options] pair): text embeddings
    (batch, tokens, width), SDXL's pooled text (None for SD 1.x / 2.x) and options by ComfyUI's
    keys: the model inputs of MODEL_INPUTS; where and how much it guides (area, strength, mask,
    mask_strength, set_area_to_bounds); when (start_percent, end_percent); its ControlNets
    (control, control_apply_to_uncond)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def with_options(self, **options: Any) -> Cond:
        """This Cond with some options set (ComfyUI's conditioning_set_values)."""
        return Cond(self.embeds, self.pooled, {**self.extras, **options})

    def cache_nbytes(self) -> int:
        size = self.embeds.numel() * self.embeds.element_size()
        if self.pooled is not None:
            size += self.pooled.numel() * self.pooled.element_size()
        return size


GUIDING_OPTIONS = ("area", "mask", "strength", "start_percent", "end_percent")


@dataclass(eq=False)
class Conditioning:
    """CONDITIONING: ComfyUI's list of Conds. A sampler evaluates each at every step, within its
    area, mask and part of the schedule, and blends their estimates by strength; one text
    encoder's output is a list of one (ConditioningCombine joins lists)."""

    conds: tuple[Cond, ...]

    @classmethod
    def of(
        cls,
        embeds: torch.Tensor,
        pooled: torch.Tensor | None = None,
        extras: dict[str, Any] | None = None,
    ) -> Conditioning:
        """A conditioning of one Cond."""
        return cls((Cond(embeds, pooled, dict(extras or {})),))

    def map(self, change: Callable[[Cond], Cond]) -> Conditioning:
        """Every Cond changed alike (as ComfyUI's conditioning nodes loop over the list)."""
        return Conditioning(tuple(change(c) for c in self.conds))

    def with_options(self, **options: Any) -> Conditioning:
        return self.map(lambda c: c.with_options(**options))

    def only(self, node: str, name: str) -> Cond:
        """The one Cond a native (diffusers) node can use, or a ValueError naming node and input."""
        guiding = [k for c in self.conds for k in GUIDING_OPTIONS if k in c.extras]
        if len(self.conds) != 1 or guiding:
            what = f"{len(self.conds)} conditionings" if len(self.conds) != 1 else guiding[0]
            raise ValueError(
                f"{node}: {name} has {what}, which diffusers' pipelines do not know; "
                "sample it with KSampler"
            )
        return self.conds[0]

    def cache_nbytes(self) -> int:
        return sum(c.cache_nbytes() for c in self.conds)


@dataclass(eq=False)
class Vae:
    """VAE: the autoencoder between pixels and latents."""

    vae: Any
    device: torch.device
    dtype: torch.dtype
    name: str

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def cache_nbytes(self) -> int:
        return 0


@dataclass(eq=False)
class Latent:
    """LATENT: latents in the VAE's own space (batch, channels, height/8, width/8), and what
    ComfyUI's latent dictionary carries besides them.

    `noise_mask` (SetLatentNoiseMask, VAEEncodeForInpaint): where the sampler may change the
    latent (1) and where it keeps it (0), any size (it is resized to the latent's); `batch_index`
    (the latent batch nodes): which noise of the seed each image gets.
    """

    samples: torch.Tensor
    noise_mask: torch.Tensor | None = None
    batch_index: tuple[int, ...] | None = None

    def like(self, samples: torch.Tensor) -> Latent:
        """Other samples with this latent's mask and batch indices (a sampler's output)."""
        return Latent(samples, self.noise_mask, self.batch_index)


@dataclass(eq=False)
class Noisy:
    """NOISY_LATENT: a noised latent and the part of the schedule that is left to walk.

    `steps` is the length of the whole schedule the scheduler is set to, `keep` how many of its
    steps are left and `start` the index into its timesteps where denoising begins (scheduler
    order included), so Denoise can rebuild the scheduler exactly; `timesteps` are the ones left.
    With no timesteps left, `latent` is the input, unchanged.
    """

    latent: torch.Tensor
    sampler: str
    scheduler: str
    steps: int
    keep: int
    start: int
    timesteps: torch.Tensor
    seed: int
    strength: float

    @property
    def remaining(self) -> int:
        """Scheduler timesteps left (a second-order sampler has about two per step)."""
        return int(self.timesteps.numel())


@dataclass(eq=False)
class ClipVision:
    """CLIP_VISION: a CLIP image encoder (transformers' CLIPVisionModelWithProjection) and how
    pictures are prepared for it (its square picture size, CLIP's mean and std)."""

    model: Any
    device: torch.device
    dtype: torch.dtype
    name: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def cache_nbytes(self) -> int:
        return 0  # the weights belong to the model store, not to the run cache


@dataclass(eq=False)
class Gligen:
    """GLIGEN: a GLIGEN model's weights (nodes.formats.gligen.GligenWeights): its position net,
    and the gated self-attention layers it fuses into the UNet's attention blocks."""

    weights: Any
    position_net: Any
    """diffusers' GLIGENTextBoundingboxProjection, float32 on the CPU."""
    name: str

    def cache_nbytes(self) -> int:
        return 0  # the weights belong to the model store, not to the run cache


@dataclass(eq=False)
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: a CLIPVisionEncode's result, by ComfyUI's names: the last layer's
    tokens (batch, 1 + patches, width; before the final norm), the penultimate layer's, and the
    projected image embeddings (batch, projection width); `mm_projected` stays None (LLaVA's
    projector is not loaded)."""

    last_hidden_state: torch.Tensor
    penultimate_hidden_states: torch.Tensor
    image_embeds: torch.Tensor
    mm_projected: torch.Tensor | None = None

    def cache_nbytes(self) -> int:
        tensors = (self.last_hidden_state, self.penultimate_hidden_states, self.image_embeds)
        return sum(t.numel() * t.element_size() for t in tensors)


MODEL = socket("MODEL", Model)
CLIP = socket("CLIP", Clip)
VAE = socket("VAE", Vae)
CONDITIONING = socket("CONDITIONING", Conditioning)
LATENT = socket("LATENT", Latent)
NOISY_LATENT = socket("NOISY_LATENT", Noisy)
IMAGE = socket("IMAGE", torch.Tensor)
MASK = socket("MASK", torch.Tensor)
CLIP_VISION = socket("CLIP_VISION", ClipVision)
CLIP_VISION_OUTPUT = socket("CLIP_VISION_OUTPUT", ClipVisionOutput)
GLIGEN = socket("GLIGEN", Gligen)
