"""BlockPruner (arXiv 2406.10594): the greedy submodule search equals the naive brute force, stops at
the parameter target, and leaves a model its masks rebuild."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.support.models import layer_numel
from tests.support.searches import naive_submodule_search
from twossp.errors import BudgetError
from twossp.families import adapter_for
from twossp.prune.blockpruner import remove_submodules_greedy, split_removals, steps_for
from twossp.contracts import layer_masks
from twossp.prune.masks import apply_masks
from twossp.prune import PruneContext, prune
from twossp.methods import BlockPrunerMethod


def test_greedy_equals_brute_force_on_every_family(tiny, cpu):
    n, sparsity = 5, 0.25
    windows = tiny.tokens(1, 12, seed=5)
    for family in tiny.families:
        model = tiny.model(family, num_layers=n, seed=11)
        adapter = adapter_for(model.config)
        want_order, want_ppl, want_removed, want_model = naive_submodule_search(model, adapter, windows, sparsity, cpu)
        search = remove_submodules_greedy(model, adapter, windows, sparsity, cpu)

        assert search.removed == want_order, family
        torch.testing.assert_close(torch.tensor(search.calibration_perplexity, dtype=torch.float64),
                                   torch.tensor(want_ppl, dtype=torch.float64), rtol=1e-5, atol=0)
        assert search.removed_params == want_removed
        # stopping rule: the target is reached, and one step fewer would not have reached it
        assert search.target_params == math.ceil(sparsity * layer_numel(tiny.model(family, n, seed=11)))
        assert search.removed_params[-1] >= search.target_params
        assert len(search.removed_params) == 1 or search.removed_params[-2] < search.target_params
        assert search.layer_forwards < search.naive_layer_forwards
        ids = tiny.tokens(1, 10, seed=9)
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, want_model(ids).logits, rtol=1e-5, atol=1e-5)


def test_two_windows_and_forward_accounting(tiny, cpu):
    n = 6
    model = tiny.model("qwen2", num_layers=n, seed=11)
    adapter = adapter_for(model.config)
    windows = tiny.tokens(2, 16, seed=5)
    want_order, want_ppl, _, _ = naive_submodule_search(model, adapter, windows, 0.4, cpu)
    search = remove_submodules_greedy(model, adapter, windows, 0.4, cpu)
    assert search.removed == want_order
    assert search.calibration_perplexity == pytest.approx(want_ppl, rel=1e-5)

    # one capture pass; then a candidate at block i runs blocks i..N-1; the naive search runs all N
    present = {(kind, i) for kind in ("attention", "ffn") for i in range(n)}
    expected, naive = n, 0
    for chosen in search.removed:
        expected += sum(n - i for _, i in present)
        naive += len(present) * n
        present.remove(chosen)
    assert search.layer_forwards == expected * 2
    assert search.naive_layer_forwards == naive * 2
    assert search.layer_forwards < search.naive_layer_forwards


def test_ties_go_to_attention_first_then_block_order(tiny, cpu):
    # Every attention and FFN contributes nothing (o_proj and down_proj zeroed): every candidate leaves
    # the function bitwise unchanged, so the authors' candidate order decides.
    model = tiny.model("llama", num_layers=4, seed=11)
    adapter = adapter_for(model.config)
    with torch.no_grad():
        for layer in adapter.layers(model):
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    search = remove_submodules_greedy(model, adapter, tiny.tokens(1, 16, seed=5), 0.5, cpu)
    attention = [("attention", i) for i in range(4)]
    assert search.removed == (attention + [("ffn", i) for i in range(4)])[:len(search.removed)]
    assert len(set(search.calibration_perplexity)) == 1


@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_prune_every_family(tiny, cpu, sparsity):
    n = 6
    tokens = tiny.tokens(2, 12, seed=9)
    prompt = tiny.tokens(1, 5, seed=4)
    gen = dict(do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
    for family in tiny.families:
        dense = tiny.model(family, num_layers=n, seed=11)
        model = copy.deepcopy(dense)
        adapter = adapter_for(model.config)
        outcome = prune(PruneContext(model=model, adapter=adapter, calibration=tiny.tokens(2, 16, seed=5),
                                     sparsity=sparsity, method=BlockPrunerMethod(), device=cpu))
        d = outcome.details

        # dense indices, each block in at most one list; blocks in removed_blocks are really gone
        attn, ffn, blocks = outcome.removed_attention, outcome.removed_ffn, outcome.removed_blocks
        assert not (set(attn) & set(ffn)) and not (set(blocks) & (set(attn) | set(ffn)))
        order = outcome.removal_order
        assert sorted(blocks) == sorted({i for k, i in order if k == "attention"} & {i for k, i in order if k == "ffn"})
        assert model.config.num_hidden_layers == n - len(blocks) == len(adapter.layers(model))
        if getattr(model.config, "layer_types", None) is not None:
            assert len(model.config.layer_types) == n - len(blocks)
        kept = [i for i in range(n) if i not in blocks]
        for new, old in enumerate(kept):
            layer = adapter.layers(model)[new]
            assert adapter.is_attention_present(layer) == (old not in attn), (family, old)
            assert adapter.is_ffn_present(layer) == (old not in ffn), (family, old)

        # achieved sparsity, from state-dict shapes, equals the recorded one and meets the target
        achieved = 1 - layer_numel(model) / layer_numel(dense)
        assert achieved == pytest.approx(d["achieved_sparsity"], abs=1e-12)
        assert layer_numel(dense) - layer_numel(model) == d["removed_params_after_each_removal"][-1]
        assert achieved >= sparsity
        assert len(order) == 1 or d["removed_params_after_each_removal"][-2] < d["target_params"]
        assert outcome.layer_forwards < outcome.naive_layer_forwards
        assert outcome.stored_details()["removal_order"] == [list(x) for x in order]  # stored as always

        # masks rebuild the same function from the dense model
        rebuilt = copy.deepcopy(dense)
        apply_masks(rebuilt, adapter, layer_masks(n, 128, None, attn, blocks, ffn))
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(tokens).logits, model(tokens).logits, rtol=0, atol=0)
            assert torch.equal(model.generate(prompt, use_cache=True, **gen),
                               model.generate(prompt, use_cache=False, **gen)), family


def test_a_lower_sparsity_is_a_prefix_of_a_higher_ones_search(tiny, cpu):
    # What the benchmark relies on to time every sparsity from one search: the greedy path does not
    # depend on the target, so stopping a 0.5 search at 0.25's parameter target gives the 0.25 model.
    dense = tiny.model("qwen2", num_layers=6, seed=3)
    adapter = adapter_for(dense.config)
    calibration, tokens = tiny.tokens(1, 16, seed=5), tiny.tokens(2, 12, seed=9)
    low, high = copy.deepcopy(dense), copy.deepcopy(dense)
    low_outcome = prune(PruneContext(model=low, adapter=adapter, calibration=calibration, sparsity=0.25,
                                     method=BlockPrunerMethod(), device=cpu))
    high_search = remove_submodules_greedy(high, adapter, calibration, 0.5, cpu)
    steps = steps_for(high_search.removed_params, layer_numel(dense), 0.25)
    assert high_search.removed[:steps] == low_outcome.removal_order
    assert len(high_search.seconds) == len(high_search.removed)
    assert high_search.seconds == sorted(high_search.seconds)

    found = split_removals(high_search.removed[:steps])
    assert found == (low_outcome.removed_attention, low_outcome.removed_ffn, low_outcome.removed_blocks)
    attention, ffn, blocks = found
    rebuilt = copy.deepcopy(dense)
    apply_masks(rebuilt, adapter, layer_masks(6, dense.config.intermediate_size, None, attention, blocks, ffn))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(tokens).logits, low(tokens).logits, rtol=0, atol=0)
    with pytest.raises(BudgetError, match="short of sparsity 0.75"):
        steps_for(high_search.removed_params, layer_numel(dense), 0.75)


def test_impossible_budget_is_refused(tiny, cpu):
    model = tiny.model("llama", num_layers=2)
    with pytest.raises(BudgetError, match="nothing would be left"):
        remove_submodules_greedy(model, adapter_for(model.config), tiny.tokens(1, 8), 0.999, cpu)
