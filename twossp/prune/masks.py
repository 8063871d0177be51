"""Rebuilding a pruned model from the dense one and its layer masks (``twossp.contracts.LayerMask``):
the same structural surgery the method did, replayed. ``twossp export`` and the benchmark use it."""

from __future__ import annotations

import torch
from torch import nn

from twossp.contracts import LayerMask
from twossp.families.base import FamilyAdapter
from twossp.prune.width import prune_width


def apply_masks(model: nn.Module, adapter: FamilyAdapter, masks: list[LayerMask]) -> None:
    """Rebuild a pruned model from the dense one: the same structural surgery, replayed."""
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
