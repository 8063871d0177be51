"""EvoPress (arXiv 2410.14649) for depth pruning: a deterministic search whose fitness is the real
KL divergence to the dense model, that finds the brute-force optimum on a small model, and whose
choice is removed structurally."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from twossp.errors import BudgetError
from twossp.families import adapter_for
from twossp.prune.evopress import evolve_blocks, reachable, selection_stages
from twossp.contracts import layer_masks
from twossp.prune.masks import apply_masks
from twossp.prune import PruneContext, prune
from twossp.methods import EvoPressMethod


@torch.no_grad()
def direct_kl(dense, adapter, blocks, windows) -> float:
    """KL(dense || pruned) per predicted token, from full forwards of a really pruned copy."""
    pruned = copy.deepcopy(dense)
    adapter.remove_blocks(pruned, list(blocks))
    total, tokens = 0.0, 0
    for ids in windows:
        ids = ids.view(1, -1)
        p = F.log_softmax(dense(ids).logits[0, :-1].float(), dim=-1)
        q = F.log_softmax(pruned(ids).logits[0, :-1].float(), dim=-1)
        total += float((p.exp() * (p - q)).sum())
        tokens += ids.shape[1] - 1
    return total / tokens


def test_stage_plan_and_neighbourhood():
    assert selection_stages(32, 16) == [(2, 4), (8, 1), (32, 1)]
    assert selection_stages(4, 16) == [(1, 4), (1, 1), (4, 1)]
    assert selection_stages(1, 1) == [(1, 1), (1, 1), (1, 1)]
    assert reachable(6, 2, 3) == 14 == 15 - 1   # every other 2-subset of 6 is within two swaps
    assert reachable(6, 2, 1) == 2 * 4
    assert reachable(30, 8, 3) == sum(math.comb(8, j) * math.comb(22, j) for j in (1, 2, 3))


def test_finds_the_brute_force_optimum_on_every_family(tiny, cpu):
    n, k = 6, 2
    windows = tiny.tokens(2, 12, seed=5)
    distances = set()
    for family in tiny.families:
        model = tiny.model(family, num_layers=n, seed=11)
        adapter = adapter_for(model.config)
        kl = {c: direct_kl(model, adapter, c, windows) for c in itertools.combinations(range(n), k)}
        best = min(kl, key=kl.get)
        for seed in (2, 4):
            # a random start and no initial screening: the evolution has to find it
            search = evolve_blocks(model, adapter, windows, k, generations=12, offspring=6, seed=seed, device=cpu,
                                   initial_candidates=1)
            distances.add(k - len(set(search.initial_blocks) & set(best)))
            assert tuple(search.blocks) == best, (family, seed)
            assert search.fitness == pytest.approx(kl[best], rel=1e-4, abs=1e-7)
            assert search.initial_fitness == pytest.approx(kl[tuple(search.initial_blocks)], rel=1e-4, abs=1e-7)
            assert search.fitness <= search.initial_fitness
            # the parent's full-calibration fitness never increases (elitist final stage on every window)
            assert all(b <= a for a, b in zip([search.initial_fitness, *search.history], search.history))
            assert len(search.history) == 12 and search.history[-1] == search.fitness
        assert len(adapter.layers(model)) == n  # the search only ran the model
    assert 2 in distances  # some searches started with neither optimal block dropped


def test_deterministic_and_seed_dependent(tiny, cpu):
    model = tiny.model("llama", num_layers=8, seed=11)
    adapter = adapter_for(model.config)
    windows = tiny.tokens(4, 12, seed=5)
    runs = [evolve_blocks(model, adapter, windows, 3, generations=3, offspring=4, seed=s, device=cpu,
                          initial_candidates=2) for s in (7, 7, 8)]
    assert runs[0].blocks == runs[1].blocks and runs[0].history == runs[1].history
    assert runs[0].initial_blocks == runs[1].initial_blocks
    assert runs[0].window_evaluations == runs[1].window_evaluations
    assert (runs[0].initial_blocks, runs[0].history) != (runs[2].initial_blocks, runs[2].history)


def test_recomputed_dense_logprobs_give_identical_fitness(tiny, cpu):
    model = tiny.model("qwen2", num_layers=6, seed=11)
    adapter = adapter_for(model.config)
    windows = tiny.tokens(3, 12, seed=5)
    kwargs = dict(generations=4, offspring=4, seed=3, device=cpu, initial_candidates=4)
    cached = evolve_blocks(model, adapter, windows, 2, **kwargs)
    recomputed = evolve_blocks(model, adapter, windows, 2, cache_bytes=0, **kwargs)
    assert cached.cached_windows == 3 and recomputed.cached_windows == 0
    assert cached.blocks == recomputed.blocks and cached.history == recomputed.history
    assert cached.fitness == recomputed.fitness


def test_selection_reuses_window_scores(tiny, cpu):
    model = tiny.model("llama", num_layers=6, seed=11)
    adapter = adapter_for(model.config)
    search = evolve_blocks(model, adapter, tiny.tokens(4, 12, seed=5), 2, generations=5, offspring=4, seed=0,
                           device=cpu, initial_candidates=3)
    # one (configuration, window) KL at most for every configuration and window, each (N - k) layers
    assert search.window_evaluations <= search.configurations * 4
    # plus one dense pass of the N layers per window for the targets
    assert search.layer_forwards == search.window_evaluations * (6 - 2) + 4 * 6


@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_prune_every_family(tiny, cpu, sparsity):
    n = 6
    count = {0.25: 2, 0.5: 3}[sparsity]
    calibration = tiny.tokens(3, 12, seed=5)
    tokens = tiny.tokens(2, 12, seed=9)
    prompt = tiny.tokens(1, 5, seed=4)
    gen = dict(do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
    method = EvoPressMethod(generations=3, offspring=4, initial_candidates=4)
    for family in tiny.families:
        dense = tiny.model(family, num_layers=n, seed=11)
        model = copy.deepcopy(dense)
        adapter = adapter_for(model.config)
        outcome = prune(PruneContext(model=model, adapter=adapter, calibration=calibration, sparsity=sparsity,
                                     method=method, device=cpu))
        blocks = outcome.removed_blocks
        assert len(blocks) == len(set(blocks)) == count and blocks == sorted(blocks)
        assert outcome.removed_attention == [] and outcome.removed_ffn == [] and outcome.kept_ffn is None
        assert model.config.num_hidden_layers == n - count == len(adapter.layers(model))
        if getattr(model.config, "layer_types", None) is not None:
            assert model.config.layer_types == [t for i, t in enumerate(dense.config.layer_types) if i not in blocks]
        d = outcome.details
        assert d["kl"] <= d["initial_kl"]
        assert d["kl"] == pytest.approx(direct_kl(dense, adapter, blocks, calibration), rel=1e-4, abs=1e-7)

        with torch.no_grad():
            assert torch.equal(model.generate(prompt, use_cache=True, **gen),
                               model.generate(prompt, use_cache=False, **gen)), family
            rebuilt = copy.deepcopy(dense)
            apply_masks(rebuilt, adapter, layer_masks(n, 128, None, [], blocks))
            torch.testing.assert_close(rebuilt(tokens).logits, model(tokens).logits, rtol=0, atol=0)


def test_whole_model_is_refused(tiny, cpu):
    model = tiny.model("llama", num_layers=2)
    with pytest.raises(BudgetError, match="nothing would be left"):
        prune(PruneContext(model=model, adapter=adapter_for(model.config), calibration=tiny.tokens(1, 8), sparsity=0.9,
                           method=EvoPressMethod(), device=cpu))
