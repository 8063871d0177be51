"""Layer masks: a full 2SSP run is rebuilt from the dense weights and its masks alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.support.models import layer_numel
from twossp.families import adapter_for
from twossp.contracts import LayerMask, layer_masks, pack_indices
from twossp.prune.masks import apply_masks
from twossp.prune.two_stage import prune_2ssp
from twossp.prune.width import neuron_scores


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3"])
def test_masks_rebuild_a_2ssp_model(tiny, cpu, family):
    n = 6
    dense = tiny.model(family, num_layers=n, seed=21)
    adapter = adapter_for(dense.config)
    fresh = copy.deepcopy(dense)
    pruned = copy.deepcopy(dense)
    calibration = tiny.tokens(3, 16, seed=8)

    outcome = prune_2ssp(pruned, adapter, calibration, 0.5, cpu)

    # the run really pruned both ways (tiny config: N_attn = round(6 * 0.5 ** (P_mlp/P_attn / 1.5)) >= 1)
    assert outcome.budget is not None and outcome.budget.num_attention_removed >= 1
    assert len(outcome.removed_attention) == outcome.budget.num_attention_removed
    assert all(len(k) == outcome.budget.ffn_keep < 128 for k in outcome.kept_ffn)
    # stage 1 scored the dense model on every calibration window (scores are tested in test_width)
    for kept, scores in zip(outcome.kept_ffn, neuron_scores(dense, adapter, calibration, cpu)):
        assert set(kept.tolist()) == set(scores.argsort(descending=True)[: len(kept)].tolist())

    # achieved sparsity, counted on the pruned weights, is the target up to d_keep's rounding (half a
    # neuron of 3 d parameters per block) plus the norms that leave with removed attentions
    removed, target = layer_numel(dense) - layer_numel(pruned), 0.5 * layer_numel(dense)
    d = dense.config.hidden_size
    assert abs(removed - target) <= n * (3 * d / 2 + 1) + len(outcome.removed_attention) * d

    masks = layer_masks(n, 128, outcome.kept_ffn, outcome.removed_attention)
    assert [m.layer for m in masks] == list(range(n))
    assert [not m.attention_kept for m in masks] == [i in outcome.removed_attention for i in range(n)]
    for m, kept in zip(masks, outcome.kept_ffn):
        assert np.array_equal(m.kept_indices(), kept.numpy())
        assert m.ffn_kept == outcome.budget.ffn_keep

    apply_masks(fresh, adapter, list(reversed(masks)))  # order of the list must not matter

    assert fresh.config.intermediate_size == pruned.config.intermediate_size == outcome.budget.ffn_keep
    assert fresh.config.twossp_removed_attention == pruned.config.twossp_removed_attention
    assert fresh.state_dict().keys() == pruned.state_dict().keys()
    for key, value in pruned.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    ids = tiny.tokens(2, 12, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, pruned(ids).logits, rtol=0, atol=1e-6)


def test_dense_masks_change_nothing(tiny):
    model = tiny.model("llama", num_layers=3)
    before = copy.deepcopy(model)
    masks = layer_masks(3, 128, None, [])
    assert all(m.attention_kept and m.ffn_kept == 128 for m in masks)
    apply_masks(model, adapter_for(model.config), masks)
    for (k, a), b in zip(before.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_mask_count_must_match_layers(tiny):
    model = tiny.model("llama", num_layers=3)
    with pytest.raises(ValueError, match="2 layer masks"):
        apply_masks(model, adapter_for(model.config), layer_masks(2, 128, None, []))


@pytest.mark.parametrize("width", [1, 7, 8, 13, 128, 1000])
def test_pack_unpack_round_trip(width):
    gen = torch.Generator().manual_seed(width)
    for indices in (torch.randperm(width, generator=gen)[: width // 3], torch.arange(width),
                    torch.tensor([], dtype=torch.long), torch.tensor([width - 1])):
        packed = pack_indices(indices, width)
        assert len(packed) == (width + 7) // 8
        mask = LayerMask(0, True, width, packed)
        assert mask.kept_indices().tolist() == sorted(indices.tolist())
        assert mask.ffn_kept == len(indices)


def test_pack_bit_order_is_big_endian():
    # neuron 0 is the most significant bit of the first byte (np.packbits' default order)
    assert pack_indices(torch.tensor([0]), 8) == b"\x80"
    assert pack_indices(torch.tensor([7, 8]), 10) == b"\x01\x80"
    assert pack_indices(np.array([1, 2]), 3) == b"\x60"
