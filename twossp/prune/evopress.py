"""EvoPress (Sieberling et al., arXiv 2410.14649) for depth pruning: which ceil(s*N) whole blocks to drop.

A (1 + lambda) evolutionary search (paper Sec. 3, Algorithm 1) over sets of exactly k dropped blocks:

- Fitness: KL divergence from the dense model's next-token distribution to the candidate's, averaged
  over the calibration tokens (every position but the last of each window; lower is better).
- Initial parent: the fittest, on the first selection stage's windows, of ``initial_candidates``
  distinct random k-subsets (as the authors' depth search: 64 random configurations).
- Mutation, "level switch": swap a dropped block with a kept one, so the count stays k; an
  offspring takes min(U{1..m}, U{1..m}) swaps (m = ``max_mutations``, biased towards one, as the
  authors' code). Offspring are distinct and differ from the parent.
- Multi-step selection: the lambda offspring are scored on a small slice of the calibration, the
  best survive to a larger slice, and the last survivors are compared with the parent on all of it
  (elitist: the parent stays unless beaten on the full calibration).

Selection stages, for n calibration windows and lambda offspring (``STAGES``): all lambda on the
first max(1, n // 16) windows, keep ceil(lambda / 4); those on the first max(1, n // 4) windows,
keep ceil(lambda / 16); those and the parent on all n, keep one. (The authors: 32 offspring on
2,048 tokens, keep 2; those and the parent on 32,768 tokens, keep 1; from 131,072 calibration
tokens.) The slices are fixed prefixes of the windows rather than fresh random draws, so a
configuration's KL on a window is computed once and reused by every later stage and generation,
and the parent's fitness over generations is the full-calibration figure, never increasing.

Candidates run the decoder layers in place: the dense block-0 input and every block's call
arguments are captured once per window, and a candidate runs its kept layers in order (no model
copies); only the final choice is removed structurally (``adapter.remove_blocks``). The dense
log-probabilities are kept (fp32) for as many windows as fit in ``DENSE_LOGPROB_CACHE_BYTES``; for
the rest only the dense final hidden state (L x d instead of L x V) is kept and the log-probs are
recomputed by the same chunked computation, so the fitness is identical either way.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from twossp.contracts import Progress, PruneOutcome
from twossp.errors import BudgetError
from twossp.families.base import FamilyAdapter, layer_output
from twossp.prune.calibration import block_calls
from twossp.prune.context import PruneContext
from twossp.budget import blocks_to_remove

Config = tuple[int, ...]  # dropped blocks, ascending

#: Selection stages before the final one: (fraction of the calibration windows, at least one;
#: fraction of the offspring that survive, rounded up). The final stage is every window, one survivor.
STAGES = ((1 / 16, 1 / 4), (1 / 4, 1 / 16))
#: Dense log-probabilities kept in memory (per window, fp32 L x V); beyond it they are recomputed.
DENSE_LOGPROB_CACHE_BYTES = 1 << 30
CHUNK = 1024  # positions per LM-head call


@dataclass
class _Window:
    """What the search keeps of one calibration window."""

    first_input: torch.Tensor            # (1, L, d): the input of block 0
    kwargs: list[dict[str, Any]]         # every block's call arguments (masks, RoPE, positions)
    dense_logprobs: torch.Tensor | None  # (L - 1, V) fp32, when cached
    dense_hidden: torch.Tensor | None    # (L - 1, d) after the final norm, when not


@dataclass
class EvoSearch:
    blocks: list[int]                    # the chosen dropped blocks, ascending
    fitness: float                       # its KL on all calibration windows
    initial_blocks: list[int]
    initial_fitness: float               # the initial parent's KL on all calibration windows
    history: list[float] = field(default_factory=list)  # parent's full KL after each generation
    stages: list[tuple[int, int]] = field(default_factory=list)  # (windows, survivors) per stage
    window_evaluations: int = 0          # (configuration, window) KL computations
    configurations: int = 0              # distinct configurations evaluated
    layer_forwards: int = 0
    cached_windows: int = 0              # windows whose dense log-probs were kept


def selection_stages(num_windows: int, offspring: int) -> list[tuple[int, int]]:
    """(windows, survivors) of each selection stage (see ``STAGES``); the last is (n, 1)."""
    stages = [(max(1, int(num_windows * w)), max(1, math.ceil(offspring * s))) for w, s in STAGES]
    return [*stages, (num_windows, 1)]


def reachable(num_layers: int, count: int, max_swaps: int) -> int:
    """Configurations at 1..max_swaps swaps from a given one: sum_j C(k, j) C(N - k, j)."""
    return sum(math.comb(count, j) * math.comb(num_layers - count, j)
               for j in range(1, min(max_swaps, count, num_layers - count) + 1))


def _log_probs(adapter: FamilyAdapter, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(adapter.logits(model, hidden).float(), dim=-1)


class _Fitness:
    """KL(dense || candidate) per (configuration, window), computed once."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, device: torch.device,
                 cache_bytes: int) -> None:
        self.model, self.adapter = model, adapter
        self.layers = adapter.layers(model)
        self.norm = adapter.final_norm(model)
        self.known: dict[tuple[Config, int], float] = {}
        self.configs: set[Config] = set()
        self.layer_forwards = 0
        self.windows: list[_Window] = []
        self.tokens = [windows.shape[1] - 1] * windows.shape[0]
        budget = cache_bytes
        firsts, kwargs = block_calls(model, adapter, windows, device)
        for first in firsts:
            window = _Window(first, kwargs, None, None)
            hidden = self._final_hidden(window, ())
            size = hidden.shape[0] * model.config.vocab_size * 4
            if size <= budget:
                budget -= size
                window.dense_logprobs = torch.cat([_log_probs(adapter, model, hidden[s:s + CHUNK])
                                                   for s in range(0, hidden.shape[0], CHUNK)])
            else:
                window.dense_hidden = hidden
            self.windows.append(window)


    def _final_hidden(self, window: _Window, dropped: Config) -> torch.Tensor:
        """The candidate's final hidden state (after the final norm) at every position but the last."""
        h = window.first_input
        skip = set(dropped)
        for j, layer in enumerate(self.layers):
            if j not in skip:
                h = layer_output(layer(h, **window.kwargs[j]))
        self.layer_forwards += len(self.layers) - len(skip)
        return self.norm(h)[0, :-1]

    def window_kl(self, dropped: Config, w: int) -> float:
        key = (dropped, w)
        if key not in self.known:
            window = self.windows[w]
            hidden = self._final_hidden(window, dropped)
            total = 0.0
            for s in range(0, hidden.shape[0], CHUNK):
                target = (window.dense_logprobs[s:s + CHUNK] if window.dense_logprobs is not None
                          else _log_probs(self.adapter, self.model, window.dense_hidden[s:s + CHUNK]))
                candidate = _log_probs(self.adapter, self.model, hidden[s:s + CHUNK])
                total += float(F.kl_div(candidate, target, log_target=True, reduction="sum").double())
            self.known[key] = total
            self.configs.add(dropped)
        return self.known[key]

    def __call__(self, dropped: Config, num_windows: int) -> float:
        """Token-weighted mean KL over the first ``num_windows`` windows."""
        return sum(self.window_kl(dropped, w) for w in range(num_windows)) / sum(self.tokens[:num_windows])


def _mutate(parent: Config, num_layers: int, max_swaps: int, rng: random.Random) -> Config:
    """Level switch: swap a dropped block with a kept one, min(U{1..m}, U{1..m}) times."""
    dropped = set(parent)
    for _ in range(min(rng.randint(1, max_swaps), rng.randint(1, max_swaps))):
        kept = [i for i in range(num_layers) if i not in dropped]
        restore, drop = rng.choice(sorted(dropped)), rng.choice(kept)
        dropped.remove(restore)
        dropped.add(drop)
    return tuple(sorted(dropped))


def _select(fitness: _Fitness, pool: list[Config], num_windows: int, survivors: int) -> list[Config]:
    """The ``survivors`` fittest of ``pool`` on the first ``num_windows`` windows (ties: earlier in pool)."""
    scores = [fitness(c, num_windows) for c in pool]
    return [pool[i] for i in sorted(range(len(pool)), key=lambda i: (scores[i], i))[:survivors]]


@torch.no_grad()
def evolve_blocks(model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, count: int, generations: int,
                  offspring: int, seed: int, device: torch.device, initial_candidates: int = 64,
                  max_mutations: int = 3, progress: Progress | None = None,
                  cache_bytes: int = DENSE_LOGPROB_CACHE_BYTES) -> EvoSearch:
    """EvoPress's search for the ``count`` blocks to drop (module docstring); deterministic given
    ``seed``. The model is left unchanged."""
    n = len(adapter.layers(model))
    if not 0 < count < n:
        raise BudgetError(f"EvoPress drops between 1 and {n - 1} of {n} blocks, not {count}")
    rng = random.Random(seed)
    fitness = _Fitness(model, adapter, windows, device, cache_bytes)
    stages = selection_stages(len(windows), offspring)
    screen = stages[0][0]

    pool: list[Config] = []
    while len(pool) < min(initial_candidates, math.comb(n, count)):
        config = tuple(sorted(rng.sample(range(n), count)))
        if config not in pool:
            pool.append(config)
    parent = _select(fitness, pool, screen, 1)[0]
    initial = parent
    history: list[float] = []
    lam = min(offspring, reachable(n, count, max_mutations))
    for generation in range(generations):
        children: list[Config] = []
        while len(children) < lam:
            child = _mutate(parent, n, max_mutations, rng)
            if child != parent and child not in children:
                children.append(child)
        for num_windows, survivors in stages[:-1]:
            children = _select(fitness, children, num_windows, survivors)
        parent = _select(fitness, [parent, *children], len(windows), 1)[0]  # elitist: ties keep the parent
        history.append(fitness(parent, len(windows)))
        if progress:
            progress("evopress", generation + 1, generations)
    return EvoSearch(
        blocks=list(parent), fitness=fitness(parent, len(windows)),
        initial_blocks=list(initial), initial_fitness=fitness(initial, len(windows)),
        history=history, stages=stages, window_evaluations=len(fitness.known), configurations=len(fitness.configs),
        layer_forwards=fitness.layer_forwards,
        cached_windows=sum(w.dense_logprobs is not None for w in fitness.windows),
    )


def run(context: PruneContext) -> PruneOutcome:
    """The ``evopress`` sweep method: drop the ceil(s*N) blocks EvoPress chooses on all calibration
    windows, structurally (``adapter.remove_blocks``)."""
    model, adapter, method = context.model, context.adapter, context.method
    n = len(adapter.layers(model))
    count = blocks_to_remove(n, context.sparsity)
    if count >= n:
        raise BudgetError(f"sparsity {context.sparsity} removes {count} of {n} blocks: nothing would be left")
    start = time.perf_counter()
    search = evolve_blocks(model, adapter, context.calibration, count, generations=method.generations,
                           offspring=method.offspring, seed=method.search_seed, device=context.device,
                           initial_candidates=method.initial_candidates, max_mutations=method.max_mutations,
                           progress=context.progress)
    adapter.remove_blocks(model, search.blocks)
    return PruneOutcome(
        kept_ffn=None, removed_attention=[], removed_blocks=search.blocks,
        timings={"prune": time.perf_counter() - start},
        layer_forwards=search.layer_forwards,
        details={
            "removed_blocks": search.blocks, "blocks_removed": count,
            "kl": search.fitness, "initial_blocks": search.initial_blocks, "initial_kl": search.initial_fitness,
            "kl_per_generation": [float(f"{v:.6g}") for v in search.history],
            "selection_stages": [list(s) for s in search.stages],
            "window_evaluations": search.window_evaluations, "configurations": search.configurations,
        },
    )
