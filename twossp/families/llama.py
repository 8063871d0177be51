"""Llama-layout families: Llama 2/3.x and SmolLM2, Mistral, Qwen2/2.5 (q/k/v biases).

Decoder layer = input_layernorm -> self_attn(q,k,v,o) -> residual; post_attention_layernorm ->
mlp(gate, up, down) -> residual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from twossp.errors import UnsupportedArchitecture
from twossp.families.base import FamilyAdapter, slice_columns, slice_rows, zero_padded


class LlamaAdapter(FamilyAdapter):
    name = "llama"

    def ffn_down(self, layer: nn.Module) -> nn.Linear:
        return layer.mlp.down_proj

    def prune_ffn(self, layer: nn.Module, keep: torch.Tensor) -> None:
        mlp = layer.mlp
        mlp.gate_proj = slice_rows(mlp.gate_proj, keep)
        mlp.up_proj = slice_rows(mlp.up_proj, keep)
        mlp.down_proj = slice_columns(mlp.down_proj, keep)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(keep)

    def padded_ffn(self, layer: nn.Module, width: int) -> dict[str, torch.Tensor]:
        mlp, name = layer.mlp, self.ffn_attr
        tensors = {f"{name}.gate_proj.weight": zero_padded(mlp.gate_proj.weight, 0, width),
                   f"{name}.up_proj.weight": zero_padded(mlp.up_proj.weight, 0, width),
                   f"{name}.down_proj.weight": zero_padded(mlp.down_proj.weight, 1, width)}
        for part in ("gate_proj", "up_proj"):
            bias = getattr(mlp, part).bias
            if bias is not None:
                tensors[f"{name}.{part}.bias"] = zero_padded(bias, 0, width)
        if mlp.down_proj.bias is not None:
            tensors[f"{name}.down_proj.bias"] = mlp.down_proj.bias.detach()
        return tensors

    #: Layer types whose KV-cache slots ``_renumber_cache_slots`` can assign: a cache builds one
    #: key/value layer per entry of ``config.layer_types``, sliding or full. Mixed types (Qwen2/3
    #: ``use_sliding_window`` with ``max_window_layers``, Gemma's alternation) are fine.
    known_layer_types = frozenset({"full_attention", "sliding_attention"})

    def check_supported(self, config: Any) -> None:
        types = set(getattr(config, "layer_types", None) or ())
        if not types <= self.known_layer_types:
            raise UnsupportedArchitecture(
                f"{type(config).__name__} with attention layer types {sorted(types - self.known_layer_types)} "
                f"is not supported (known: {sorted(self.known_layer_types)})"
            )


class MistralAdapter(LlamaAdapter):
    name = "mistral"


class Qwen2Adapter(LlamaAdapter):
    name = "qwen2"


class Qwen3Adapter(LlamaAdapter):
    """Qwen3: the Llama layout plus per-head q/k RMS norms inside the attention (removed with it)."""

    name = "qwen3"


class Phi3Adapter(LlamaAdapter):
    """Phi-3 / Phi-3.5: fused ``qkv_proj`` (removed whole with the attention) and fused
    ``gate_up_proj`` (gate rows, then up rows), which stage 1 splits, slices and re-fuses."""

    name = "phi3"

    def prune_ffn(self, layer: nn.Module, keep: torch.Tensor) -> None:
        mlp = layer.mlp
        width = mlp.down_proj.in_features
        mlp.gate_up_proj = slice_rows(mlp.gate_up_proj, torch.cat([keep, keep + width]))
        mlp.down_proj = slice_columns(mlp.down_proj, keep)

    def padded_ffn(self, layer: nn.Module, width: int) -> dict[str, torch.Tensor]:
        mlp, name = layer.mlp, self.ffn_attr
        gate, up = mlp.gate_up_proj.weight.chunk(2)
        return {f"{name}.gate_up_proj.weight": torch.cat([zero_padded(gate, 0, width), zero_padded(up, 0, width)]),
                f"{name}.down_proj.weight": zero_padded(mlp.down_proj.weight, 1, width)}
