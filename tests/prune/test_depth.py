"""Stage 2 of 2SSP (docs/method.md): the greedy attention search equals the naive brute force."""

from __future__ import annotations

import pytest
import torch

from tests.support.searches import naive_attention_search
from twossp.evaluate.perplexity import perplexity
from twossp.families import adapter_for
from twossp.prune.depth import naive_layer_forwards, remove_attention_greedy


@pytest.mark.parametrize("family,num_windows", [("llama", 1), ("llama", 2), ("qwen2", 2), ("qwen3", 1), ("phi3", 1)])
def test_greedy_equals_brute_force(tiny, cpu, family, num_windows):
    n, steps = 6, 3
    model = tiny.model(family, num_layers=n, seed=11)
    adapter = adapter_for(model.config)
    windows = tiny.tokens(num_windows, 16, seed=5)

    # the naive search, from the protocol: every candidate on a deep copy, the full model's perplexity
    want_removed, want_ppl, want_model = naive_attention_search(
        model, adapter, steps, lambda m: perplexity(m, adapter, windows, cpu).perplexity)
    search = remove_attention_greedy(model, adapter, windows, steps, cpu)

    assert search.removed == want_removed
    assert len(set(want_removed)) == steps
    torch.testing.assert_close(torch.tensor(search.calibration_perplexity, dtype=torch.float64),
                               torch.tensor(want_ppl, dtype=torch.float64), rtol=1e-5, atol=0)
    # the search pruned the model it was given, in place, to the same function
    assert model.config.twossp_removed_attention == sorted(want_removed)
    final = perplexity(model, adapter, windows, cpu).perplexity
    assert final == pytest.approx(want_ppl[-1], rel=1e-5)
    ids = tiny.tokens(1, 10, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, want_model(ids).logits)


def test_greedy_is_not_trivially_first_blocks(tiny, cpu):
    # Guard against a test model in which the answer is index order: the choices must depend on the
    # model (two different seeds pick different first blocks).
    firsts = set()
    for seed in (11, 12, 13):
        model = tiny.model("llama", num_layers=6, seed=seed)
        firsts.add(remove_attention_greedy(model, adapter_for(model.config), tiny.tokens(1, 16, seed=5), 1, cpu).removed[0])
    assert len(firsts) > 1


def test_ties_go_to_lowest_index(tiny, cpu):
    # With every o_proj zeroed, no attention contributes anything: every candidate leaves the model's
    # function (bitwise) unchanged, all perplexities tie, and the search must take blocks in order.
    model = tiny.model("llama", num_layers=5, seed=11)
    adapter = adapter_for(model.config)
    with torch.no_grad():
        for layer in adapter.layers(model):
            layer.self_attn.o_proj.weight.zero_()
    windows = tiny.tokens(1, 16, seed=5)
    dense_ppl = perplexity(model, adapter, windows, cpu).perplexity
    search = remove_attention_greedy(model, adapter, windows, 3, cpu)
    assert search.removed == [0, 1, 2]
    assert search.calibration_perplexity == pytest.approx([dense_ppl] * 3, rel=1e-9)


def test_naive_layer_forwards_formula():
    # sum_{k<K} (N - k) candidate passes of N layers each
    assert naive_layer_forwards(6, 0) == 0
    assert naive_layer_forwards(6, 1) == 6 * 6
    assert naive_layer_forwards(6, 3) == (6 + 5 + 4) * 6
    assert naive_layer_forwards(32, 13) == sum(range(20, 33)) * 32


@pytest.mark.parametrize("num_windows", [1, 2])
def test_layer_forward_accounting(tiny, cpu, num_windows):
    n, steps = 6, 3
    model = tiny.model("llama", num_layers=n, seed=11)
    adapter = adapter_for(model.config)
    windows = tiny.tokens(num_windows, 16, seed=5)
    search = remove_attention_greedy(model, adapter, windows, steps, cpu)

    # one capture pass, then candidate i runs only blocks i..N-1, for every window
    present = set(range(n))
    expected = n
    for chosen in search.removed:
        expected += sum(n - i for i in present)
        present.remove(chosen)
    assert search.layer_forwards == expected * num_windows
    assert search.naive_layer_forwards == naive_layer_forwards(n, steps) * num_windows
    assert search.layer_forwards < search.naive_layer_forwards


def test_progress_and_zero_steps(tiny, cpu):
    model = tiny.model("llama", num_layers=4)
    adapter = adapter_for(model.config)
    calls = []
    search = remove_attention_greedy(model, adapter, tiny.tokens(1, 8), 2, cpu, progress=lambda *a: calls.append(a))
    assert calls == [("stage 2", k, 4 + 3) for k in range(1, 8)]
    assert len(search.removed) == 2

    model = tiny.model("llama", num_layers=4)
    search = remove_attention_greedy(model, adapter, tiny.tokens(1, 8), 0, cpu)
    assert search.removed == [] and search.calibration_perplexity == []
    assert all(adapter.is_attention_present(layer) for layer in adapter.layers(model))
