"""Whole-block baselines: ShortGPT and the similarity window, and the block surgery under them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModelForCausalLM

from twossp.checkpoint import save_pruned
from twossp.families import adapter_for
from twossp.prune.blocks import (
    block_influence,
    last_token_states,
    shortgpt_blocks,
    window_blocks,
    window_similarity,
)
from twossp.budget import blocks_to_remove
from twossp.contracts import layer_masks
from twossp.prune.masks import apply_masks
from twossp.prune import PruneContext, prune
from twossp.methods import ShortGPTMethod, WindowMethod


@torch.no_grad()
def manual_states(model, tokens):
    """Block inputs and the last block's output at the last token, by running the layers by hand."""
    inner = model.model
    out = []
    for ids in tokens:
        ids = ids.view(1, -1)
        hidden = inner.embed_tokens(ids)
        positions = torch.arange(ids.shape[1]).view(1, -1)
        rope = inner.rotary_emb(hidden, position_ids=positions)
        states = [hidden[0, -1]]
        for layer in inner.layers:
            hidden = layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rope)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            states.append(hidden[0, -1])
        out.append(torch.stack(states))
    return torch.stack(out)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_block_states_and_scores_match_a_hand_computation(tiny, cpu, family):
    model = tiny.model(family, num_layers=6)
    tokens = tiny.tokens(3, 12)
    states = last_token_states(model, adapter_for(model.config), tokens, cpu)
    expected = manual_states(model, tokens)
    torch.testing.assert_close(states, expected, rtol=1e-5, atol=1e-5)

    influence = block_influence(states)
    by_hand = torch.stack([
        torch.stack([1 - F.cosine_similarity(expected[s, i], expected[s, i + 1], dim=0) for i in range(6)])
        for s in range(3)]).mean(dim=0)
    torch.testing.assert_close(influence, by_hand, rtol=1e-5, atol=1e-6)
    assert shortgpt_blocks(states, 2) == sorted(torch.argsort(by_hand)[:2].tolist())

    similarity = window_similarity(states, 2)
    by_hand = [float(torch.stack([F.cosine_similarity(expected[s, start], expected[s, start + 2], dim=0)
                                  for s in range(3)]).mean()) for start in range(5)]
    assert similarity.shape == (5,)
    best = max(range(5), key=lambda start: by_hand[start])
    assert window_blocks(states, 2) == [best, best + 1]


def test_blocks_to_remove_rounds_up_to_whole_blocks():
    assert blocks_to_remove(28, 0.375) == 11   # docs/method.md: 11/28 = 0.393
    assert blocks_to_remove(32, 0.25) == 8
    assert blocks_to_remove(10, 0.3) == 3       # not 4 from 3.0000000000000004
    assert blocks_to_remove(30, 0.5) == 15


@pytest.mark.parametrize("method", [ShortGPTMethod(), WindowMethod()])
@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_block_methods_remove_whole_blocks_structurally(tiny, cpu, tmp_path, method, family):
    dense = tiny.model(family, num_layers=8)
    model = copy.deepcopy(dense)
    adapter = adapter_for(model.config)
    dense_params = adapter.block_counts(dense).layer_params
    outcome = prune(PruneContext(model=model, adapter=adapter, calibration=tiny.tokens(3, 16), sparsity=0.375,
                                 method=method, device=cpu))

    assert len(outcome.removed_blocks) == 3 and outcome.kept_ffn is None
    if method.name == "window":
        assert outcome.removed_blocks == list(range(outcome.removed_blocks[0], outcome.removed_blocks[0] + 3))
    assert model.config.num_hidden_layers == 5 == len(adapter.layers(model))
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 5
    assert [adapter.attention(layer).layer_idx for layer in adapter.layers(model)] == list(range(5))
    achieved = 1 - adapter.block_counts(model).layer_params / dense_params
    assert achieved == pytest.approx(3 / 8)  # blocks are the same size

    tokens = tiny.tokens(2, 14, seed=9)
    cached = model.generate(tokens[:1, :5], max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(tokens[:1, :5], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)

    # the masks rebuild it from the dense model, and the export is a stock checkpoint
    rebuilt = copy.deepcopy(dense)
    apply_masks(rebuilt, adapter, layer_masks(8, 128, None, [], outcome.removed_blocks))
    saved = save_pruned(model, None, tmp_path)
    assert saved.stock
    stock = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model(tokens).logits
        torch.testing.assert_close(rebuilt(tokens).logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(stock(tokens).logits, expected, rtol=0, atol=0)


def test_removing_every_block_is_refused(tiny, cpu):
    from twossp.errors import BudgetError

    model = tiny.model("llama", num_layers=2)
    with pytest.raises(BudgetError, match="nothing would be left"):
        prune(PruneContext(model=model, adapter=adapter_for(model.config), calibration=tiny.tokens(1, 8), sparsity=0.9,
                           method=ShortGPTMethod(), device=cpu))
