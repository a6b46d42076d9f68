"""Prompts through the text towers as ComfyUI encodes them (comfy/sd1_clip.py, sdxl_clip.py).

Each 77-token chunk is encoded on its own (embedding vectors spliced in at their positions), the
tower's hidden state read at its layer; weighted tokens are pushed away from the empty prompt's
encoding, `(z - z_empty) * w + z_empty`; chunks are concatenated along the tokens. The pooled
text is the first chunk's, at its end token (bigG's projected). SDXL concatenates CLIP-L and
bigG along the width (cut to the shorter), its pooled text from bigG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..formats.textual_inversion import embedding_vectors, find_embedding, read_embedding_file
from ..values import Clip, Conditioning, TextTower
from .prompt_weights import Chunking, Token, tokenize
from .text import hidden_state, towers_patched

PLACEHOLDER = 0  # the id under a spliced embedding vector (never the end token)
WIDTH_ORDER = ("l", "h", "g")
"""How towers' states are joined along the width (SDXL: CLIP-L, then bigG, whose pooled text
conditions the UNet)."""


@dataclass
class Embeddings:
    """`embedding:name` lookups for one prompt: files read once, what went wrong collected."""

    folders: list[Path]
    missing: set[str] = field(default_factory=set)
    misfits: dict[str, set[str]] = field(default_factory=dict)
    """file name -> the towers it has no vectors of the right width for."""
    _files: dict[str, object] = field(default_factory=dict)
    unfit: set[str] = field(default_factory=set)  # names found but of another width

    def lookup(self, tower: TextTower) -> Callable[[str], torch.Tensor | None]:
        def find(name: str) -> torch.Tensor | None:
            path = find_embedding(name, self.folders)
            if path is None:
                return None
            if str(path) not in self._files:
                self._files[str(path)] = read_embedding_file(path)
            vectors = embedding_vectors(self._files[str(path)], tower.key, tower.width)
            if vectors is None:
                self.misfits.setdefault(path.name, set()).add(tower.key)
                self.unfit.add(name)
            return vectors

        return find


@torch.no_grad()
def _encode_chunk(
    tower: TextTower, chunk: list[Token], end_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden state (77, width), pooled (width or projection)) of one chunk."""
    encoder = tower.encoder
    device = next(encoder.parameters()).device
    ids = [t.value if isinstance(t.value, int) else PLACEHOLDER for t in chunk]
    spliced = [(i, t.value) for i, t in enumerate(chunk) if not isinstance(t.value, int)]
    core = getattr(encoder, "text_model", encoder)

    def splice(module, inputs, output):
        for i, vector in spliced:
            output[:, i] = vector.to(device=output.device, dtype=output.dtype)
        return output

    hook = core.embeddings.token_embedding.register_forward_hook(splice) if spliced else None
    try:
        out = encoder(torch.tensor([ids], device=device), output_hidden_states=True)
    finally:
        if hook is not None:
            hook.remove()
    end = ids.index(end_id) if end_id in ids else len(ids) - 1
    final = out.last_hidden_state[0, end]
    projection = getattr(encoder, "text_projection", None)
    pooled = projection(final) if projection is not None else final
    return hidden_state(tower, out)[0], pooled


def encode_tower(
    tower: TextTower, chunks: list[list[Token]], shape: Chunking
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 77 * chunks, width) conditioning and (1, width) pooled text of one tower."""
    weighted = any(t.weight != 1.0 for chunk in chunks for t in chunk)
    encoded = [_encode_chunk(tower, chunk, shape.end) for chunk in chunks]
    states = [z.float() for z, _ in encoded]
    if weighted:
        z_empty = _encode_chunk(tower, shape.empty(), shape.end)[0].float()
        for z, chunk in zip(states, chunks, strict=True):
            weights = torch.tensor([t.weight for t in chunk], device=z.device)[:, None]
            changed = weights != 1.0
            z.copy_(torch.where(changed, (z - z_empty) * weights + z_empty, z))
    return torch.cat(states)[None], encoded[0][1].float()[None]


def encode_prompt(
    clip: Clip, texts: Mapping[str, str], embeddings: Embeddings, pad_chunks: bool = False
) -> Conditioning:
    """The conditioning of a prompt per tower key (the same text for all, or SDXL's text_g /
    text_l). Towers whose chunk counts differ are cut to the shorter (CLIPTextEncode) or, with
    `pad_chunks`, padded with empty chunks to the longer (CLIPTextEncodeSDXL)."""
    shapes = {t.key: Chunking.of(t.tokenizer, t.pad_id) for t in clip.towers}
    chunked = {}
    for t in clip.towers:
        chunked[t.key], missing = tokenize(
            t.tokenizer, texts[t.key], shapes[t.key], embeddings.lookup(t)
        )
        embeddings.missing.update(set(missing) - embeddings.unfit)
    most = max(len(c) for c in chunked.values())
    states, pools = {}, {}
    with towers_patched(clip):
        for tower in clip.towers:
            shape, chunks = shapes[tower.key], chunked[tower.key]
            if pad_chunks:
                chunks += [shape.empty() for _ in range(most - len(chunks))]
            states[tower.key], pools[tower.key] = encode_tower(tower, chunks, shape)
    order = sorted(states, key=WIDTH_ORDER.index)
    pooled = pools["g"] if "g" in pools else pools[order[0]]
    states = [states[k] for k in order]
    cut = min(z.shape[1] for z in states)
    embeds = torch.cat([z[:, :cut] for z in states], dim=-1)
    return Conditioning.of(embeds.to(clip.dtype), pooled.to(clip.dtype))
