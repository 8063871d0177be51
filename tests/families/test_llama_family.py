"""Llama-layout adapters (Llama, Mistral, Qwen2): registry and structural surgery."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from tests.support.models import hf_format, layer_call, layer_numel, param_count
from twossp.errors import UnsupportedArchitecture
from twossp.families import adapter_for, supported_architectures
from twossp.families.base import RemovedAttention
from twossp.families.llama import LlamaAdapter, MistralAdapter, Phi3Adapter, Qwen2Adapter, Qwen3Adapter
from twossp.prune.width import prune_width

FAMILIES = ["llama", "mistral", "qwen2"]


# --- registry --------------------------------------------------------------------------------

def test_registry_resolves_each_family(tiny):
    expected = {"llama": LlamaAdapter, "mistral": MistralAdapter, "qwen2": Qwen2Adapter,
                "qwen3": Qwen3Adapter, "phi3": Phi3Adapter}
    for family, cls in expected.items():
        assert type(adapter_for(tiny.config(family))) is cls
    assert supported_architectures() == ["Gemma2ForCausalLM", "Gemma3ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
                                         "Phi3ForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"]


def test_unsupported_architecture_lists_supported():
    config = GPT2Config()
    config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(UnsupportedArchitecture) as err:
        adapter_for(config)
    message = str(err.value)
    assert "GPT2LMHeadModel" in message
    for arch in supported_architectures():
        assert arch in message


def test_config_without_architectures():
    with pytest.raises(UnsupportedArchitecture, match="model_type='llama'"):
        adapter_for(LlamaConfig())


def test_mixed_layer_types_accepted_unknown_types_rejected():
    config = LlamaConfig(num_hidden_layers=2)
    config.layer_types = ["full_attention", "sliding_attention"]
    LlamaAdapter().check_supported(config)  # KV-cache slots are assigned per layer type
    config.layer_types = ["full_attention", "chunked_attention"]
    with pytest.raises(UnsupportedArchitecture, match="chunked_attention"):
        LlamaAdapter().check_supported(config)


@pytest.mark.parametrize("removed", [[0], [0, 3], [2, 3, 4], [0, 1], [0, 1, 3]])
def test_qwen2_sliding_window_layers_generate_with_cache_after_removal(tiny, removed):
    # use_sliding_window + max_window_layers=2: two full layers, then sliding ones (window 4)
    model = tiny.model("qwen2", num_layers=5, use_sliding_window=True, max_window_layers=2, sliding_window=4)
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 3
    adapter = adapter_for(model.config)
    adapter.check_supported(model.config)
    prompt = tiny.tokens(1, 9, seed=4)
    wide = tiny.model("qwen2", num_layers=5, use_sliding_window=True, max_window_layers=2, sliding_window=64)
    with torch.no_grad():
        assert not torch.allclose(model(prompt).logits, wide(prompt).logits)  # the window really slides
    for i in removed:
        adapter.remove_attention(model, i)
    kwargs = dict(do_sample=False, max_new_tokens=10, min_new_tokens=10, pad_token_id=0,
                  return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# --- attention removal -----------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_removed_attention_owns_nothing_and_is_recorded(tiny, family):
    model = tiny.model(family, num_layers=4)
    adapter = adapter_for(model.config)
    layer = adapter.layers(model)[1]
    mlp_before = param_count(layer.mlp)
    attn_params = param_count(layer.self_attn) + param_count(layer.input_layernorm)

    adapter.remove_attention(model, 1)
    adapter.remove_attention(model, 3)

    assert isinstance(layer.self_attn, RemovedAttention)
    assert param_count(layer.self_attn) == 0 and param_count(layer.input_layernorm) == 0
    # what is left of the block: its FFN and the norm feeding it
    assert param_count(layer) == mlp_before + param_count(layer.post_attention_layernorm)
    assert param_count(layer) == param_count(adapter.layers(model)[0]) - attn_params
    assert model.config.twossp_removed_attention == [1, 3]
    assert [adapter.is_attention_present(x) for x in adapter.layers(model)] == [True, False, True, False]
    with pytest.raises(ValueError, match="already removed"):
        adapter.remove_attention(model, 1)
    with torch.no_grad():
        logits = model(tiny.tokens(2, 8)).logits
    assert logits.shape == (2, 8, 128) and torch.isfinite(logits).all()


def test_removed_block_is_residual_plus_ffn(tiny):
    # A block without attention computes h + mlp(post_attention_layernorm(h)).
    model = tiny.model("llama", num_layers=2)
    adapter = adapter_for(model.config)
    adapter.remove_attention(model, 1)
    layer = adapter.layers(model)[1]
    h, _, out = layer_call(model, layer, tiny.tokens(1, 8))
    out = out[0] if isinstance(out, tuple) else out
    with torch.no_grad():
        torch.testing.assert_close(out, h + layer.mlp(layer.post_attention_layernorm(h)))


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_with_cache_equals_without(tiny, family):
    model = tiny.model(family, num_layers=5)
    adapter = adapter_for(model.config)
    adapter.remove_attention(model, 0)  # block 0 too: the KV cache reads its length from slot 0
    adapter.remove_attention(model, 2)
    prompt = tiny.tokens(1, 6, seed=4)
    kwargs = dict(do_sample=False, max_new_tokens=10, min_new_tokens=10, pad_token_id=0,
                  return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.sequences.shape == (1, 16)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # live attentions use consecutive cache slots from 0
    assert [a.self_attn.layer_idx for a in adapter.layers(model) if adapter.is_attention_present(a)] == [0, 1, 2]


def test_attention_bypassed_restores_even_on_error(tiny):
    model = tiny.model("llama", num_layers=2)
    adapter = adapter_for(model.config)
    layer = adapter.layers(model)[0]
    attn, norm = layer.self_attn, layer.input_layernorm
    with pytest.raises(RuntimeError):
        with adapter.attention_bypassed(layer):
            assert not adapter.is_attention_present(layer)
            raise RuntimeError("boom")
    assert layer.self_attn is attn and layer.input_layernorm is norm
    assert not hasattr(model.config, "twossp_removed_attention")


@pytest.mark.parametrize("family", FAMILIES)
def test_achieved_sparsity_counted_from_state_dict(tiny, family):
    dense = tiny.model(family, num_layers=4)
    adapter = adapter_for(dense.config)
    dense_numel = layer_numel(dense)
    pruned = copy.deepcopy(dense)
    prune_width(pruned, adapter, [torch.arange(0, 128, 3)] * 4)  # 43 of 128 neurons
    adapter.remove_attention(pruned, 0)
    adapter.remove_attention(pruned, 2)

    achieved = 1 - layer_numel(pruned) / dense_numel
    assert achieved == pytest.approx(1 - adapter.block_counts(pruned).layer_params / adapter.block_counts(dense).layer_params)
    assert adapter.block_counts(dense).layer_params == dense_numel
    # and by hand: two attentions (with their norms) and 85 neurons of every FFN are gone
    d, attn = 64, param_count(adapter.attention(adapter.layers(dense)[0]))
    per_neuron = 3 * d  # a gate row, an up row, a down column (these models have no MLP biases)
    removed = 2 * (attn + d) + 4 * 85 * per_neuron
    assert dense_numel - layer_numel(pruned) == removed


# --- FFN removal (BlockPruner removes attention and FFN submodules separately) ----------------

@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_removed_ffn_owns_nothing_and_block_is_residual_plus_attention(tiny, family):
    model = tiny.model(family, num_layers=3)
    adapter = adapter_for(model.config)
    layer = adapter.layers(model)[1]
    before = param_count(layer)
    ffn_params = param_count(layer.mlp) + param_count(layer.post_attention_layernorm)
    adapter.remove_ffn(model, 1)
    assert not adapter.is_ffn_present(layer) and adapter.is_attention_present(layer)
    assert param_count(layer) == before - ffn_params
    assert model.config.twossp_removed_ffn == [1]
    with pytest.raises(ValueError, match="already removed"):
        adapter.remove_ffn(model, 1)
    h, kwargs, out = layer_call(model, layer, tiny.tokens(1, 8))
    attn_kwargs = {k: v for k, v in kwargs.items() if k in ("attention_mask", "position_embeddings")}
    with torch.no_grad():
        attn, _ = layer.self_attn(layer.input_layernorm(h), **attn_kwargs)
        torch.testing.assert_close(out, h + attn)


def test_ffn_bypassed_restores(tiny):
    model = tiny.model("llama", num_layers=2)
    adapter = adapter_for(model.config)
    layer = adapter.layers(model)[0]
    mlp, norm = layer.mlp, layer.post_attention_layernorm
    with adapter.ffn_bypassed(layer):
        assert not adapter.is_ffn_present(layer)
    assert layer.mlp is mlp and layer.post_attention_layernorm is norm
    assert not hasattr(model.config, "twossp_removed_ffn")


@pytest.mark.parametrize("family", FAMILIES)
def test_submodule_removal_keeps_generation_and_rebuilds_from_masks(tiny, family, tmp_path):
    from twossp.checkpoint import load_pruned, save_pruned
    from twossp.contracts import layer_masks
    from twossp.prune.masks import apply_masks

    dense = tiny.model(family, num_layers=5)
    adapter = adapter_for(dense.config)
    model = copy.deepcopy(dense)
    adapter.remove_attention(model, 0)
    adapter.remove_ffn(model, 0)       # block 0 is now the identity: kept as two stand-ins
    adapter.remove_ffn(model, 3)
    adapter.remove_attention(model, 2)
    prompt = tiny.tokens(1, 6, seed=4)
    kwargs = dict(do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, use_cache=True, **kwargs),
                           model.generate(prompt, use_cache=False, **kwargs))
        expected = model(prompt).logits

    # masks: block 0 loses both submodules, so the rebuild deletes it whole (the same function)
    masks = layer_masks(5, 128, None, [0, 2], removed_ffn=[0, 3])
    assert [m.removed_block for m in masks] == [True, False, False, False, False]
    rebuilt = copy.deepcopy(dense)
    apply_masks(rebuilt, adapter, masks)
    assert len(adapter.layers(rebuilt)) == 4 and rebuilt.config.twossp_removed_ffn == [2]
    assert rebuilt.config.twossp_removed_attention == [1]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(prompt).logits, expected)

    saved = save_pruned(rebuilt, None, tmp_path, hf_format(family))
    assert saved.blocks == 4 and any("block 2" in r and "FFN removed" in r for r in saved.rewrites)
    reloaded = load_pruned(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(prompt).logits, expected, rtol=0, atol=0)
