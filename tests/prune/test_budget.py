"""The 2SSP budget (paper Eq. 5): the worked table of docs/method.md reproduced from published configs alone."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

from twossp.errors import BudgetError, UnsupportedArchitecture
from twossp.families import adapter_for, config_block_counts
from twossp.families.llama import LlamaAdapter, MistralAdapter, Qwen2Adapter
from twossp.budget import two_stage_budget
from twossp.contracts import BlockCounts

# Published configs (only the fields that matter for counting); no weights are instantiated.
PAPER_CONFIGS = {
    "Llama-2-7B": (LlamaAdapter, lambda: LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, attention_bias=False, mlp_bias=False)),
    "Mistral-7B-v0.3": (MistralAdapter, lambda: MistralConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8)),
    "Qwen2.5-7B": (Qwen2Adapter, lambda: Qwen2Config(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4)),
    "SmolLM2-135M": (LlamaAdapter, lambda: LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, attention_bias=False, mlp_bias=False)),
}

# docs/method.md, Worked numbers: (N_attn, d_keep) at s = 0.25, 0.375, 0.5.
TABLE = {
    "Llama-2-7B": {0.25: (5, 7744), 0.375: (9, 6368), 0.5: (13, 4992)},
    "Mistral-7B-v0.3": {0.25: (1, 10005), 0.375: (2, 7893), 0.5: (5, 5994)},
    "Qwen2.5-7B": {0.25: (0, 13525), 0.375: (0, 10816), 0.5: (1, 8204)},
}
SMOLLM2_N_ATTN = {0.25: 2, 0.375: 4, 0.5: 8}

ROWS = [(model, s) for model in TABLE for s in (0.25, 0.375, 0.5)]


def _counts(model: str) -> BlockCounts:
    adapter_cls, make = PAPER_CONFIGS[model]
    return config_block_counts(make(), adapter_cls)


@pytest.mark.parametrize("model,sparsity", ROWS)
def test_protocol_table(model, sparsity):
    budget = two_stage_budget(_counts(model), sparsity)
    assert (budget.num_attention_removed, budget.ffn_keep) == TABLE[model][sparsity]
    assert budget.sparsity == sparsity


@pytest.mark.parametrize("sparsity,expected", [(0.25, (1, 12480)), (0.375, (3, 9920)), (0.5, (6, 7466))])
def test_protocol_table_phi3(sparsity, expected):
    # Phi-3-medium: fused qkv and gate_up, no biases. Runs once a Phi-3 adapter is registered.
    config = Phi3Config(hidden_size=5120, intermediate_size=17920, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=10)
    config.architectures = ["Phi3ForCausalLM"]
    try:
        adapter = adapter_for(config)
    except UnsupportedArchitecture:
        pytest.skip("Phi-3 is not supported yet")
    budget = two_stage_budget(config_block_counts(config, type(adapter)), sparsity)
    assert (budget.num_attention_removed, budget.ffn_keep) == expected


def test_protocol_table_ratios():
    # The P_mlp / P_attn column of the table (two decimals).
    ratios = {"Llama-2-7B": 2.02, "Mistral-7B-v0.3": 4.20, "Qwen2.5-7B": 6.94, "SmolLM2-135M": 3.00}
    for model, expected in ratios.items():
        c = _counts(model)
        assert round(c.mlp_params / c.attn_params, 2) == expected, model


def test_paper_counts_by_hand():
    # Llama-2-7B, no biases, MHA: P_attn = 4 d^2, P_mlp = 3 d d_ff, P_layers = N (P_attn + P_mlp + 2 d).
    d, d_ff, n = 4096, 11008, 32
    assert _counts("Llama-2-7B") == BlockCounts(n, d_ff, 4 * d * d, 3 * d * d_ff, n * (4 * d * d + 3 * d * d_ff + 2 * d))
    # Qwen2.5-7B: GQA with head_dim 128 (k, v are 4 * 128 = 512 wide) and q/k/v biases, o without.
    d, d_ff, n, kv = 3584, 18944, 28, 512
    attn = 2 * d * d + 2 * d * kv + d + 2 * kv
    assert _counts("Qwen2.5-7B") == BlockCounts(n, d_ff, attn, 3 * d * d_ff, n * (attn + 3 * d * d_ff + 2 * d))


@pytest.mark.parametrize("sparsity", [0.25, 0.375, 0.5])
def test_smollm2(sparsity):
    budget = two_stage_budget(_counts("SmolLM2-135M"), sparsity)
    assert budget.num_attention_removed == SMOLLM2_N_ATTN[sparsity]
    # d_keep by independent arithmetic: d = 576, d_ff = 1536, N = 30, 9 heads of 64, 3 KV heads.
    d, d_ff, n, kv_width = 576, 1536, 30, 3 * 64
    p_attn = d * d + 2 * d * kv_width + d * d   # 884,736
    p_mlp = 3 * d * d_ff                         # 2,654,208
    p_layers = n * (p_attn + p_mlp + 2 * d)      # 106,202,880
    cut = round((round(sparsity * p_layers) - SMOLLM2_N_ATTN[sparsity] * p_attn) / n)
    expected_keep = round(d_ff * (1 - cut / p_mlp))
    assert budget.ffn_keep == expected_keep
    assert expected_keep == {0.25: 1058, 0.375: 836, 0.5: 648}[sparsity]


def test_half_to_even_rounding():
    # SmolLM2 at s = 0.5: P_mlp / P_attn = 3 exactly, so N_attn = round(30 * 0.5 ** 2) = round(7.5) = 8.
    c = _counts("SmolLM2-135M")
    assert c.mlp_params == 3 * c.attn_params
    assert two_stage_budget(c, 0.5).num_attention_removed == 8
    # 6.5 rounds to 6 (even), not 7: N = 26, same per-block ratio.
    c26 = BlockCounts(26, c.intermediate_size, c.attn_params, c.mlp_params, 26 * c.layer_params // 30)
    assert two_stage_budget(c26, 0.5).num_attention_removed == 6


def test_too_many_attention_parameters():
    # Attention dominates the block, so N_attn = round(4 * 0.5 ** (0.1 / 1.5)) = 4 and removing four
    # attentions (4 * 1000) exceeds s * P_layers = 0.5 * 4 * 1110 = 2220.
    counts = BlockCounts(num_layers=4, intermediate_size=10, attn_params=1000, mlp_params=100, layer_params=4 * 1110)
    with pytest.raises(BudgetError, match="exceeds"):
        two_stage_budget(counts, 0.5)


def test_not_enough_prunable_parameters():
    # Most parameters sit outside attention and FFN (e.g. huge norms): N_attn = round(4 * 0.9 ** 2) = 3,
    # 3 * 100 + 4 * 300 = 1500 < 0.9 * 4000.
    counts = BlockCounts(num_layers=4, intermediate_size=10, attn_params=100, mlp_params=300, layer_params=4000)
    with pytest.raises(BudgetError, match="only hold"):
        two_stage_budget(counts, 0.9)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_out_of_range(sparsity):
    with pytest.raises(BudgetError):
        two_stage_budget(_counts("Llama-2-7B"), sparsity)


def test_alpha_must_be_positive():
    with pytest.raises(BudgetError):
        two_stage_budget(_counts("Llama-2-7B"), 0.5, alpha=0)


@pytest.mark.parametrize("family,overrides,attn_biases", [
    ("llama", {}, 0),
    ("llama", {"attention_bias": True, "mlp_bias": True}, 4),  # q, k, v, o and gate, up, down biases
    ("mistral", {}, 0),
    ("qwen2", {}, 3),                                           # q, k, v only
    ("qwen3", {}, 0),                                           # plus q_norm and k_norm weights
    ("qwen3", {"attention_bias": True}, 4),
    ("phi3", {}, 0),                                            # fused qkv_proj and gate_up_proj
])
def test_config_counts_match_instantiated_model(tiny, family, overrides, attn_biases):
    model = tiny.model(family, num_layers=3, **overrides)
    adapter = adapter_for(model.config)
    measured = adapter.block_counts(model)
    assert config_block_counts(model.config, type(adapter)) == measured
    # and the measured numbers themselves, from the state dict, independently of the adapter
    sd = model.state_dict()
    assert measured.layer_params == sum(t.numel() for k, t in sd.items() if ".layers." in k)
    assert measured.attn_params == sum(t.numel() for k, t in sd.items() if k.startswith("model.layers.0.self_attn."))
    assert measured.mlp_params == sum(t.numel() for k, t in sd.items() if k.startswith("model.layers.0.mlp."))
    n_bias = sum(1 for k in sd if k.startswith("model.layers.0.self_attn.") and k.endswith(".bias"))
    assert n_bias == attn_biases
