"""What the UNet takes besides the latent: text, SDXL's pooled text and size conditions, an unCLIP
model's image class label, and the inpainting or InstructPix2Pix channels, batched for
classifier-free guidance (negative first, as diffusers does)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..conditioning.gligen import GLIGEN_KEY, GligenBoxes
from ..conditioning.unclip import (
    MERGE_AUGMENTATION,
    MERGE_KEY,
    UNCLIP_KEY,
    class_label,
    sdxl_pooled,
)
from ..control.residuals import ADAPTER_FEATURES, adapter_added
from ..formats.families import FAMILIES, IP2P_CHANNELS
from ..latents.scaling import common_upscale
from ..values import Cond, Model
from .comfy.inpaint import concat_mask, resize_to_batch_size
from .gligen import fused, position_inputs

DEFAULT_AESTHETIC = {"positive": 6.0, "negative": 2.5}
"""The SDXL refiner's aesthetic scores when the conditioning names none (ComfyUI, diffusers)."""
BLACK_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)
"""ComfyUI's latent of a black picture: the masked image an inpainting UNet sees with no mask."""


def time_ids(model: Model, cond: Cond, latents: torch.Tensor, role: str) -> list[float]:
    """SDXL's size conditions, in ComfyUI's order; sizes default to the latent's, in pixels."""
    extras = cond.extras
    height = extras.get("height", latents.shape[2] * 8)
    width = extras.get("width", latents.shape[3] * 8)
    ids = [height, width, extras.get("crop_h", 0), extras.get("crop_w", 0)]
    if FAMILIES[model.family].aesthetic:
        return [*ids, extras.get("aesthetic_score", DEFAULT_AESTHETIC[role])]
    return [*ids, extras.get("target_height", height), extras.get("target_width", width)]


def _batch(tensor: torch.Tensor, n: int, model: Model, what: str) -> torch.Tensor:
    tensor = tensor.to(device=model.device, dtype=model.dtype)
    if tensor.shape[0] == n:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(n, *tensor.shape[1:])
    raise ValueError(f"{what} of batch {tensor.shape[0]} cannot guide a batch of {n}")


def _same_length(texts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Prompts of different chunk counts, each repeated to their least common multiple of
    tokens (as ComfyUI batches a long prompt with a short one)."""
    lengths = {t.shape[1] for t in texts}
    if len(lengths) == 1:
        return texts
    common = math.lcm(*lengths)
    return [t.repeat(1, common // t.shape[1], 1) for t in texts]


def _concat(
    model: Model,
    latents: torch.Tensor,
    cond: Cond,
    masked: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """A UNet's extra channels (ComfyUI's concat_cond). InstructPix2Pix (8 channels): the
    picture's latent (`_ip2p_concat`). Inpainting: the mask and the masked picture's latent,
    from the conditioning (InpaintModelConditioning) or the latent's noise mask; with neither,
    a mask of ones over a black picture."""
    in_channels = int(model.unet.config.in_channels)
    extra = in_channels - latents.shape[1]
    if extra <= 0:
        return None
    if in_channels == IP2P_CHANNELS:
        concat = _ip2p_concat(latents, cond)
        return model.latent_in(concat) if model.edm else concat  # CosXL Edit: scaled
    n, _, h, w = latents.shape
    mask = cond.extras.get("concat_mask", None if masked is None else masked[0])
    if mask is None:
        ones = torch.ones((n, 1, h, w), device=latents.device, dtype=latents.dtype)
        black = torch.tensor(BLACK_LATENT, device=latents.device, dtype=latents.dtype)
        channels = [ones, black.view(1, -1, 1, 1).expand(n, -1, h, w)]
    else:
        image = cond.extras.get("concat_latent_image")
        image = masked[1] if image is None else model.latent_in(image.to(latents.device))
        if image.shape[1:] != latents.shape[1:]:
            image = common_upscale(image.float(), w, h, "bilinear", "center")
        image = resize_to_batch_size(image, n)
        channels = [concat_mask(mask.to(latents.device), latents), image]
    concat = torch.cat([c.to(latents.dtype) for c in channels], dim=1)
    if concat.shape[1] != extra:
        raise ValueError(f"the UNet takes {extra} extra input channels; nodegraph knows 5")
    return concat


def _ip2p_concat(latents: torch.Tensor, cond: Cond) -> torch.Tensor:
    """An InstructPix2Pix UNet's extra channels (ComfyUI's IP2P concat_cond): the picture's
    latent as the VAE gave it (not scaled into the model's space: SD 1.x's and diffusers-trained
    SDXL's process_ip2p_image_in is the identity; CosXL Edit's scales it, see `_concat`),
    bilinear to the latent's size, fitted to its batch; zeros without one."""
    image = cond.extras.get("concat_latent_image")
    if image is None:
        return torch.zeros_like(latents)
    image = image.to(latents.device)
    if image.shape[1:] != latents.shape[1:]:
        h, w = latents.shape[2:]
        image = common_upscale(image.float(), w, h, "bilinear", "center")
    return resize_to_batch_size(image, latents.shape[0]).to(latents.dtype)


def _class_labels(
    model: Model, conds: list[tuple[str, Cond]], n: int, seed: int | None
) -> torch.Tensor | None:
    """An unCLIP UNet's class labels (ComfyUI's adm `y`): each prompt's image entries."""
    config = model.unet.config
    if getattr(config, "class_embed_type", None) != "projection":
        return None
    width = int(config.projection_class_embeddings_input_dim)
    labels = []
    for _, c in conds:
        merge = c.extras.get(MERGE_KEY, MERGE_AUGMENTATION)
        label = class_label(c.extras.get(UNCLIP_KEY, ()), width, seed or 0, merge)
        labels.append(_batch(label, n, model, "unCLIP image conditioning"))
    return torch.cat(labels)


def _pooled(cond: Cond, seed: int | None) -> torch.Tensor:
    """SDXL's pooled text, or the pictures' embeddings unCLIPConditioning gave the prompt."""
    if cond.pooled is None:
        raise ValueError("an SDXL model needs pooled text: encode the prompt with an SDXL CLIP")
    entries = cond.extras.get(UNCLIP_KEY)
    if not entries:
        return cond.pooled
    return sdxl_pooled(entries, int(cond.pooled.shape[-1]), seed or 0)


def _gligen(conds: list[tuple[str, Cond]]) -> GligenBoxes | None:
    """The GLIGEN boxes prompts batched together share (ComfyUI runs a prompt with boxes in a
    batch of its own; a negative without boxes has the positive's by then)."""
    found = {id(b): b for _, c in conds if (b := c.extras.get(GLIGEN_KEY)) is not None}
    if len(found) > 1:
        raise ValueError("prompts with different GLIGEN boxes cannot share a UNet batch")
    return next(iter(found.values()), None)


@dataclass
class UnetInputs:
    """The UNet's keyword inputs for one sampling run, already batched."""

    text: torch.Tensor
    added: dict[str, torch.Tensor] | None
    concat: torch.Tensor | None
    class_labels: torch.Tensor | None = None
    gligen: GligenBoxes | None = None

    @classmethod
    def build(
        cls,
        model: Model,
        latents: torch.Tensor,
        positive: Cond,
        negative: Cond | None,
        seed: int | None = None,
    ) -> UnetInputs:
        """Inputs for the positive prompt, batched after the negative one when there is one."""
        conds = [("positive", positive)]
        if negative is not None:
            conds.insert(0, ("negative", negative))
        return cls.batched(model, latents, conds, seed=seed)

    @classmethod
    def batched(
        cls,
        model: Model,
        latents: torch.Tensor,
        conds: list[tuple[str, Cond]],
        masked: tuple[torch.Tensor, torch.Tensor] | None = None,
        seed: int | None = None,
    ) -> UnetInputs:
        """Inputs for several prompts batched in the given order; each prompt's role
        ("positive" / "negative") picks the SDXL refiner's default aesthetic score; `seed` is
        the sampling seed (an unCLIP model's image noise)."""
        n = latents.shape[0]
        text = torch.cat(
            _same_length([_batch(c.embeds, n, model, "conditioning") for _, c in conds])
        )
        added = None
        if FAMILIES[model.family].time_ids:
            pooled, ids = [], []
            for role, c in conds:
                pooled.append(_batch(_pooled(c, seed), n, model, "pooled conditioning"))
                row = torch.tensor([time_ids(model, c, latents, role)], dtype=model.dtype)
                ids.append(row.to(model.device).expand(n, -1))
            added = {"text_embeds": torch.cat(pooled), "time_ids": torch.cat(ids)}
        concats = [_concat(model, latents, c, masked) for _, c in conds]
        concat = None if concats[0] is None else torch.cat(concats)
        labels = _class_labels(model, conds, n, seed)
        return cls(text, added, concat, labels, _gligen(conds))

    def crop(self, area: tuple[int, int, int, int] | None) -> UnetInputs:
        """The inputs for the part of the latent in an area (h, w, y, x): the inpainting
        channels are cut to it; text and size conditions stay."""
        if area is None or self.concat is None:
            return self
        h, w, y, x = area
        concat = self.concat[:, :, y : y + h, x : x + w]
        return UnetInputs(self.text, self.added, concat, self.class_labels, self.gligen)

    @classmethod
    def joined(cls, parts: list[UnetInputs]) -> UnetInputs:
        """Several prompts' inputs batched in order (texts repeated to a common length)."""
        text = torch.cat(_same_length([p.text for p in parts]))
        added = None
        if parts[0].added is not None:
            added = {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}
        concat = None
        if parts[0].concat is not None:
            concat = torch.cat([p.concat for p in parts])
        labels = None
        if parts[0].class_labels is not None:
            labels = torch.cat([p.class_labels for p in parts])
        if any(p.gligen is not None for p in parts) and len(parts) > 1:
            raise ValueError("a prompt with GLIGEN boxes runs in a UNet batch of its own")
        return cls(text, added, concat, labels, parts[0].gligen)

    def run(
        self, model: Model, model_in: torch.Tensor, t: Any, residuals: dict[str, Any] | None = None
    ) -> torch.Tensor:
        """The UNet's prediction for a (guidance-batched) latent at timestep t, with the
        ControlNets' residuals and adapters' features (nodes.control.residuals) if any."""
        if self.concat is not None:
            model_in = torch.cat([model_in, self.concat], dim=1)
        kwargs = dict(residuals or {})
        with contextlib.ExitStack() as stack:
            if self.gligen is not None:
                stack.enter_context(fused(model.unet, self.gligen.model, model.dtype))
                boxes = position_inputs(self.gligen, model_in.shape, model_in.device)
                kwargs["cross_attention_kwargs"] = {"gligen": boxes}
            stack.enter_context(adapter_added(model.unet, kwargs.pop(ADAPTER_FEATURES, None)))
            return model.unet(
                model_in,
                t,
                encoder_hidden_states=self.text,
                class_labels=self.class_labels,
                added_cond_kwargs=self.added,
                return_dict=False,
                **kwargs,
            )[0]
