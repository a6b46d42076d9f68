"""ComfyUI's text nodes: CLIPTextEncode and CLIPSetLastLayer."""

from __future__ import annotations

import dataclasses

from nodegraph import InputField, Node, NodeContext

from ..values import CLIP, CONDITIONING, Clip
from .text import encode_text


def require_clip(clip: Clip | None) -> Clip:
    if clip is None:
        raise ValueError("the checkpoint has no text encoder: load a CLIP for this input")
    return clip


class CLIPTextEncode(Node):
    """Encode a prompt with the text encoder(s) into conditioning."""

    category = "conditioning"
    display_name = "CLIP Text Encode (Prompt)"
    text: str = InputField("", description="The text to be encoded.", multiline=True)
    clip: CLIP = InputField(description="The CLIP model used for encoding the text.")

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        return encode_text(require_clip(self.clip), self.text)


class CLIPSetLastLayer(Node):
    """Use an earlier layer of the text encoder(s) (clip skip): -1 the last, -2 the one before."""

    category = "conditioning"
    display_name = "CLIP Set Last Layer"
    clip: CLIP = InputField(description="The CLIP model.")
    stop_at_clip_layer: int = InputField(-1, description="The layer to stop at.", ge=-24, le=-1)

    def invoke(self, ctx: NodeContext) -> CLIP:
        clip = require_clip(self.clip)
        towers = tuple(
            dataclasses.replace(
                t, layer=self.stop_at_clip_layer if -self.stop_at_clip_layer <= t.layers else -1
            )
            for t in clip.towers
        )
        return dataclasses.replace(clip, towers=towers)
