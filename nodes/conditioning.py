"""Text conditioning: a prompt through the tokenizer and text encoder, as diffusers does it."""

from __future__ import annotations

import torch

from nodegraph import InputField, Node, NodeContext

from .values import CLIP, CONDITIONING, Clip


@torch.no_grad()
def encode_text(clip: Clip, text: str) -> torch.Tensor:
    """Hidden states of the text encoder for `text`: (1, tokens, width), on the clip's device.

    Tokenized exactly as StableDiffusionPipeline does (padded to the tokenizer's maximum length,
    truncated past it), so an empty text gives the pipeline's unconditional embedding.
    """
    tokens = clip.tokenizer(
        [text],
        padding="max_length",
        max_length=clip.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    mask = None
    if getattr(clip.text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(clip.device)
    hidden = clip.text_encoder(tokens.input_ids.to(clip.device), attention_mask=mask)[0]
    return hidden.to(dtype=clip.dtype, device=clip.device)


class TextEncode(Node):
    """Encode a prompt into conditioning for Denoise (positive or negative)."""

    category = "conditioning"
    display_name = "Text Encode"
    clip: CLIP = InputField(description="The text encoder (from CheckpointLoader).")
    text: str = InputField("", description="The prompt.", multiline=True)

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        return encode_text(self.clip, self.text)
