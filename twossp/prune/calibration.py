"""Calibration machinery shared by every method: hooks that are always removed, block inputs
captured from one real forward, and the scorer of candidate removals that 2SSP's stage 2 and
BlockPruner share (docs/method.md, Stage 2).

Scoring a candidate reuses prefixes: the hidden state entering block i does not depend on anything
at blocks >= i, so every block's input is kept from one pass, a candidate at block i runs only
blocks i..N-1, and the winner's freshly computed block inputs become the state for the next step.
The choices are those of the naive search (the same operations on the same tensors).

``score_batched`` scores many candidates at once for accelerators: candidates run as the batch of
one forward through the blocks after their own, each block once per group of candidates.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Container, Iterator, Literal, Sequence

import torch
from torch import nn

from twossp.families.base import FamilyAdapter, layer_output, nll_sum


@contextmanager
def hooked(modules: Sequence[nn.Module], hook: Callable[..., Any],
           when: Literal["before", "after"] = "before") -> Iterator[None]:
    """Run the body with ``hook(i, module, args, kwargs)`` (before each module's forward) or
    ``hook(i, module, args, kwargs, output)`` (after it) registered on every module of ``modules``;
    the hooks are removed on exit, whatever happens in the body."""
    def bind(i: int) -> Callable[..., Any]:
        return lambda *call: hook(i, *call)

    register = "register_forward_pre_hook" if when == "before" else "register_forward_hook"
    handles = [getattr(module, register)(bind(i), with_kwargs=True) for i, module in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class BlockCall:
    """What a decoder block received in one forward: its input hidden state (None where not
    kept) and its other call arguments (attention mask, positions, rotary embeddings)."""

    hidden: torch.Tensor | None
    kwargs: dict[str, Any]


class _Stop(Exception):
    """Raised by a capture hook once nothing after it is needed."""


def hidden_input(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """A decoder layer's input hidden state, passed positionally or by name."""
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def block_inputs(model: nn.Module, adapter: FamilyAdapter, window: torch.Tensor, device: torch.device,
                 keep_hidden: Container[int] | None = None, stop_after: int | None = None) -> list[BlockCall]:
    """One decoder forward of ``window`` (L tokens; no KV cache), and every block's call.

    ``keep_hidden``: the blocks whose input hidden state is kept (default: all). ``stop_after``: end
    the forward once that block's input is captured (the later blocks' calls are then absent)."""
    layers = adapter.layers(model)
    calls: list[BlockCall] = []

    def capture(i: int, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = hidden_input(args, kwargs) if keep_hidden is None or i in keep_hidden else None
        calls.append(BlockCall(hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        if i == stop_after:
            raise _Stop

    with hooked(layers, capture):
        try:
            adapter.decoder(model)(input_ids=window.view(1, -1).to(device), use_cache=False)
        except _Stop:
            pass
    return calls


def first_lowest(scores: Sequence[float]) -> int | None:
    """The index of the lowest score, the first of equal ones (a non-finite score never wins), as a
    one-at-a-time search that keeps a candidate only when it is strictly better; None if none is finite."""
    best, at = math.inf, None
    for k, score in enumerate(scores):
        if score < best:
            best, at = score, k
    return at


class BlockInputs:
    """Every block's input and call arguments for each calibration window, from one real forward,
    and the scorer of candidate removals built on them (module docstring)."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, device: torch.device) -> None:
        self.model, self.adapter, self.windows = model, adapter, windows
        self.layers = adapter.layers(model)
        self.norm = adapter.final_norm(model)
        self.inputs: list[list[torch.Tensor]] = []
        self.kwargs: list[list[dict[str, Any]]] = []
        for window in windows:
            calls = block_inputs(model, adapter, window, device)
            self.inputs.append([call.hidden for call in calls])
            self.kwargs.append([call.kwargs for call in calls])

    @property
    def tokens(self) -> int:
        """Predicted tokens over all windows (every position but the last of each)."""
        return self.windows.shape[0] * (self.windows.shape[1] - 1)

    @torch.no_grad()
    def score_from(self, block: int) -> tuple[float, list[list[torch.Tensor]]]:
        """Run blocks ``block``..N-1 of the model as it is now (a candidate removal in effect) on
        every window from the stored inputs: the summed next-token NLL over all windows, and per
        window the recomputed inputs of blocks ``block + 1``..N-1 (for ``adopt``)."""
        nll, produced = 0.0, []
        for w, window in enumerate(self.windows):
            h, outs = self.inputs[w][block], []
            for j in range(block, len(self.layers)):
                h = layer_output(self.layers[j](h, **self.kwargs[w][j]))
                outs.append(h)
            nll += float(nll_sum(self.adapter, self.model, self.norm(outs.pop()), window))
            produced.append(outs)
        return nll, produced

    @torch.no_grad()
    def score_batched(self, candidates: Sequence[tuple[int, Callable[[], ContextManager[Any]]]],
                      batch: int) -> list[float]:
        """The summed NLL over all windows of each candidate (its block, and a context in which its
        removal is in effect there), as ``score_from`` gives them one at a time, with up to ``batch``
        candidates in one forward: in block order, each group runs every block from its first
        candidate's on once, on the hidden states of the candidates that started before that block;
        a candidate starts at its own block, from the stored input, with its removal in effect.
        Each candidate still runs exactly its own suffix of blocks."""
        order = sorted(range(len(candidates)), key=lambda c: candidates[c][0])
        nll = [0.0] * len(candidates)
        for w, window in enumerate(self.windows):
            for g in range(0, len(order), batch):
                group = order[g:g + batch]
                hidden, members = None, []
                for j in range(candidates[group[0]][0], len(self.layers)):
                    kwargs = self.kwargs[w][j]
                    if hidden is not None:
                        hidden = layer_output(self.layers[j](hidden, **kwargs))
                    for c in (c for c in group if candidates[c][0] == j):
                        with candidates[c][1]():
                            started = layer_output(self.layers[j](self.inputs[w][j], **kwargs))
                        hidden = started if hidden is None else torch.cat([hidden, started])
                        members.append(c)
                final = self.norm(hidden)
                for row, c in enumerate(members):
                    nll[c] += float(nll_sum(self.adapter, self.model, final[row:row + 1], window))
        return nll

    def choose(self, pool: Sequence[Any], block_of: Callable[[Any], int], bypass: Callable[[Any], ContextManager[Any]],
               batch: int = 1, on_scored: Callable[[int], None] | None = None) -> tuple[Any, float, list, int]:
        """The candidate of ``pool`` (in the search's order) whose removal, in effect within
        ``bypass(candidate)`` at block ``block_of(candidate)``, gives the lowest NLL (the first of
        equal ones; None if none is finite), that NLL, the block inputs after it (for ``adopt``), and
        the layer forwards spent. ``batch`` > 1: scored ``score_batched``, then the winner's suffix
        run once more alone, so its NLL and block inputs are the one-at-a-time search's own."""
        n, m = len(self.layers), len(self.windows)
        if batch > 1:
            scores = self.score_batched([(block_of(c), lambda c=c: bypass(c)) for c in pool], batch)
            forwards = sum(n - block_of(c) for c in pool) * m
            if on_scored:
                on_scored(len(pool))
            k = first_lowest(scores)
            if k is None:
                return None, math.inf, [], forwards
            with bypass(pool[k]):
                nll, produced = self.score_from(block_of(pool[k]))
            return pool[k], nll, produced, forwards + (n - block_of(pool[k])) * m
        best, best_nll, best_inputs, forwards = None, math.inf, [], 0
        for candidate in pool:
            with bypass(candidate):
                nll, produced = self.score_from(block_of(candidate))
            forwards += (n - block_of(candidate)) * m
            if nll < best_nll:
                best, best_nll, best_inputs = candidate, nll, produced
            if on_scored:
                on_scored(1)
        return best, best_nll, best_inputs, forwards

    def adopt(self, block: int, produced: list[list[torch.Tensor]]) -> None:
        """Make a chosen removal at ``block`` the new state: later blocks' inputs as it computed them."""
        for w, outs in enumerate(produced):
            self.inputs[w][block + 1:] = outs
