"""Parameter counts from a model's config alone: no weights and no torch, so ``sweep plan`` can
show what each sparsity will remove before anything is downloaded (docs/method.md, Terms)."""

from __future__ import annotations

from typing import Any

from twossp.contracts import BlockCounts


def _get(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def llama_layout(config: Any, qkv_bias: bool, o_bias: bool) -> BlockCounts:
    """q, k, v, o projections (GQA from ``num_key_value_heads``), gate/up/down FFN, two norms."""
    d, d_ff, n = _get(config, "hidden_size"), _get(config, "intermediate_size"), _get(config, "num_hidden_layers")
    heads = _get(config, "num_attention_heads")
    kv = _get(config, "num_key_value_heads") or heads
    head_dim = _get(config, "head_dim") or d // heads
    attn = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d
    attn += (heads * head_dim + 2 * kv * head_dim if qkv_bias else 0) + (d if o_bias else 0)
    mlp = 3 * d * d_ff + (2 * d_ff + d if _get(config, "mlp_bias", False) else 0)
    return BlockCounts(n, d_ff, attn, mlp, n * (attn + mlp + 2 * d))


def llama(config: Any) -> BlockCounts:
    """Llama, SmolLM2, Mistral: ``attention_bias`` puts a bias on all four projections."""
    bias = bool(_get(config, "attention_bias", False))
    return llama_layout(config, qkv_bias=bias, o_bias=bias)


def qwen2(config: Any) -> BlockCounts:
    """Qwen2/2.5: q, k and v always carry a bias, o never does."""
    return llama_layout(config, qkv_bias=True, o_bias=False)


def qwen3(config: Any) -> BlockCounts:
    """Qwen3: the Llama layout plus a q and a k RMS norm (``head_dim`` each) inside the attention."""
    counts = llama(config)
    head_dim = _get(config, "head_dim") or _get(config, "hidden_size") // _get(config, "num_attention_heads")
    extra = 2 * head_dim
    return BlockCounts(counts.num_layers, counts.intermediate_size, counts.attn_params + extra,
                       counts.mlp_params, counts.layer_params + counts.num_layers * extra)


def gemma2(config: Any) -> BlockCounts:
    """Gemma 2: the Llama projections (explicit ``head_dim``; ``attention_bias`` on all four) and
    four norms per block instead of two (a pre- and a post-norm around each submodule)."""
    counts = llama(_gemma_head_dim(config))
    extra = 2 * _get(config, "hidden_size")
    return BlockCounts(counts.num_layers, counts.intermediate_size, counts.attn_params, counts.mlp_params,
                       counts.layer_params + counts.num_layers * extra)


def gemma3(config: Any) -> BlockCounts:
    """Gemma 3 text-only: the Gemma 2 layout plus a q and a k RMS norm (``head_dim`` each) inside the
    attention."""
    counts = gemma2(config)
    extra = 2 * _get(_gemma_head_dim(config), "head_dim")
    return BlockCounts(counts.num_layers, counts.intermediate_size, counts.attn_params + extra,
                       counts.mlp_params, counts.layer_params + counts.num_layers * extra)


def _gemma_head_dim(config: Any) -> Any:
    # Gemma configs default head_dim to 256 (not hidden_size / heads); a config.json always states
    # it, but a hand-written dict might not.
    if isinstance(config, dict) and not config.get("head_dim"):
        return {**config, "head_dim": 256}
    return config
