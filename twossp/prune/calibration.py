"""Calibration machinery shared by every method: hooks that are always removed, block inputs
captured from one real forward, and the scorer of candidate removals that 2SSP's stage 2 and
BlockPruner share (docs/method.md, Stage 2).

Scoring a candidate reuses prefixes: the hidden state entering block i does not depend on anything
at blocks >= i, so every block's input is kept from one pass, a candidate at block i runs only
blocks i..N-1, and the winner's freshly computed block inputs become the state for the next step.
The choices are those of the naive search (the same operations on the same tensors).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Container, Iterator, Literal, Sequence

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


class BlockInputs:
    """Every block's input and call arguments for each calibration window, from one real forward,
    and the scorer of candidate removals built on them (module docstring)."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, device: torch.device):
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

    def adopt(self, block: int, produced: list[list[torch.Tensor]]) -> None:
        """Make a chosen removal at ``block`` the new state: later blocks' inputs as it computed them."""
        for w, outs in enumerate(produced):
            self.inputs[w][block + 1:] = outs
