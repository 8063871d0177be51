"""Gemma 2 and Gemma 3 (text-only): four norms per block, sliding/full layers, final logit
soft-capping, through every pruning method, masks and checkpoints."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3Config, Gemma3ForCausalLM, Gemma3TextConfig

from tests.support.models import layer_call, layer_numel, logits, param_count
from tests.support.searches import naive_attention_search
from twossp.checkpoint import load_pruned, save_pruned
from twossp.errors import UnsupportedArchitecture
from twossp.evaluate.perplexity import perplexity
from twossp.families import adapter_for, config_block_counts
from twossp.families.base import RemovedAttention, RemovedFFN
from twossp.families.gemma import Gemma2Adapter, Gemma3Adapter
from twossp.contracts import layer_masks
from twossp.prune.masks import apply_masks
from twossp.prune import PruneContext, prune
from twossp.prune.two_stage import prune_2ssp
from twossp.prune.width import neuron_scores
from twossp.methods import ShortGPTMethod, WindowMethod

GEMMAS = ["gemma2", "gemma3"]
GENERATE = dict(do_sample=False, max_new_tokens=10, min_new_tokens=10, pad_token_id=0,
                return_dict_in_generate=True, output_scores=True)


def _assert_cache_equals_no_cache(model: torch.nn.Module, prompt: torch.Tensor) -> None:
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **GENERATE)
        uncached = model.generate(prompt, use_cache=False, **GENERATE)
    assert cached.sequences.shape == (1, prompt.shape[1] + 10)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):  # -inf (min_new_tokens) compares equal
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# --- registry and counting -------------------------------------------------------------------

def test_registry_resolves_gemma(tiny):
    assert type(adapter_for(tiny.config("gemma2"))) is Gemma2Adapter
    assert type(adapter_for(tiny.config("gemma3"))) is Gemma3Adapter
    assert tiny.config("gemma2").layer_types[:2] == ["sliding_attention", "full_attention"]
    assert tiny.config("gemma3", 6).layer_types == ["sliding_attention", "sliding_attention", "full_attention"] * 2


def test_multimodal_gemma3_is_refused_with_a_reason():
    config = Gemma3Config()
    config.architectures = ["Gemma3ForConditionalGeneration"]
    with pytest.raises(UnsupportedArchitecture, match="multimodal Gemma 3.*Gemma3ForCausalLM") as err:
        adapter_for(config)
    assert "Gemma3ForCausalLM" in str(err.value).split("supported: ")[-1]


@pytest.mark.parametrize("family", GEMMAS)
@pytest.mark.parametrize("num_layers", [2, 5])
def test_config_counts_equal_model_counts(tiny, family, num_layers):
    model = tiny.model(family, num_layers=num_layers)
    adapter = adapter_for(model.config)
    counts = adapter.block_counts(model)
    assert config_block_counts(model.config) == counts
    assert config_block_counts(model.config.to_dict()) == counts  # config.json as a plain dict
    assert counts.layer_params == layer_numel(model)
    layer = adapter.layers(model)[0]
    assert counts.attn_params == param_count(layer.self_attn)  # Gemma 3's q/k norms included
    assert counts.layer_params == num_layers * (counts.attn_params + counts.mlp_params + 4 * 64)


@pytest.mark.parametrize("arch,config_cls,model_cls,extra,total", [
    # published sizes: Gemma 2 2B has 2,614,341,888 parameters, Gemma 3 1B 999,885,952
    ("Gemma2ForCausalLM", Gemma2Config, Gemma2ForCausalLM,
     dict(hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4,
          vocab_size=256000), 2_614_341_888),
    ("Gemma3ForCausalLM", Gemma3TextConfig, Gemma3ForCausalLM,
     dict(hidden_size=1152, intermediate_size=6912, num_attention_heads=4, num_key_value_heads=1,
          vocab_size=262144), 999_885_952),
])
def test_config_counts_of_real_sizes(arch, config_cls, model_cls, extra, total):
    config_json = dict(architectures=[arch], num_hidden_layers=26, head_dim=256, **extra)
    with torch.device("meta"):  # shapes only, no memory
        model = model_cls(config_cls(**{k: v for k, v in config_json.items() if k != "architectures"}))
    assert param_count(model) == total
    assert config_block_counts(config_json) == adapter_for(config_json).block_counts(model)
    d = extra["hidden_size"]
    # everything but the embeddings and the final norm
    assert config_block_counts(config_json).layer_params == total - extra["vocab_size"] * d - d


# --- logits outside model.forward ------------------------------------------------------------

@pytest.mark.parametrize("family", GEMMAS)
def test_adapter_logits_are_the_models_soft_capped_logits(tiny, cpu, family):
    model = tiny.model(family, num_layers=4)
    adapter = adapter_for(model.config)
    ids = tiny.tokens(2, 12)
    expected = logits(model, ids)
    cap = model.config.final_logit_softcapping
    with torch.no_grad():
        hidden = adapter.decoder(model)(input_ids=ids, use_cache=False).last_hidden_state
        torch.testing.assert_close(adapter.logits(model, hidden), expected, rtol=0, atol=0)
        assert model.lm_head(hidden).abs().max() > cap > expected.abs().max()  # the cap really bites
        # the route of stage 2: the last block's output, the adapter's final norm, the adapter's logits
        last = adapter.layers(model)[-1]
        _, _, out = layer_call(model, last, ids)
        torch.testing.assert_close(adapter.logits(model, adapter.final_norm(model)(out)), expected, rtol=0, atol=0)
    # perplexity through the adapter equals perplexity from model.forward's logits
    nll = F.cross_entropy(expected[:, :-1].reshape(-1, expected.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
    got = perplexity(model, adapter, ids, cpu)
    assert got.perplexity == pytest.approx(math.exp(float(nll) / got.tokens), rel=1e-6)


@pytest.mark.parametrize("family", GEMMAS)
def test_decoder_input_is_the_scaled_embedding(tiny, family):
    # stage 1 and the depth search run the decoder on input_ids: block 0 must see sqrt(d) * embedding
    model = tiny.model(family, num_layers=2)
    adapter = adapter_for(model.config)
    ids = tiny.tokens(1, 8)
    inp, _, _ = layer_call(model, adapter.layers(model)[0], ids)
    torch.testing.assert_close(inp, model.model.embed_tokens.weight[ids] * math.sqrt(64))


# --- submodule removal -----------------------------------------------------------------------

@pytest.mark.parametrize("family", GEMMAS)
def test_zero_through_a_gemma_norm_is_zero(tiny, family):
    # Gemma's RMS norm is x / rms(x) * (1 + w): the stand-ins' zero output stays zero, so the
    # identity that replaces a removed submodule's post-norm is exact.
    layer = adapter_for(tiny.config(family)).layers(tiny.model(family, num_layers=1))[0]
    zeros = torch.zeros(1, 3, 64)
    for norm in (layer.post_attention_layernorm, layer.post_feedforward_layernorm):
        assert torch.equal(norm(zeros), zeros)


@pytest.mark.parametrize("family", GEMMAS)
def test_removed_attention_owns_nothing_and_block_is_residual_plus_ffn(tiny, family):
    model = tiny.model(family, num_layers=4)
    adapter = adapter_for(model.config)
    layer = adapter.layers(model)[1]
    attn_params = sum(map(param_count, (layer.self_attn, layer.input_layernorm, layer.post_attention_layernorm)))
    before = param_count(layer)
    adapter.remove_attention(model, 1)
    assert isinstance(layer.self_attn, RemovedAttention)
    assert param_count(layer) == before - attn_params
    assert param_count(layer) == param_count(layer.mlp) + 2 * 64  # the FFN and its two norms
    assert model.config.twossp_removed_attention == [1]
    h, _, out = layer_call(model, layer, tiny.tokens(1, 8))
    with torch.no_grad():
        ffn = layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    torch.testing.assert_close(out, h + ffn, rtol=0, atol=0)


@pytest.mark.parametrize("family", GEMMAS)
def test_removed_ffn_owns_nothing_and_block_is_residual_plus_attention(tiny, family):
    model = tiny.model(family, num_layers=4)
    adapter = adapter_for(model.config)
    layer = adapter.layers(model)[2]
    ffn_params = sum(map(param_count, (layer.mlp, layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm)))
    before = param_count(layer)
    adapter.remove_ffn(model, 2)
    assert isinstance(layer.mlp, RemovedFFN) and adapter.is_attention_present(layer)
    assert param_count(layer) == before - ffn_params
    h, kwargs, out = layer_call(model, layer, tiny.tokens(1, 8))
    attn_kwargs = {k: v for k, v in kwargs.items() if k in ("attention_mask", "position_embeddings")}
    with torch.no_grad():
        attn, _ = layer.self_attn(layer.input_layernorm(h), **attn_kwargs)
        torch.testing.assert_close(out, h + layer.post_attention_layernorm(attn), rtol=0, atol=0)


@pytest.mark.parametrize("family", GEMMAS)
def test_the_sliding_window_really_slides(tiny, family):
    # guard for the generation tests: prompts longer than the 4-token window change the logits
    ids = tiny.tokens(1, 12)
    wide = tiny.model(family, 6, sliding_window=64)
    assert not torch.allclose(logits(tiny.model(family, 6), ids), logits(wide, ids))


@pytest.mark.parametrize("family,removed", [
    ("gemma2", []), ("gemma2", [0]), ("gemma2", [0, 3]), ("gemma2", [1, 2, 5]),
    ("gemma3", [0]), ("gemma3", [2]), ("gemma3", [0, 2, 3]), ("gemma3", [2, 5]),
])
def test_generation_with_cache_equals_without_past_the_window(tiny, family, removed):
    model = tiny.model(family, num_layers=6)
    adapter = adapter_for(model.config)
    for i in removed:
        adapter.remove_attention(model, i)
    # every live attention holds a KV-cache slot of its own type, the lowest ones of that type
    types = model.config.layer_types
    for kind in set(types):
        live = [layer.self_attn.layer_idx for i, layer in enumerate(adapter.layers(model))
                if types[i] == kind and adapter.is_attention_present(layer)]
        assert live == [k for k, t in enumerate(types) if t == kind][:len(live)]
    _assert_cache_equals_no_cache(model, tiny.tokens(1, 9, seed=4))  # 9 + 10 tokens, window 4


@pytest.mark.parametrize("family,removed", [("gemma2", [0, 2, 4]), ("gemma3", [0, 1, 3, 4])])
def test_every_sliding_attention_removed(tiny, tmp_path, family, removed):
    # transformers reads the cached length from slot 0, a sliding slot: once no sliding attention is
    # left, block 0 (attention-less) is relabelled full so that a full attention holds slot 0
    dense = tiny.model(family, num_layers=6)
    adapter = adapter_for(dense.config)
    model = copy.deepcopy(dense)
    for i in removed:
        adapter.remove_attention(model, i)
    assert model.config.layer_types[0] == "full_attention"
    assert model.config.layer_types[1:] == dense.config.layer_types[1:]
    assert [layer.self_attn.layer_idx for layer in adapter.layers(model) if adapter.is_attention_present(layer)] == \
        [k for k, t in enumerate(model.config.layer_types) if t == "full_attention"][:6 - len(removed)]
    _assert_cache_equals_no_cache(model, tiny.tokens(1, 9, seed=4))
    ids = tiny.tokens(2, 12, seed=9)
    expected = logits(model, ids)
    rebuilt = copy.deepcopy(dense)
    apply_masks(rebuilt, adapter, list(reversed(layer_masks(6, 128, None, removed))))
    assert rebuilt.config.layer_types == model.config.layer_types
    torch.testing.assert_close(logits(rebuilt, ids), expected, rtol=0, atol=0)
    save_pruned(model, None, tmp_path, "hf-stock")
    reloaded = load_pruned(tmp_path)
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=0, atol=0)
    _assert_cache_equals_no_cache(reloaded, tiny.tokens(1, 9, seed=4))


# --- the pruning methods, end to end ---------------------------------------------------------

@pytest.mark.parametrize("family", GEMMAS)
def test_stage1_scores_are_the_ffn_activations_by_hand(tiny, cpu, family):
    # score_j = L2 norm over tokens of gelu_tanh(gate x)_j * (up x)_j, x = the pre-FFN norm's output
    model = tiny.model(family, num_layers=3)
    adapter = adapter_for(model.config)
    samples = tiny.tokens(2, 10)
    scores = neuron_scores(model, adapter, samples, cpu)
    layers = adapter.layers(model)
    by_hand: list[list[torch.Tensor]] = [[] for _ in layers]
    for k in range(2):
        ffn_inputs = {}
        handles = [layer.pre_feedforward_layernorm.register_forward_hook(
            lambda mod, args, out, i=i: ffn_inputs.__setitem__(i, out[0])) for i, layer in enumerate(layers)]
        try:
            with torch.no_grad():
                model(samples[k:k + 1])
        finally:
            for handle in handles:
                handle.remove()
        for i, layer in enumerate(layers):
            x, mlp = ffn_inputs[i], layer.mlp
            act = F.gelu(x @ mlp.gate_proj.weight.T, approximate="tanh") * (x @ mlp.up_proj.weight.T)
            by_hand[i].append(act.norm(dim=0))
    for got, want in zip(scores, by_hand):
        torch.testing.assert_close(got, torch.stack(want).mean(dim=0), rtol=1e-5, atol=1e-5)


def _nll(model, windows) -> float:
    """The loss the naive stage 2 ranks candidates by here: perplexity's logarithm from
    ``model.forward``'s own (soft-capped) logits, not from twossp's perplexity code."""
    out = logits(model, windows)
    return float(F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), windows[:, 1:].reshape(-1)))


@pytest.mark.parametrize("family", GEMMAS)
@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_2ssp_end_to_end(tiny, cpu, tmp_path, family, sparsity):
    n = 6
    dense = tiny.model(family, num_layers=n, seed=21)
    adapter = adapter_for(dense.config)
    calibration = tiny.tokens(3, 16, seed=8)
    model = copy.deepcopy(dense)
    outcome = prune_2ssp(model, adapter, calibration, sparsity, cpu)

    assert outcome.budget.num_attention_removed == len(outcome.removed_attention) >= 1
    assert model.config.intermediate_size == outcome.budget.ffn_keep < 128
    # stage 2 chose what the naive search on the width-pruned model chooses
    width_only = copy.deepcopy(dense)
    apply_masks(width_only, adapter, layer_masks(n, 128, outcome.kept_ffn, []))
    steps = len(outcome.removed_attention)
    assert naive_attention_search(width_only, adapter, steps, lambda m: _nll(m, calibration[:1]))[0] == \
        outcome.removed_attention
    # achieved sparsity from the state dict's shapes equals the adapter's count
    achieved = 1 - layer_numel(model) / layer_numel(dense)
    counted = 1 - adapter.block_counts(model).layer_params / adapter.block_counts(dense).layer_params
    assert achieved == pytest.approx(counted)
    assert abs(achieved - sparsity) < 0.05

    ids = tiny.tokens(2, 12, seed=9)
    expected = logits(model, ids)
    assert torch.isfinite(expected).all()
    _assert_cache_equals_no_cache(model, tiny.tokens(1, 9, seed=4))

    rebuilt = copy.deepcopy(dense)
    apply_masks(rebuilt, adapter, layer_masks(n, 128, outcome.kept_ffn, outcome.removed_attention))
    torch.testing.assert_close(logits(rebuilt, ids), expected, rtol=0, atol=0)

    saved = save_pruned(model, None, tmp_path, "hf-stock")
    assert saved.layout == "stock" and saved.attention_blocks == n - len(outcome.removed_attention)
    reloaded = load_pruned(tmp_path)
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=0, atol=0)
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    _assert_cache_equals_no_cache(reloaded, tiny.tokens(1, 9, seed=4))


@pytest.mark.parametrize("method", [ShortGPTMethod(), WindowMethod()])
@pytest.mark.parametrize("family", GEMMAS)
def test_block_methods_end_to_end(tiny, cpu, tmp_path, family, method):
    from transformers import AutoModelForCausalLM

    dense = tiny.model(family, num_layers=8)
    adapter = adapter_for(dense.config)
    model = copy.deepcopy(dense)
    outcome = prune(PruneContext(model=model, adapter=adapter, calibration=tiny.tokens(3, 16), sparsity=0.375,
                                 method=method, device=cpu))

    assert len(outcome.removed_blocks) == 3 and len(adapter.layers(model)) == model.config.num_hidden_layers == 5
    kept = [i for i in range(8) if i not in outcome.removed_blocks]
    assert model.config.layer_types == [dense.config.layer_types[i] for i in kept]
    assert config_block_counts(model.config) == adapter.block_counts(model)
    assert 1 - layer_numel(model) / layer_numel(dense) == pytest.approx(3 / 8)

    ids = tiny.tokens(2, 12, seed=9)
    expected = logits(model, ids)
    assert torch.isfinite(expected).all()
    _assert_cache_equals_no_cache(model, tiny.tokens(1, 9, seed=4))

    rebuilt = copy.deepcopy(dense)
    apply_masks(rebuilt, adapter, layer_masks(8, 128, None, [], outcome.removed_blocks))
    torch.testing.assert_close(logits(rebuilt, ids), expected, rtol=0, atol=0)
    assert save_pruned(model, None, tmp_path).stock
    stock = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(stock, ids), expected, rtol=0, atol=0)
    torch.testing.assert_close(logits(load_pruned(tmp_path), ids), expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", GEMMAS)
def test_submodule_removal_through_masks_and_checkpoint(tiny, tmp_path, family):
    # BlockPruner-style: attentions and FFNs removed separately, block 0 losing both
    dense = tiny.model(family, num_layers=6)
    adapter = adapter_for(dense.config)
    model = copy.deepcopy(dense)
    for i in (0, 4):
        adapter.remove_attention(model, i)
    for i in (0, 2):
        adapter.remove_ffn(model, i)
    _assert_cache_equals_no_cache(model, tiny.tokens(1, 9, seed=4))
    ids = tiny.tokens(2, 12, seed=9)
    expected = logits(model, ids)
    rebuilt = copy.deepcopy(dense)
    apply_masks(rebuilt, adapter, layer_masks(6, 128, None, [0, 4], removed_ffn=[0, 2]))
    assert len(adapter.layers(rebuilt)) == 5  # block 0 became the identity and was deleted
    torch.testing.assert_close(logits(rebuilt, ids), expected, rtol=0, atol=0)
    save_pruned(rebuilt, None, tmp_path, "hf-stock")
    torch.testing.assert_close(logits(load_pruned(tmp_path), ids), expected, rtol=0, atol=0)
