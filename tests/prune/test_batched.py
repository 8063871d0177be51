"""Candidate removals scored as one batch (issue 12, for accelerators): the same choices, the same
recorded perplexities and the same pruned model as one candidate at a time, on every family, for
2SSP's stage 2 and BlockPruner; perplexity windows run as a batch give the same perplexity."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.support.models import FAMILIES
from twossp.device import batch_size
from twossp.evaluate.perplexity import perplexity
from twossp.families import adapter_for
from twossp.prune.blockpruner import remove_submodules_greedy
from twossp.prune.calibration import BlockInputs
from twossp.prune.depth import remove_attention_greedy


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [2, 3, 64])
def test_batched_stage2_makes_the_one_at_a_time_choices(tiny, cpu, family, batch):
    model = tiny.model(family, num_layers=6, seed=11)
    adapter = adapter_for(model.config)
    windows = tiny.tokens(2, 16, seed=5)
    alone, batched = copy.deepcopy(model), copy.deepcopy(model)
    want = remove_attention_greedy(alone, adapter, windows, 4, cpu)
    got = remove_attention_greedy(batched, adapter, windows, 4, cpu, batch=batch)
    assert got.removed == want.removed
    assert got.calibration_perplexity == want.calibration_perplexity  # the winner's own suffix, run alone
    # each candidate runs its own suffix; the winner's is run once more per step for the next state
    assert got.layer_forwards == want.layer_forwards + sum(6 - i for i in want.removed) * len(windows)
    ids = tiny.tokens(1, 10, seed=9)
    with torch.no_grad():
        assert torch.equal(alone(ids).logits, batched(ids).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_scores_are_the_one_at_a_time_scores(tiny, cpu, family):
    model = tiny.model(family, num_layers=5, seed=3)
    adapter = adapter_for(model.config)
    layers = adapter.layers(model)
    state = BlockInputs(model, adapter, tiny.tokens(2, 12, seed=1), cpu)
    candidates = [(i, lambda i=i: adapter.attention_bypassed(layers[i])) for i in range(5)]
    candidates += [(i, lambda i=i: adapter.ffn_bypassed(layers[i])) for i in range(5)]
    want = []
    for block, bypass in candidates:
        with bypass():
            want.append(state.score_from(block)[0])
    for batch in (2, 4, 10):
        got = state.score_batched(candidates, batch)
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                                   rtol=1e-6, atol=0)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])
def test_batched_blockpruner_makes_the_one_at_a_time_choices(tiny, cpu, family):
    model = tiny.model(family, num_layers=6, seed=11)
    adapter = adapter_for(model.config)
    windows = tiny.tokens(1, 16, seed=5)
    alone, batched = copy.deepcopy(model), copy.deepcopy(model)
    want = remove_submodules_greedy(alone, adapter, windows, 0.4, cpu)
    got = remove_submodules_greedy(batched, adapter, windows, 0.4, cpu, batch=5)
    assert got.removed == want.removed and got.removed_params == want.removed_params
    assert got.calibration_perplexity == want.calibration_perplexity


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_batched_stage2_in_half_precision(tiny, cpu, dtype):
    model = tiny.model("llama", num_layers=6, seed=11).to(dtype)
    adapter = adapter_for(model.config)
    windows = tiny.tokens(2, 16, seed=5)
    alone, batched = copy.deepcopy(model), copy.deepcopy(model)
    want = remove_attention_greedy(alone, adapter, windows, 3, cpu)
    got = remove_attention_greedy(batched, adapter, windows, 3, cpu, batch=8)
    assert got.removed == want.removed
    assert got.calibration_perplexity == want.calibration_perplexity


@pytest.mark.parametrize("family", ["llama", "phi3", "gemma3"])
def test_perplexity_windows_in_batches(tiny, cpu, family):
    model = tiny.model(family, num_layers=3, seed=2)
    adapter = adapter_for(model.config)
    windows = tiny.tokens(7, 12, seed=4)
    one = perplexity(model, adapter, windows, cpu)
    events = []
    for batch in (2, 3, 7, 100):
        many = perplexity(model, adapter, windows, cpu, progress=lambda *e: events.append(e), batch=batch)
        assert (many.tokens, many.windows) == (one.tokens, one.windows)
        assert many.perplexity == pytest.approx(one.perplexity, rel=1e-6)
    assert events[-1] == ("evaluate", 7, 7)


def test_the_automatic_batch_is_one_on_the_cpu_and_a_number_is_taken_as_given():
    assert batch_size(torch.device("cpu")) == 1
    assert batch_size(torch.device("cpu"), 6) == 6
    assert batch_size(torch.device("meta")) == 1
