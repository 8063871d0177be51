"""Layer masks: what a pruned model kept, in the dense model's indices. Stored in the database
(``layer_masks``) and enough to rebuild the pruned model from the dense weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from twossp.families.base import FamilyAdapter
from twossp.prune.width import prune_width


@dataclass(frozen=True)
class LayerMask:
    layer: int
    attention_kept: bool
    ffn_width: int        # dense FFN width (bits in the mask)
    ffn_mask: bytes       # kept neurons, np.packbits(bool[ffn_width]) (big-endian bit order)

    @property
    def ffn_kept(self) -> int:
        return int(self.kept_indices().size)

    def kept_indices(self) -> np.ndarray:
        bits = np.unpackbits(np.frombuffer(self.ffn_mask, dtype=np.uint8), count=self.ffn_width)
        return np.flatnonzero(bits)


def pack_indices(indices: torch.Tensor | np.ndarray, width: int) -> bytes:
    bits = np.zeros(width, dtype=bool)
    bits[np.asarray(indices, dtype=np.int64)] = True
    return np.packbits(bits).tobytes()


def layer_masks(num_layers: int, dense_width: int, kept_ffn: list[torch.Tensor] | None,
                removed_attention: list[int]) -> list[LayerMask]:
    removed = set(removed_attention)
    masks = []
    for i in range(num_layers):
        kept = kept_ffn[i] if kept_ffn is not None else torch.arange(dense_width)
        masks.append(LayerMask(i, i not in removed, dense_width, pack_indices(kept, dense_width)))
    return masks


def apply_masks(model: nn.Module, adapter: FamilyAdapter, masks: list[LayerMask]) -> None:
    """Rebuild a pruned model from the dense one: the same structural surgery, replayed."""
    layers = adapter.layers(model)
    if len(masks) != len(layers):
        raise ValueError(f"{len(masks)} layer masks for a model with {len(layers)} layers")
    ordered = sorted(masks, key=lambda m: m.layer)
    if any(m.ffn_kept < m.ffn_width for m in ordered):
        prune_width(model, adapter, [torch.from_numpy(m.kept_indices()) for m in ordered])
    for m in ordered:
        if not m.attention_kept:
            adapter.remove_attention(model, m.layer)
