"""Depth baselines that remove whole blocks (PROTOCOL.md, "Baselines in the paper"):
ShortGPT's Block Influence (arXiv 2403.03853) and Gromov et al.'s similarity window
(arXiv 2403.17887). Both round the sparsity up to whole blocks."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from twossp.families.base import FamilyAdapter, layer_output

Progress = Callable[[str, int, int], None]


@torch.no_grad()
def last_token_states(model: nn.Module, adapter: FamilyAdapter, samples: torch.Tensor, device: torch.device,
                      progress: Progress | None = None) -> torch.Tensor:
    """(samples, N + 1, d) fp32: the hidden state at the last token entering every block, and
    leaving the last one (before the final norm). One decoder forward per sample, no LM head."""
    layers = adapter.layers(model)
    states: list[torch.Tensor] = []
    current: list[torch.Tensor | None] = [None] * (len(layers) + 1)

    def entering(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            current[i] = hidden[0, -1].float()
        return hook

    def leaving(module: nn.Module, args: tuple, output: Any) -> None:
        current[-1] = layer_output(output)[0, -1].float()

    handles = [layer.register_forward_pre_hook(entering(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[-1].register_forward_hook(leaving))
    try:
        for k in range(samples.shape[0]):
            adapter.decoder(model)(input_ids=samples[k:k + 1].to(device), use_cache=False)
            states.append(torch.stack(current))  # type: ignore[arg-type]
            if progress:
                progress("block states", k + 1, samples.shape[0])
    finally:
        for h in handles:
            h.remove()
    return torch.stack(states)


def block_influence(states: torch.Tensor) -> torch.Tensor:
    """ShortGPT's Block Influence: 1 - cos(input, output) of each block at the last token,
    averaged over the samples. (N,)"""
    return (1 - F.cosine_similarity(states[:, :-1], states[:, 1:], dim=-1)).mean(dim=0)


def shortgpt_blocks(states: torch.Tensor, count: int) -> list[int]:
    """The ``count`` blocks of lowest influence (ties: the lower index), ascending."""
    influence = block_influence(states)
    order = sorted(range(influence.numel()), key=lambda i: (float(influence[i]), i))
    return sorted(order[:count])


def window_similarity(states: torch.Tensor, count: int) -> torch.Tensor:
    """cos(h_l, h_{l+n}) at the last token, averaged over samples, for every start l. (N - n + 1,)"""
    n_layers = states.shape[1] - 1
    return torch.stack([F.cosine_similarity(states[:, l], states[:, l + count], dim=-1).mean()
                        for l in range(n_layers - count + 1)])


def window_blocks(states: torch.Tensor, count: int) -> list[int]:
    """The ``count`` consecutive blocks starting where input and output are most similar
    (ties: the earliest start)."""
    similarity = window_similarity(states, count)
    start = max(range(similarity.numel()), key=lambda l: (float(similarity[l]), -l))
    return list(range(start, start + count))
