"""Text conditioning as the diffusers pipelines encode a prompt (the native TextEncode node).

Each tower's prompt is tokenized as the pipelines do it (truncated at 77 tokens, padded with the
tower's pad token), its hidden state read at the tower's layer; SDXL concatenates its towers'
states along the width and takes the pooled text of the last tower (bigG's projection).
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from nodegraph import InputField, Node, NodeContext

from ..formats.families import FAMILIES
from ..loading.patching import patched
from ..loading.residency import RESIDENCY
from ..values import CLIP, CONDITIONING, Clip, Conditioning, TextTower


def hidden_state(tower: TextTower, output: object) -> torch.Tensor:
    """The tower's conditioning from an encoder output (with hidden states)."""
    if tower.layer is None or (tower.layer == -1 and tower.final_norm):
        return output.last_hidden_state  # type: ignore[attr-defined]
    hidden = output.hidden_states[tower.layer]  # type: ignore[attr-defined]
    if tower.final_norm:
        hidden = getattr(tower.encoder, "text_model", tower.encoder).final_layer_norm(hidden)
    return hidden


def pipeline_ids(tower: TextTower, text: str) -> torch.Tensor:
    """Token ids as a diffusers pipeline makes them: truncated, padded with the tower's pad."""
    limit = tower.tokenizer.model_max_length
    ids = tower.tokenizer(text, truncation=True, max_length=limit).input_ids
    return torch.tensor([ids + [tower.pad_id] * (limit - len(ids))])


@torch.no_grad()
def encode_text(clip: Clip, text: str) -> Conditioning:
    """The pipelines' prompt embedding for `text` (and SDXL's pooled text), on the clip's device."""
    states, pooled = [], None
    with towers_patched(clip):
        for tower in clip.towers:
            ids = pipeline_ids(tower, text).to(clip.device)
            mask = None
            if getattr(tower.encoder.config, "use_attention_mask", False):
                mask = (ids != tower.pad_id).long()
            output = tower.encoder(ids, attention_mask=mask, output_hidden_states=True)
            states.append(hidden_state(tower, output))
            pooled = getattr(output, "text_embeds", None)
            if pooled is None:
                pooled = output.pooler_output
    embeds = torch.cat(states, dim=-1).to(dtype=clip.dtype, device=clip.device)
    if not FAMILIES[clip.family].time_ids:
        pooled = None
    return Conditioning.of(embeds, None if pooled is None else pooled.to(clip.dtype))


def towers_patched(clip: Clip) -> ExitStack:
    """One context placing the clip's towers on its device and applying their weight patches."""
    stack = ExitStack()
    stack.enter_context(RESIDENCY.use([t.encoder for t in clip.towers], clip.device))
    for tower in clip.towers:
        mine = [patch for key, patch in clip.patches if key == tower.key]
        stack.enter_context(patched(tower.encoder, mine))
    return stack


class TextEncode(Node):
    """Encode a prompt into conditioning for Denoise (positive or negative)."""

    category = "conditioning"
    display_name = "Text Encode"
    clip: CLIP = InputField(description="The text encoder (from CheckpointLoader).")
    text: str = InputField("", description="The prompt.", multiline=True)

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        return encode_text(self.clip, self.text)
