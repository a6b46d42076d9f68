"""ComfyUI's text nodes: CLIPTextEncode (prompt syntax, embeddings), the SDXL encoders with their
size and aesthetic conditions, and CLIPSetLastLayer (clip skip)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from nodegraph import InputField, Node, NodeContext

from ..loading.folders import kind_dirs
from ..values import CLIP, CONDITIONING, Clip, Conditioning
from .comfy_encode import Embeddings, encode_prompt

MAX_RESOLUTION = 16384


def require_clip(clip: Clip | None) -> Clip:
    if clip is None:
        raise ValueError("the checkpoint has no text encoder: give this input a CLIP")
    return clip


def encode(
    ctx: NodeContext, clip: Clip | None, texts: Mapping[str, str], pad_chunks: bool = False
) -> Conditioning:
    """Encode per tower, warning of embeddings not found; an embedding that fits no tower of
    this CLIP (another family's) is an error naming the file."""
    clip = require_clip(clip)
    embeddings = Embeddings(kind_dirs("embeddings", ctx.settings.options.get("models") or ()))
    conditioning = encode_prompt(clip, texts, embeddings, pad_chunks)
    keys = {t.key for t in clip.towers}
    for file, towers in sorted(embeddings.misfits.items()):
        widths = ", ".join(f"{t.key.upper()} {t.width}" for t in clip.towers)
        if towers >= keys:
            raise ValueError(
                f"embedding {file} has no vectors of this CLIP's width ({widths}): it was made "
                "for another model family"
            )
        ctx.warn(f"embedding {file} has no vectors for tower {', '.join(sorted(towers))}")
    if embeddings.missing:
        names = ", ".join(sorted(embeddings.missing))
        ctx.warn(f"embedding not found in the embeddings folders, ignored: {names}")
    return conditioning


def _same_text(clip: Clip | None, text: str) -> dict[str, str]:
    return {t.key: text for t in require_clip(clip).towers}


class CLIPTextEncode(Node):
    """Encode a prompt with the text encoder(s), with ComfyUI's weights and embeddings syntax."""

    category = "conditioning"
    display_name = "CLIP Text Encode (Prompt)"
    text: str = InputField("", description="The text to be encoded.", multiline=True)
    clip: CLIP = InputField(description="The CLIP model used for encoding the text.")

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        return encode(ctx, self.clip, _same_text(self.clip, self.text))


SIZE = {"ge": 0, "le": MAX_RESOLUTION}


class CLIPTextEncodeSDXL(Node):
    """SDXL's two prompts (bigG's text_g, CLIP-L's text_l) and its size conditions."""

    category = "advanced/conditioning"
    display_name = "CLIPTextEncodeSDXL"
    clip: CLIP = InputField(description="An SDXL base CLIP.")
    width: int = InputField(1024, description="The original size's width.", **SIZE)
    height: int = InputField(1024, description="The original size's height.", **SIZE)
    crop_w: int = InputField(0, description="Crop offset, left.", **SIZE)
    crop_h: int = InputField(0, description="Crop offset, top.", **SIZE)
    target_width: int = InputField(1024, description="The target size's width.", **SIZE)
    target_height: int = InputField(1024, description="The target size's height.", **SIZE)
    text_g: str = InputField("", description="The prompt for bigG.", multiline=True)
    text_l: str = InputField("", description="The prompt for CLIP-L.", multiline=True)

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        keys = {t.key for t in require_clip(self.clip).towers}
        if keys != {"l", "g"}:
            raise ValueError("CLIPTextEncodeSDXL needs an SDXL base CLIP (CLIP-L and bigG)")
        cond = encode(ctx, self.clip, {"g": self.text_g, "l": self.text_l}, pad_chunks=True)
        sizes = ("width", "height", "crop_w", "crop_h", "target_width", "target_height")
        return cond.with_options(**{k: getattr(self, k) for k in sizes})


class CLIPTextEncodeSDXLRefiner(Node):
    """The SDXL refiner's prompt with its aesthetic score and size conditions."""

    category = "advanced/conditioning"
    display_name = "CLIPTextEncodeSDXLRefiner"
    ascore: float = InputField(6.0, description="Aesthetic score.", ge=0.0, le=1000.0, step=0.01)
    width: int = InputField(1024, description="The original size's width.", **SIZE)
    height: int = InputField(1024, description="The original size's height.", **SIZE)
    text: str = InputField("", description="The prompt.", multiline=True)
    clip: CLIP = InputField(description="The refiner's CLIP.")

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        cond = encode(ctx, self.clip, _same_text(self.clip, self.text))
        return cond.with_options(aesthetic_score=self.ascore, width=self.width, height=self.height)


class CLIPSetLastLayer(Node):
    """Use an earlier layer of the text encoder(s) (clip skip): -1 the last, -2 the one before."""

    category = "conditioning"
    display_name = "CLIP Set Last Layer"
    clip: CLIP = InputField(description="The CLIP model.")
    stop_at_clip_layer: int = InputField(
        -1, description="The layer to stop at.", ge=-24, le=-1, step=1
    )

    def invoke(self, ctx: NodeContext) -> CLIP:
        clip = require_clip(self.clip)
        layer = self.stop_at_clip_layer
        towers = tuple(
            dataclasses.replace(t, layer=layer if -layer <= t.layers else None) for t in clip.towers
        )
        return dataclasses.replace(clip, towers=towers)
