"""Stage 1 of 2SSP (docs/method.md): neuron scores, selection and physical FFN slicing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from twossp.families import adapter_for
from twossp.prune.width import neuron_scores, prune_width, top_neurons


def _hand_scores(model, samples: torch.Tensor) -> list[torch.Tensor]:
    """Recompute every block's intermediate activation act(gate(x)) * up(x) from the input of the
    FFN (the post-attention norm's output), captured while running the full causal LM; score =
    L2 norm over tokens, averaged over samples."""
    layers = model.model.layers
    assert model.config.hidden_act == "silu"
    per_sample: list[list[torch.Tensor]] = []
    for k in range(samples.shape[0]):
        ffn_inputs: dict[int, torch.Tensor] = {}
        handles = [
            layer.post_attention_layernorm.register_forward_hook(
                lambda mod, args, out, i=i: ffn_inputs.__setitem__(i, out.detach().clone()))
            for i, layer in enumerate(layers)
        ]
        try:
            with torch.no_grad():
                model(input_ids=samples[k:k + 1])
        finally:
            for h in handles:
                h.remove()
        row = []
        for i, layer in enumerate(layers):
            x = ffn_inputs[i][0]                                            # (L, d)
            mlp = layer.mlp
            act = F.silu(F.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias)) * F.linear(
                x, mlp.up_proj.weight, mlp.up_proj.bias)                    # (L, d_ff)
            row.append(torch.sqrt((act * act).sum(dim=0)))                  # L2 over tokens
        per_sample.append(row)
    return [torch.stack([s[i] for s in per_sample]).mean(dim=0) for i in range(len(layers))]


@pytest.mark.parametrize("family,overrides", [("llama", {}), ("llama", {"mlp_bias": True}), ("qwen2", {})])
def test_neuron_scores_match_hand_computation(tiny, cpu, family, overrides):
    model = tiny.model(family, num_layers=4, **overrides)
    samples = tiny.tokens(3, 12)
    scores = neuron_scores(model, adapter_for(model.config), samples, cpu)
    expected = _hand_scores(model, samples)
    assert len(scores) == 4
    for got, want in zip(scores, expected):
        assert got.shape == (128,)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_neuron_scores_progress_and_no_leftover_hooks(tiny, cpu):
    model = tiny.model("llama", num_layers=2)
    adapter = adapter_for(model.config)
    calls = []
    neuron_scores(model, adapter, tiny.tokens(2, 8), cpu, progress=lambda *a: calls.append(a))
    assert calls == [("stage 1", 1, 2), ("stage 1", 2, 2)]
    for layer in adapter.layers(model):
        assert not layer.mlp.down_proj._forward_pre_hooks


def test_top_neurons_keeps_exactly_the_top_scored():
    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(100, generator=gen)
    kept = top_neurons(scores, 37)
    assert kept.shape == (37,)
    assert torch.equal(kept, kept.sort().values)                # ascending
    order = sorted(range(100), key=lambda j: -float(scores[j]))  # independent ranking
    assert set(kept.tolist()) == set(order[:37])


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3"])
def test_prune_width_slices_and_matches_zeroed_dense(tiny, cpu, family):
    dense = tiny.model(family, num_layers=4, mlp_bias=(family == "llama"))
    adapter = adapter_for(dense.config)
    samples = tiny.tokens(2, 12)
    keep = 50
    kept = [top_neurons(s, keep) for s in neuron_scores(dense, adapter, samples, cpu)]

    pruned = copy.deepcopy(dense)
    prune_width(pruned, adapter, kept)

    assert pruned.config.intermediate_size == keep
    assert dense.config.intermediate_size == 128  # the dense model's config is untouched
    for layer_d, layer_p, k in zip(dense.model.layers, pruned.model.layers, kept):
        md, mp = layer_d.mlp, layer_p.mlp
        if family == "phi3":  # fused gate_up_proj: gate rows, then up rows, each sliced at k
            assert torch.equal(mp.gate_up_proj.weight, torch.cat([md.gate_up_proj.weight[k],
                                                                  md.gate_up_proj.weight[128 + k]]))
            assert torch.equal(mp.down_proj.weight, md.down_proj.weight[:, k])
            assert adapter.ffn_width(layer_p) == keep
            continue
        assert torch.equal(mp.gate_proj.weight, md.gate_proj.weight[k])
        assert torch.equal(mp.up_proj.weight, md.up_proj.weight[k])
        assert torch.equal(mp.down_proj.weight, md.down_proj.weight[:, k])
        if md.gate_proj.bias is not None:
            assert torch.equal(mp.gate_proj.bias, md.gate_proj.bias[k])
            assert torch.equal(mp.up_proj.bias, md.up_proj.bias[k])
            assert torch.equal(mp.down_proj.bias, md.down_proj.bias)
        assert (mp.gate_proj.out_features, mp.up_proj.out_features, mp.down_proj.in_features) == (keep, keep, keep)
        assert adapter.ffn_width(layer_p) == keep

    # Dropping a neuron == zeroing its down-projection column (and its contribution is all it had).
    zeroed = copy.deepcopy(dense)
    with torch.no_grad():
        for layer, k in zip(zeroed.model.layers, kept):
            dropped = torch.ones(128, dtype=torch.bool)
            dropped[k] = False
            layer.mlp.down_proj.weight[:, dropped] = 0
    ids = tiny.tokens(2, 16, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, zeroed(ids).logits, rtol=1e-5, atol=1e-5)
        # and the pruning did change the function, so the comparison above is not vacuous
        assert not torch.allclose(pruned(ids).logits, dense(ids).logits, atol=1e-3)


def test_prune_width_non_uniform_keeps_config(tiny):
    model = tiny.model("llama", num_layers=2)
    adapter = adapter_for(model.config)
    prune_width(model, adapter, [torch.arange(10), torch.arange(20)])
    assert [adapter.ffn_width(layer) for layer in adapter.layers(model)] == [10, 20]
    assert model.config.intermediate_size == 128  # per-layer widths are not expressible in the config
