"""Layer masks: what a pruned model kept, in the dense model's indices. Returned by workers,
stored in the database (``layer_masks``) and enough to rebuild the pruned model from the dense
weights. Importing this module does not import torch (the sweep driver unpickles masks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from twossp.families.base import FamilyAdapter


@dataclass(frozen=True)
class LayerMask:
    layer: int
    attention_kept: bool
    ffn_width: int        # dense FFN width (bits in the mask)
    ffn_mask: bytes       # kept neurons, np.packbits(bool[ffn_width]) (big-endian bit order)

    @property
    def removed_block(self) -> bool:
        """The whole block is gone: no attention and no FFN neuron left."""
        return not self.attention_kept and self.ffn_kept == 0

    @property
    def ffn_kept(self) -> int:
        return int(self.kept_indices().size)

    def kept_indices(self) -> np.ndarray:
        bits = np.unpackbits(np.frombuffer(self.ffn_mask, dtype=np.uint8), count=self.ffn_width)
        return np.flatnonzero(bits)


def pack_indices(indices: Sequence[int] | np.ndarray, width: int) -> bytes:
    bits = np.zeros(width, dtype=bool)
    bits[np.asarray(indices, dtype=np.int64)] = True
    return np.packbits(bits).tobytes()


def layer_masks(num_layers: int, dense_width: int, kept_ffn: Sequence[Sequence[int]] | None,
                removed_attention: list[int], removed_blocks: Sequence[int] = (),
                removed_ffn: Sequence[int] = ()) -> list[LayerMask]:
    """One mask per dense block; ``kept_ffn=None`` means every neuron kept (e.g. the dense model).
    A removed FFN keeps no neuron; a removed block keeps neither its attention nor any neuron."""
    removed = set(removed_attention) | set(removed_blocks)
    masks = []
    for i in range(num_layers):
        kept = kept_ffn[i] if kept_ffn is not None else np.arange(dense_width)
        if i in removed_blocks or i in removed_ffn:
            kept = np.arange(0)
        masks.append(LayerMask(i, i not in removed, dense_width, pack_indices(kept, dense_width)))
    return masks


def apply_masks(model: nn.Module, adapter: FamilyAdapter, masks: list[LayerMask]) -> None:
    """Rebuild a pruned model from the dense one: the same structural surgery, replayed."""
    import torch

    from twossp.prune.width import prune_width

    layers = adapter.layers(model)
    if len(masks) != len(layers):
        raise ValueError(f"{len(masks)} layer masks for a model with {len(layers)} layers")
    ordered = sorted(masks, key=lambda m: m.layer)
    blocks = [m.layer for m in ordered if m.removed_block]
    if blocks:
        adapter.remove_blocks(model, blocks)
    remaining = [m for m in ordered if not m.removed_block]
    if any(0 < m.ffn_kept < m.ffn_width for m in remaining):
        prune_width(model, adapter, [torch.from_numpy(m.kept_indices()) if m.ffn_kept else None for m in remaining])
    for index, m in enumerate(remaining):
        if not m.attention_kept:
            adapter.remove_attention(model, index)
        if m.ffn_kept == 0:
            adapter.remove_ffn(model, index)
