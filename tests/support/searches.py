"""Naive reference searches, written from the papers' protocols rather than from twossp's code:
every step really removes each remaining candidate on a deep copy of the model and scores the whole
model; the first lowest wins. The pruning tests check that twossp's searches (which reuse block
inputs, skip unchanged prefixes and batch candidates) make the same choices."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch

from tests.support.models import layer_numel
from twossp.evaluate.perplexity import perplexity
from twossp.families.base import FamilyAdapter


def naive_attention_search(model: torch.nn.Module, adapter: FamilyAdapter, steps: int,
                           loss: Callable[[torch.nn.Module], float]) -> tuple[list[int], list[float], torch.nn.Module]:
    """Stage 2 of 2SSP done naively: ``steps`` times, every attention still present removed on a deep
    copy and ``loss`` of that whole model taken; the lowest wins, ties to the lowest index. The
    blocks removed in order, the loss after each removal, and the pruned copy (``model`` is left
    as it was)."""
    model = copy.deepcopy(model)
    removed, losses = [], []
    for _ in range(steps):
        best = None
        for i, layer in enumerate(adapter.layers(model)):
            if not adapter.is_attention_present(layer):
                continue
            candidate = copy.deepcopy(model)
            adapter.remove_attention(candidate, i)
            value = loss(candidate)
            if best is None or value < best[0]:
                best = (value, i)
        adapter.remove_attention(model, best[1])
        removed.append(best[1])
        losses.append(best[0])
    return removed, losses, model


def naive_submodule_search(model: torch.nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, sparsity: float,
                           device: torch.device) -> tuple[list, list[float], list[int], torch.nn.Module]:
    """BlockPruner (arXiv 2406.10594) done naively: every step, every remaining submodule (attention
    first, then FFN, each in block order) really removed on a deep copy and the full model's
    perplexity on ``windows`` taken; the first lowest wins; stop once the removed parameters reach
    ceil(s * P_layers). The removals in order, the perplexity after each, the parameters removed
    after each, and the pruned copy."""
    model = copy.deepcopy(model)
    dense = layer_numel(model)
    target = math.ceil(sparsity * dense)
    order, ppls, removed = [], [], []
    while not removed or removed[-1] < target:
        best = None
        for kind in ("attention", "ffn"):
            for i, layer in enumerate(adapter.layers(model)):
                present = adapter.is_attention_present if kind == "attention" else adapter.is_ffn_present
                if not present(layer):
                    continue
                candidate = copy.deepcopy(model)
                (adapter.remove_attention if kind == "attention" else adapter.remove_ffn)(candidate, i)
                ppl = perplexity(candidate, adapter, windows, device).perplexity
                if best is None or ppl < best[0]:
                    best = (ppl, (kind, i))
        (adapter.remove_attention if best[1][0] == "attention" else adapter.remove_ffn)(model, best[1][1])
        order.append(best[1])
        ppls.append(best[0])
        removed.append(dense - layer_numel(model))
    return order, ppls, removed, model
