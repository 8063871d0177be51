"""Perplexity as the evaluation protocol defines it (docs/evaluation.md, Perplexity): non-overlapping
windows (the short tail dropped), each window its own sequence (no padding, no cross-window
attention), perplexity = exp(token-weighted mean next-token NLL). Windows are run ``batch`` at a
time (an accelerator's setting; equal windows need no padding), the NLLs summed in window order."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from twossp.contracts import Progress
from twossp.families.base import FamilyAdapter, nll_sum
from twossp.placement import placement_of
from twossp.prune.calibration import block_calls, walk


def make_windows(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Cut a 1-D token stream into consecutive windows of ``seq_len``; the incomplete tail is dropped."""
    n = tokens.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    return tokens[: n * seq_len].view(n, seq_len)


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    nll_sum: float
    tokens: int
    windows: int


@torch.no_grad()
def perplexity(model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, device: torch.device,
               progress: Progress | None = None, phase: str = "evaluate", batch: int = 1) -> Perplexity:
    if windows.shape[0] == 0:
        raise ValueError("no complete window to evaluate: the text is shorter than one window")
    if placement_of(model).blockwise:
        return _blockwise(model, adapter, windows, device, progress, phase, batch)
    decoder = adapter.decoder(model)
    total, tokens = 0.0, 0
    for start in range(0, windows.shape[0], batch):
        ids = windows[start:start + batch].to(device)
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
        for row in range(ids.shape[0]):
            total += float(nll_sum(adapter, model, hidden[row:row + 1], ids[row]))
            tokens += ids.shape[1] - 1
        if progress:
            progress(phase, start + ids.shape[0], windows.shape[0])
    return Perplexity(math.exp(total / tokens), total, tokens, windows.shape[0])


@torch.no_grad()
def _blockwise(model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, device: torch.device,
               progress: Progress | None, phase: str, batch: int) -> Perplexity:
    """``perplexity`` for a model whose blocks should each be visited once (a streamed model): every
    group of ``batch`` windows through the blocks, blocks outside and groups inside, the states kept
    where the placement keeps them; each group's arithmetic is that of its own decoder forward."""
    placement, layers = placement_of(model), adapter.layers(model)
    firsts, kwargs = block_calls(model, adapter, windows, device)
    groups = [placement.keep(torch.cat(firsts[start:start + batch])) for start in range(0, len(firsts), batch)]

    def advanced(j: int, states: list[torch.Tensor]) -> None:
        if progress and 0 < j < len(layers):
            progress(phase, 0, windows.shape[0])

    final = walk(layers, groups, kwargs, visit=advanced)
    norm = adapter.final_norm(model)
    total, tokens = 0.0, 0
    for g, hidden in enumerate(final):
        hidden = norm(hidden)
        for row in range(hidden.shape[0]):
            total += float(nll_sum(adapter, model, hidden[row:row + 1], windows[g * batch + row]))
            tokens += windows.shape[1] - 1
        if progress:
            progress(phase, min((g + 1) * batch, windows.shape[0]), windows.shape[0])
    return Perplexity(math.exp(total / tokens), total, tokens, windows.shape[0])
