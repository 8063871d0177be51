"""Llama-layout families: Llama 2/3.x and SmolLM2, Mistral, Qwen2/2.5 (q/k/v biases).

Decoder layer = input_layernorm -> self_attn(q,k,v,o) -> residual; post_attention_layernorm ->
mlp(gate, up, down) -> residual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from twossp.errors import UnsupportedArchitecture
from twossp.families.base import FamilyAdapter, slice_columns, slice_rows
from twossp.prune.budget import BlockCounts


class LlamaAdapter(FamilyAdapter):
    name = "llama"
    attention_bias_default = False

    def ffn_down(self, layer: nn.Module) -> nn.Linear:
        return layer.mlp.down_proj

    def prune_ffn(self, layer: nn.Module, keep: torch.Tensor) -> None:
        mlp = layer.mlp
        mlp.gate_proj = slice_rows(mlp.gate_proj, keep)
        mlp.up_proj = slice_rows(mlp.up_proj, keep)
        mlp.down_proj = slice_columns(mlp.down_proj, keep)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(keep)

    def attention_has_bias(self, config: Any) -> bool:
        return bool(getattr(config, "attention_bias", self.attention_bias_default))

    def config_block_counts(self, config: Any) -> BlockCounts:
        d, d_ff = config.hidden_size, config.intermediate_size
        heads, kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or d // heads
        attn = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d
        if self.attention_has_bias(config):
            attn += heads * head_dim + 2 * kv * head_dim + self.o_bias(config) * d
        mlp = 3 * d * d_ff + (2 * d_ff + d if getattr(config, "mlp_bias", False) else 0)
        norms = 2 * d
        n = config.num_hidden_layers
        return BlockCounts(n, d_ff, attn, mlp, n * (attn + mlp + norms))

    def o_bias(self, config: Any) -> int:
        return 1

    def check_supported(self, config: Any) -> None:
        types = getattr(config, "layer_types", None)
        if types and len(set(types)) > 1:
            raise UnsupportedArchitecture(
                f"{type(config).__name__} with mixed attention layer types {sorted(set(types))} "
                "is not supported yet (sliding-window layers need per-type KV-cache slots)"
            )


class MistralAdapter(LlamaAdapter):
    name = "mistral"


class Qwen2Adapter(LlamaAdapter):
    name = "qwen2"
    attention_bias_default = True

    def attention_has_bias(self, config: Any) -> bool:
        return True

    def o_bias(self, config: Any) -> int:
        return 0
