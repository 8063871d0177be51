"""Perplexity per docs/evaluation.md: non-overlapping windows, tail dropped, token-weighted exp(mean NLL)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from twossp.evaluate.perplexity import make_windows, nll_sum, perplexity
from twossp.families import adapter_for


def test_make_windows_drops_tail():
    tokens = torch.arange(50)
    windows = make_windows(tokens, 16)
    assert windows.shape == (3, 16)
    assert torch.equal(windows[0], torch.arange(0, 16))
    assert torch.equal(windows[2], torch.arange(32, 48))  # 48, 49 are the dropped tail


def test_make_windows_exact_multiple():
    assert torch.equal(make_windows(torch.arange(32), 16), torch.arange(32).view(2, 16))


def test_make_windows_max_windows():
    tokens = torch.arange(50)
    assert torch.equal(make_windows(tokens, 16, max_windows=2), torch.arange(32).view(2, 16))
    assert make_windows(tokens, 16, max_windows=10).shape == (3, 16)


def test_make_windows_too_short():
    assert make_windows(torch.arange(15), 16).shape == (0, 16)


def test_perplexity_rejects_no_window(tiny, cpu):
    model = tiny.model("llama", num_layers=1)
    with pytest.raises(ValueError, match="shorter than one window"):
        perplexity(model, adapter_for(model.config), make_windows(torch.arange(10), 16), cpu)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_perplexity_equals_hf_loss(tiny, cpu, family):
    model = tiny.model(family, num_layers=3)
    windows = tiny.tokens(3, 17, seed=2)
    got = perplexity(model, adapter_for(model.config), windows, cpu)

    # HF's loss is the mean NLL over the L - 1 predicted tokens of a window: weight it back to a sum.
    total = 0.0
    with torch.no_grad():
        for w in windows:
            ids = w.view(1, -1)
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
    tokens = 3 * 16
    assert got.tokens == tokens and got.windows == 3
    assert got.nll_sum == pytest.approx(total, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(total / tokens), rel=1e-5)


def test_perplexity_equals_log_softmax_by_hand(tiny, cpu):
    model = tiny.model("mistral", num_layers=2)
    windows = tiny.tokens(2, 9, seed=3)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=windows).logits.double(), dim=-1)  # both windows at once
    nll = -logp[:, :-1].gather(-1, windows[:, 1:, None]).sum()
    got = perplexity(model, adapter_for(model.config), windows, cpu)
    assert got.perplexity == pytest.approx(math.exp(float(nll) / (2 * 8)), rel=1e-5)


def test_perplexity_progress(tiny, cpu):
    model = tiny.model("llama", num_layers=1)
    calls = []
    perplexity(model, adapter_for(model.config), tiny.tokens(2, 8), cpu,
               progress=lambda *a: calls.append(a), phase="wikitext2")
    assert calls == [("wikitext2", 1, 2), ("wikitext2", 2, 2)]


def test_nll_sum_chunking_is_exact(tiny):
    model = tiny.model("llama", num_layers=2)
    adapter = adapter_for(model.config)
    ids = tiny.tokens(1, 20, seed=6)
    with torch.no_grad():
        hidden = adapter.decoder(model)(input_ids=ids, use_cache=False).last_hidden_state
        whole = nll_sum(adapter, model, hidden, ids[0])
        chunked = nll_sum(adapter, model, hidden, ids[0], chunk=3)
        logits = model.lm_head(hidden)[0, :-1]
        by_hand = F.cross_entropy(logits, ids[0, 1:], reduction="sum")
    assert whole.dtype == torch.float64
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(whole.float(), by_hand)
