"""Upscaling a picture tile by tile, as ComfyUI tiles: overlapping tiles with feathered edges,
averaged by their weights where they meet, so any size fits the device's memory."""

from __future__ import annotations

from collections.abc import Callable

import torch

Model = Callable[[torch.Tensor], torch.Tensor]


def spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, length) of the tiles along a side of `size` pixels; the last ends at the edge."""
    if size <= tile:
        return [(0, size)]
    starts = range(0, size - overlap, tile - overlap)
    return [(s, min(tile, size - s)) for s in (min(start, size - overlap) for start in starts)]


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    """How many tiles one picture takes (ComfyUI's progress steps per picture)."""
    return len(spans(height, tile, overlap)) * len(spans(width, tile, overlap))


def feather(length: int, width: int) -> torch.Tensor:
    """Weights along one side of an upscaled tile: ramps of `width` pixels at both ends."""
    weights = torch.ones(length, dtype=torch.float64)
    if 0 < width < length:
        ramp = torch.arange(1, width + 1, dtype=torch.float64) / width
        weights[:width] *= ramp
        weights[length - width :] *= ramp.flip(0)
    return weights.float()


def tiled_scale(
    images: torch.Tensor,
    model: Model,
    scale: float,
    tile: int,
    overlap: int,
    on_tile: Callable[[], None] = lambda: None,
) -> torch.Tensor:
    """Pictures (B, C, H, W) through `model` (one (1, C, h, w) tile -> (1, C', h*scale, w*scale))
    in tiles of at most `tile` pixels overlapping by `overlap`; on the pictures' device."""
    batch, _, height, width = images.shape
    size = (round(height * scale), round(width * scale))
    rows, cols = spans(height, tile, overlap), spans(width, tile, overlap)
    edge = round(overlap * scale)
    results = []
    for one in images.split(1):
        if len(rows) == len(cols) == 1:
            results.append(model(one).to(images.device, torch.float32))
            on_tile()
            continue
        total = weight = None
        for y, h in rows:
            for x, w in cols:
                piece = model(one[..., y : y + h, x : x + w]).to(images.device, torch.float32)
                ph, pw = piece.shape[-2:]
                mask = (feather(ph, edge)[:, None] * feather(pw, edge)[None, :]).to(piece.device)
                if total is None:
                    total = piece.new_zeros((1, piece.shape[1], *size))
                    weight = piece.new_zeros((1, 1, *size))
                top, left = round(y * scale), round(x * scale)
                total[..., top : top + ph, left : left + pw] += piece * mask
                weight[..., top : top + ph, left : left + pw] += mask
                on_tile()
        results.append(total / weight)
    return torch.cat(results) if batch else images.new_zeros((0, 3, *size))
