"""ComfyUI's prompt syntax: `(words)` x1.1, `(words:1.3)`, nesting, `\\(` escapes, `embedding:name`,
and the cut into 77-token chunks (comfy/sd1_clip.py, read for behaviour).

`[words]` has no meaning to ComfyUI (its brackets are ordinary text), and none here either.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

CHUNK = 77
UNSPLIT_WORD = 8
"""A piece shorter than this many tokens is moved whole to the next chunk rather than cut."""
EMBEDDING = "embedding:"
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))


@dataclass(frozen=True)
class Chunking:
    """A tower's chunk layout: start and end tokens, padding, length (77 for CLIP)."""

    start: int = 49406
    end: int = 49407
    pad: int = 49407
    length: int = CHUNK

    @classmethod
    def of(cls, tokenizer, pad: int) -> Chunking:
        """From the tokenizer itself (ComfyUI reads start and end off an empty prompt)."""
        start, end = tokenizer("")["input_ids"][:2]
        return cls(start, end, pad, min(int(tokenizer.model_max_length), CHUNK))

    def empty(self) -> list[Token]:
        """The empty prompt's chunk (what weights are measured from)."""
        return [Token(self.start), Token(self.end), *[Token(self.pad)] * (self.length - 2)]

    def close(self, chunk: list[Token]) -> None:
        chunk.append(Token(self.end))
        chunk.extend([Token(self.pad)] * (self.length - len(chunk)))


@dataclass(frozen=True)
class Token:
    """One position of a chunk: a token id, or an embedding vector spliced in; and its weight."""

    value: int | torch.Tensor
    weight: float = 1.0


def _escape(text: str) -> str:
    for plain, hidden in _ESCAPES:
        text = text.replace(plain, hidden)
    return text


def _unescape(text: str) -> str:
    for plain, hidden in _ESCAPES:
        text = text.replace(hidden, plain[1])
    return text


def _groups(text: str) -> list[str]:
    """Split at the outermost parentheses: 'a (b (c)) d' -> ['a ', '(b (c))', ' d']."""
    parts, current, depth = [], "", 0
    for char in text:
        if char == "(":
            if depth == 0 and current:
                parts.append(current)
                current = ""
            current += char
            depth += 1
        elif char == ")":
            depth -= 1
            current += char
            if depth == 0:
                parts.append(current)
                current = ""
        else:
            current += char
    if current:
        parts.append(current)
    return parts


def _parse(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for part in _groups(text):
        if len(part) >= 2 and part[0] == "(" and part[-1] == ")":
            inner, inner_weight = part[1:-1], weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += _parse(inner, inner_weight)
        else:
            out.append((part, weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """(text, weight) segments of a prompt; `\\(` and `\\)` are literal parentheses."""
    return [(_unescape(part), weight) for part, weight in _parse(_escape(text), 1.0)]


Lookup = Callable[[str], torch.Tensor | None]


def _embedding(name: str, lookup: Lookup) -> tuple[torch.Tensor | None, str, str]:
    """(vectors, leftover text, the name looked up) for the text after `embedding:`."""
    first, *rest = name.split() or [""]
    leftover = " ".join(rest)
    found = lookup(first)
    stripped = first.strip(",")
    if found is None and len(stripped) < len(first):
        return lookup(stripped), f"{first[len(stripped) :]} {leftover}", stripped
    return found, leftover, first


def _pieces(text: str, weight: float, tokenizer, lookup: Lookup, missing: list[str]):
    """Groups of tokens, in order: the segment's text between embeddings, and each embedding."""
    split = re.split(f" {EMBEDDING}|\n{EMBEDDING}", text)
    words = [split[0], *(EMBEDDING + s for s in split[1:])]
    for word in (w for w in words if w):
        if word.startswith(EMBEDDING):
            vectors, word, name = _embedding(word[len(EMBEDDING) :].strip("\n"), lookup)
            if vectors is None:
                missing.append(name)
            else:
                yield [Token(row, weight) for row in vectors.reshape(-1, vectors.shape[-1])]
            if not word:
                continue
        yield [Token(t, weight) for t in tokenizer(word, verbose=False)["input_ids"][1:-1]]


def tokenize(
    tokenizer, text: str, shape: Chunking, lookup: Lookup
) -> tuple[list[list[Token]], list[str]]:
    """The prompt as chunks (start, up to length - 2 tokens, end, padding) and the embedding
    names not found (left out, as ComfyUI does)."""
    missing: list[str] = []
    chunks: list[list[Token]] = [[Token(shape.start)]]
    for segment, weight in parse_weights(text):
        for group in _pieces(segment, weight, tokenizer, lookup, missing):
            large = len(group) >= UNSPLIT_WORD
            while group:
                chunk = chunks[-1]
                room = shape.length - 1 - len(chunk)
                if len(group) <= room:
                    chunk.extend(group)
                    break
                if large:  # a long piece is cut where the chunk ends
                    chunk.extend(group[:room])
                    group = group[room:]
                shape.close(chunk)
                chunks.append([Token(shape.start)])
    shape.close(chunks[-1])
    return chunks, missing
