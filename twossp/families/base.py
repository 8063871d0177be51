"""What pruning code needs to know about a model family, and nothing more (STYLE.md, habit 2)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from twossp.prune.budget import BlockCounts


class RemovedAttention(nn.Module):
    """Stands where a pruned attention submodule was: owns no weights and adds nothing to the
    residual stream (the block keeps its residual path and FFN, PROTOCOL.md stage 2)."""

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


def _linear_like(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    return new


def slice_rows(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """A new Linear keeping only output features ``keep`` (rows of the weight, entries of the bias)."""
    keep = keep.to(linear.weight.device)
    bias = linear.bias[keep] if linear.bias is not None else None
    return _linear_like(linear, linear.weight[keep], bias)


def slice_columns(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """A new Linear keeping only input features ``keep`` (columns of the weight; the bias stays)."""
    keep = keep.to(linear.weight.device)
    return _linear_like(linear, linear.weight[:, keep], linear.bias)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class FamilyAdapter:
    """Base adapter. Subclasses name the submodules of their family's decoder layer."""

    name = "?"
    #: Attributes of a decoder layer that a removed attention takes with it: the attention itself
    #: and the norm that only feeds it. Replaced by a weightless stand-in and ``nn.Identity``.
    attention_attr = "self_attn"
    attention_norm_attr = "input_layernorm"

    # --- where things are -------------------------------------------------------------------
    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.decoder(model).layers

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attention_attr)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return layer.mlp

    def ffn_down(self, layer: nn.Module) -> nn.Linear:
        """The FFN's down projection: its input is the intermediate activation scored by stage 1."""
        raise NotImplementedError

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the decoder's final hidden state (after its final norm)."""
        return model.lm_head(hidden)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.decoder(model).norm

    # --- counting -----------------------------------------------------------------------------
    def is_attention_present(self, layer: nn.Module) -> bool:
        return not isinstance(self.attention(layer), RemovedAttention)

    def block_counts(self, model: nn.Module) -> BlockCounts:
        """P_attn and P_mlp measured on block 0, P_layers on every block (PROTOCOL.md, Terms)."""
        layers = self.layers(model)
        return BlockCounts(
            num_layers=len(layers),
            intermediate_size=self.ffn_width(layers[0]),
            attn_params=count(self.attention(layers[0])),
            mlp_params=count(self.mlp(layers[0])),
            layer_params=count(layers),
        )

    def config_block_counts(self, config: Any) -> BlockCounts:
        """The same counts from a config alone (no weights), for planning; see ``config_counts``."""
        from twossp.families import config_block_counts

        return config_block_counts(config, type(self))

    def ffn_width(self, layer: nn.Module) -> int:
        return self.ffn_down(layer).in_features

    # --- surgery (structural: weights really removed, config updated) -----------------------
    def prune_ffn(self, layer: nn.Module, keep: torch.Tensor) -> None:
        raise NotImplementedError

    def set_uniform_ffn_width(self, model: nn.Module, width: int) -> None:
        model.config.intermediate_size = width

    def remove_attention(self, model: nn.Module, index: int) -> None:
        """Replace block ``index``'s attention (and the norm that only feeds it) by a weightless
        stand-in, then renumber the KV-cache slots of the remaining attentions so that slot 0 is
        always a live attention: transformers reads the cached length from slot 0 during generation."""
        layer = self.layers(model)[index]
        if not self.is_attention_present(layer):
            raise ValueError(f"attention of block {index} is already removed")
        self._detach_attention(layer)
        self._renumber_cache_slots(model)
        removed = sorted({*getattr(model.config, "twossp_removed_attention", []), index})
        model.config.twossp_removed_attention = removed

    def _detach_attention(self, layer: nn.Module) -> None:
        setattr(layer, self.attention_attr, RemovedAttention(self.attention(layer).layer_idx))
        setattr(layer, self.attention_norm_attr, nn.Identity())

    @contextmanager
    def attention_bypassed(self, layer: nn.Module) -> Iterator[None]:
        """Temporarily run ``layer`` as if its attention were removed (no KV cache involved);
        the original modules are restored in ``finally``."""
        saved = getattr(layer, self.attention_attr), getattr(layer, self.attention_norm_attr)
        self._detach_attention(layer)
        try:
            yield
        finally:
            setattr(layer, self.attention_attr, saved[0])
            setattr(layer, self.attention_norm_attr, saved[1])

    def remove_blocks(self, model: nn.Module, indices: list[int]) -> None:
        """Delete whole decoder blocks: the layer list is rebuilt without them, the remaining
        attentions re-indexed, and ``num_hidden_layers`` (and ``layer_types``) updated, so the
        config stays a stock one."""
        drop = set(indices)
        layers = self.layers(model)
        if not drop <= set(range(len(layers))):
            raise ValueError(f"blocks {sorted(drop)} out of range for {len(layers)} blocks")
        new_index = {old: new for new, old in enumerate(i for i in range(len(layers)) if i not in drop)}
        self.decoder(model).layers = nn.ModuleList(layer for i, layer in enumerate(layers) if i not in drop)
        config = model.config
        config.num_hidden_layers = len(new_index)
        if getattr(config, "layer_types", None):
            config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in drop]
        removed = getattr(config, "twossp_removed_attention", None)
        if removed:
            config.twossp_removed_attention = sorted(new_index[i] for i in removed if i in new_index)
        self._renumber_cache_slots(model)

    def _renumber_cache_slots(self, model: nn.Module) -> None:
        slot = 0
        for layer in self.layers(model):
            attn = self.attention(layer)
            if self.is_attention_present(layer):
                attn.layer_idx = slot
                slot += 1

    def check_supported(self, config: Any) -> None:
        """Raise ``UnsupportedArchitecture`` for configurations this adapter cannot prune."""
