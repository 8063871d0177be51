"""Depth baselines that remove whole blocks (docs/method.md, Baselines): ShortGPT's Block
Influence (arXiv 2403.03853) and Gromov et al.'s similarity window (arXiv 2403.17887). Both round
the sparsity up to whole blocks."""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from twossp.budget import blocks_to_remove
from twossp.contracts import Progress, PruneOutcome
from twossp.errors import BudgetError
from twossp.families.base import FamilyAdapter
from twossp.placement import placement_of
from twossp.prune.calibration import block_calls, walk
from twossp.prune.context import ModelContext, PruneContext, Runner


@torch.no_grad()
def last_token_states(model: nn.Module, adapter: FamilyAdapter, samples: torch.Tensor, device: torch.device,
                      progress: Progress | None = None) -> torch.Tensor:
    """(samples, N + 1, d) fp32: the hidden state at the last token entering every block, and
    leaving the last one (before the final norm). Every sample through the decoder stack, blocks
    outside and samples inside (``walk``), no LM head."""
    layers = adapter.layers(model)
    placement = placement_of(model)
    rows: list[list[torch.Tensor]] = [[] for _ in range(samples.shape[0])]

    def record(j: int, states: list[torch.Tensor]) -> None:
        for k, state in enumerate(states):
            rows[k].append(state[0, -1].float().to(placement.device))
        if progress and j:
            progress("block states", j, len(layers))

    firsts, kwargs = block_calls(model, adapter, samples, device)
    walk(layers, [placement.keep(h) for h in firsts], kwargs, visit=record)
    return torch.stack([torch.stack(row) for row in rows])


def block_influence(states: torch.Tensor) -> torch.Tensor:
    """ShortGPT's Block Influence: 1 - cos(input, output) of each block at the last token,
    averaged over the samples. (N,)"""
    return (1 - F.cosine_similarity(states[:, :-1], states[:, 1:], dim=-1)).mean(dim=0)


def lowest_influence(influence: torch.Tensor, count: int) -> list[int]:
    """The ``count`` blocks of lowest influence (ties: the lower index), ascending."""
    order = sorted(range(influence.numel()), key=lambda i: (float(influence[i]), i))
    return sorted(order[:count])


def shortgpt_blocks(states: torch.Tensor, count: int) -> list[int]:
    """The ``count`` blocks of lowest Block Influence on ``states``."""
    return lowest_influence(block_influence(states), count)


def window_similarity(states: torch.Tensor, count: int) -> torch.Tensor:
    """cos(h_l, h_{l+n}) at the last token, averaged over samples, for every start l. (N - n + 1,)"""
    n_layers = states.shape[1] - 1
    return torch.stack([F.cosine_similarity(states[:, start], states[:, start + count], dim=-1).mean()
                        for start in range(n_layers - count + 1)])


def most_similar_window(similarity: torch.Tensor, count: int) -> list[int]:
    """The ``count`` consecutive blocks starting where input and output are most similar (ties: the
    earliest start)."""
    start = max(range(similarity.numel()), key=lambda i: (float(similarity[i]), -i))
    return list(range(start, start + count))


def window_blocks(states: torch.Tensor, count: int) -> list[int]:
    return most_similar_window(window_similarity(states, count), count)


def shared_scores(context: ModelContext, params: dict) -> dict:
    """The ``block states`` shared step: what ShortGPT and the window method rank at every sparsity,
    computed from the states as each run would (the Block Influence, and the window similarity for
    every block count), not the states themselves (samples x (N + 1) x d floats: hundreds of MB for
    a large model's 256 windows)."""
    states = last_token_states(context.model, context.adapter, context.calibration, context.device, context.progress)
    return {"influence": block_influence(states).cpu(),
            "similarity": {count: window_similarity(states, count).cpu() for count in range(1, states.shape[1] - 1)}}


Scores = Callable[[torch.Tensor, int], torch.Tensor]


def _whole_blocks(score: Scores, pick: Callable[[torch.Tensor, int], list[int]],
                  taken: Callable[[dict, int], torch.Tensor]) -> Runner:
    """A sweep runner that scores blocks on last-token states (``score(states, count)``, or ``taken``
    from the ``block states`` step's result) and deletes the ``pick``ed ones."""
    def run(context: PruneContext) -> PruneOutcome:
        model, adapter = context.model, context.adapter
        n = len(adapter.layers(model))
        count = blocks_to_remove(n, context.sparsity)
        if count >= n:
            raise BudgetError(f"sparsity {context.sparsity:g} removes {count} of {n} blocks: nothing would be left")
        start = time.perf_counter()
        scores = (taken(context.shared, count).to(context.device) if context.shared
                  else score(last_token_states(model, adapter, context.calibration, context.device, context.progress),
                             count))
        blocks = pick(scores, count)
        adapter.remove_blocks(model, blocks)
        return PruneOutcome(
            kept_ffn=None, removed_attention=[], removed_blocks=blocks,
            timings={"prune": time.perf_counter() - start},
            details={"removed_blocks": blocks, "blocks_removed": count,
                     "scores": [round(float(v), 6) for v in scores]},
        )
    return run


#: The ``shortgpt`` and ``window`` sweep methods.
run_shortgpt = _whole_blocks(lambda states, count: block_influence(states), lowest_influence,
                             lambda shared, count: shared["influence"])
run_window = _whole_blocks(window_similarity, most_similar_window, lambda shared, count: shared["similarity"][count])
