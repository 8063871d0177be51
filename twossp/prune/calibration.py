"""Calibration machinery shared by every method: hooks that are always removed, block inputs
captured from one real forward, and the scorer of candidate removals that 2SSP's stage 2 and
BlockPruner share (docs/method.md, Stage 2).

Scoring a candidate reuses prefixes: the hidden state entering block i does not depend on anything
at blocks >= i, so every block's input is kept from one pass, a candidate at block i runs only
blocks i..N-1, and the winner's freshly computed block inputs become the state for the next step.
The choices are those of the naive search (the same operations on the same tensors).

``score_batched`` scores many candidates at once for accelerators: candidates run as the batch of
one forward through the blocks after their own, each block once per group of candidates.

Every loop over blocks and windows runs blocks outside and windows inside (``walk``): each block
reaches its device once per pass, which is what a streamed model needs (``twossp.placement``). The
per-window operations are those of one decoder forward per window, so the numbers are the same.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Literal, Sequence

import torch
from torch import nn

from twossp.families.base import FamilyAdapter, layer_output, nll_sum
from twossp.placement import placement_of


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


def first_lowest(scores: Sequence[float]) -> int | None:
    """The index of the lowest score, the first of equal ones (a non-finite score never wins), as a
    one-at-a-time search that keeps a candidate only when it is strictly better; None if none is finite."""
    best, at = math.inf, None
    for k, score in enumerate(scores):
        if score < best:
            best, at = score, k
    return at


class _Recorder(nn.Module):
    """Holds block ``index``'s place during a recording forward: keeps what the block receives and
    passes the hidden state on unchanged, so no block's weights are read."""

    def __init__(self, index: int, calls: list[BlockCall], last: int) -> None:
        super().__init__()
        self.index, self.calls, self.last = index, calls, last

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden = hidden_input(args, kwargs)
        self.calls.append(BlockCall(hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        if self.index == self.last:
            raise _Stop
        return hidden


@contextmanager
def _recording(model: nn.Module, adapter: FamilyAdapter, calls: list[BlockCall], last: int) -> Iterator[None]:
    """The body's decoder forwards record every block's call into ``calls`` (up to block ``last``)
    instead of running the blocks; the blocks are put back on exit, whatever happens."""
    decoder = adapter.decoder(model)
    blocks = adapter.layers(model)
    decoder.layers = nn.ModuleList(_Recorder(i, calls, last) for i in range(len(blocks)))
    try:
        yield
    finally:
        decoder.layers = blocks


@torch.no_grad()
def block_calls(model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor,
                device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Block 0's input for every window, and every block's keyword arguments (attention mask,
    positions, rotary embeddings), from decoder forwards in which no block runs. The arguments
    depend on the window's length and the block's layer type (sliding or full attention), never on
    its tokens: equal-length windows share them, so they are recorded from the first window."""
    firsts: list[torch.Tensor] = []
    kwargs: list[dict[str, Any]] = []
    last = len(adapter.layers(model)) - 1
    for k, window in enumerate(windows):
        calls: list[BlockCall] = []
        with _recording(model, adapter, calls, last if k == 0 else 0):
            try:
                adapter.decoder(model)(input_ids=window.view(1, -1).to(device), use_cache=False)
            except _Stop:
                pass
        firsts.append(calls[0].hidden)
        if k == 0:
            kwargs = [call.kwargs for call in calls]
    return firsts, kwargs


@torch.no_grad()
def walk(layers: Sequence[nn.Module], states: list[torch.Tensor], kwargs: Sequence[dict[str, Any]],
         start: int = 0, stop: int | None = None,
         visit: Callable[[int, list[torch.Tensor]], None] | None = None) -> list[torch.Tensor]:
    """Every window's hidden state (``states``, the inputs of block ``start``) run through blocks
    ``start``..``stop - 1`` (default: the last), blocks outside and windows inside;
    ``visit(j, states)`` sees the inputs of each block j and, last, the states leaving the walk.
    Returns those states."""
    stop = len(layers) if stop is None else stop
    for j in range(start, stop):
        if visit:
            visit(j, states)
        states = [layer_output(layers[j](h, **kwargs[j])) for h in states]
    if visit:
        visit(stop, states)
    return states


class BlockInputs:
    """Every block's input and call arguments for each calibration window (from one pass of the
    windows through the blocks), and the scorer of candidate removals built on them (module
    docstring). The inputs stay where the model's placement keeps states (``Placement.keep``)."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, device: torch.device) -> None:
        self.model, self.adapter, self.windows = model, adapter, windows
        self.layers = adapter.layers(model)
        self.norm = adapter.final_norm(model)
        self.keep = placement_of(model).keep
        firsts, self.kwargs = block_calls(model, adapter, windows, device)
        self.inputs: list[list[torch.Tensor]] = [[] for _ in firsts]

        def store(j: int, states: list[torch.Tensor]) -> None:
            for w, state in enumerate(states):
                self.inputs[w].append(self.keep(state))

        walk(self.layers, firsts, self.kwargs, stop=len(self.layers) - 1, visit=store)

    @property
    def tokens(self) -> int:
        """Predicted tokens over all windows (every position but the last of each)."""
        return self.windows.shape[0] * (self.windows.shape[1] - 1)

    @torch.no_grad()
    def score_from(self, block: int) -> tuple[float, list[list[torch.Tensor]]]:
        """Run blocks ``block``..N-1 of the model as it is now (a candidate removal in effect) on
        every window from the stored inputs: the summed next-token NLL over all windows, and per
        window the recomputed inputs of blocks ``block + 1``..N-1 (for ``adopt``)."""
        produced: list[list[torch.Tensor]] = [[] for _ in self.windows]

        def collect(j: int, states: list[torch.Tensor]) -> None:
            if j > block:
                for w, state in enumerate(states):
                    produced[w].append(self.keep(state) if j < len(self.layers) else state)

        walk(self.layers, [inputs[block] for inputs in self.inputs], self.kwargs, start=block, visit=collect)
        nll = 0.0
        for w, window in enumerate(self.windows):
            nll += float(nll_sum(self.adapter, self.model, self.norm(produced[w].pop()), window))
        return nll, produced

    @torch.no_grad()
    def score_batched(self, candidates: Sequence[tuple[int, Callable[[], ContextManager[Any]]]],
                      batch: int) -> list[float]:
        """The summed NLL over all windows of each candidate (its block, and a context in which its
        removal is in effect there), as ``score_from`` gives them one at a time, with up to ``batch``
        candidates in one forward: in block order, each group runs every block from its first
        candidate's on once per window, on the hidden states of the candidates that started before
        that block; a candidate starts at its own block, from the stored input, with its removal in
        effect. Each candidate still runs exactly its own suffix of blocks."""
        order = sorted(range(len(candidates)), key=lambda c: candidates[c][0])
        nll = [0.0] * len(candidates)
        for g in range(0, len(order), batch):
            group = order[g:g + batch]
            hidden: list[torch.Tensor | None] = [None] * len(self.windows)
            members: list[int] = []
            for j in range(candidates[group[0]][0], len(self.layers)):
                starting = [c for c in group if candidates[c][0] == j]
                members += starting
                for w in range(len(self.windows)):
                    hidden[w] = self._batch_step(j, w, hidden[w], [candidates[c][1] for c in starting])
            for w, window in enumerate(self.windows):
                final = self.norm(hidden[w])
                for row, c in enumerate(members):
                    nll[c] += float(nll_sum(self.adapter, self.model, final[row:row + 1], window))
        return nll

    def _batch_step(self, j: int, w: int, hidden: torch.Tensor | None,
                    starting: list[Callable[[], ContextManager[Any]]]) -> torch.Tensor | None:
        """Window ``w``'s batch through block ``j``: the rows already under way, then one new row per
        candidate starting at ``j`` (from the stored input, its removal in effect)."""
        kwargs = self.kwargs[j]
        if hidden is not None:
            hidden = layer_output(self.layers[j](hidden, **kwargs))
        for removal in starting:
            with removal():
                started = layer_output(self.layers[j](self.inputs[w][j], **kwargs))
            hidden = started if hidden is None else torch.cat([hidden, started.to(hidden.device)])
        return hidden

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
