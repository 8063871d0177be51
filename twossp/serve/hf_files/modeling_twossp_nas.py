"""A pruned decoder whose blocks differ (configuration in ``configuration_twossp_nas.py``): the
stock Llama model in which a block may have no attention (then no input norm either), no FFN (then
no post-attention norm) or an FFN of its own width.

Written by twossp beside a pruned checkpoint; it imports torch and transformers only. A block
without an attention adds nothing to the residual stream and keeps no KV cache: the attentions that
remain take the cache slots 0, 1, 2, ... in order, so slot 0 (from which transformers reads the
cached length during generation) always belongs to a live attention."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel

from .configuration_twossp_nas import TwosspNasConfig


class _WithWidth:
    """``config`` as ``LlamaMLP`` reads it, with one block's FFN width."""

    def __init__(self, config: TwosspNasConfig, width: int) -> None:
        self._config = config
        self.intermediate_size = width

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


class TwosspNasDecoderLayer(LlamaDecoderLayer):
    """A Llama block whose attention (with its input norm) or FFN (with its norm) may be absent."""

    def __init__(self, config: TwosspNasConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        if not config.has_attention(layer_idx):
            self.self_attn = None
            self.input_layernorm = None
        width = config.block_ffn_width(layer_idx)
        if width is None:
            self.mlp = None
            self.post_attention_layernorm = None
        elif width != config.intermediate_size:
            self.mlp = LlamaMLP(_WithWidth(config, width))

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.self_attn is not None:
            attended, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
            hidden_states = hidden_states + attended
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class TwosspNasModel(LlamaModel):
    config_class = TwosspNasConfig
    _no_split_modules = ["TwosspNasDecoderLayer"]

    def __init__(self, config: TwosspNasConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(TwosspNasDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        live = [layer.self_attn for layer in self.layers if layer.self_attn is not None]
        for slot, attention in enumerate(live):
            attention.layer_idx = slot
        self.post_init()


class TwosspNasForCausalLM(LlamaForCausalLM):
    config_class = TwosspNasConfig
    _no_split_modules = ["TwosspNasDecoderLayer"]

    def __init__(self, config: TwosspNasConfig) -> None:
        super().__init__(config)
        self.model = TwosspNasModel(config)
        self.post_init()


__all__ = ["TwosspNasForCausalLM", "TwosspNasModel"]
