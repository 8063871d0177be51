"""What pruning code needs to know about a model family, and nothing more: pruning code talks to an
adapter, never to ``model.model.layers[i].mlp`` directly."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from twossp.contracts import BlockCounts
from twossp.errors import PlacementError


class RemovedAttention(nn.Module):
    """Stands where a pruned attention submodule was: owns no weights and adds nothing to the
    residual stream (the block keeps its residual path and FFN, docs/method.md, Stage 2)."""

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


class RemovedFFN(nn.Module):
    """Stands where a pruned FFN submodule was (BlockPruner removes FFNs whole): no weights, and a
    zero contribution to the residual stream."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def new_linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    """The one way twossp builds a Linear from kept (or computed) weights: ``weight`` is
    (out, in), cast to ``like``'s dtype and device, which also gives the trainability. A weight that
    is not real (``meta``: a streamed block outside ``Placement.resident``) is refused, never copied."""
    if weight.is_meta or like.weight.is_meta:
        raise PlacementError("a Linear cannot be built from a weight that is not in memory (a streamed "
                             "block must be resident while it is edited)")
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=like.weight.device,
                    dtype=like.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(like.weight.requires_grad)
    return new


def slice_rows(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """A new Linear keeping only output features ``keep`` (rows of the weight, entries of the bias)."""
    keep = keep.to(linear.weight.device)
    bias = linear.bias[keep] if linear.bias is not None else None
    return new_linear(linear.weight[keep], bias, linear)


def slice_columns(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """A new Linear keeping only input features ``keep`` (columns of the weight; the bias stays)."""
    keep = keep.to(linear.weight.device)
    return new_linear(linear.weight[:, keep], linear.bias, linear)


def zero_padded(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``tensor`` extended with zeros along ``dim`` to ``size``."""
    shape = list(tensor.shape)
    shape[dim] = size - shape[dim]
    return torch.cat([tensor.detach(), tensor.new_zeros(shape)], dim=dim)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class FamilyAdapter:
    """Base adapter. Subclasses name the submodules of their family's decoder layer."""

    name = "?"
    #: Attributes of a decoder layer that a removed attention takes with it: the attention itself
    #: and the norms that only touch its input or output. Replaced by a weightless stand-in and
    #: ``nn.Identity`` (an RMS norm of the zero output is zero, so the identity is exact).
    attention_attr = "self_attn"
    attention_norm_attrs: tuple[str, ...] = ("input_layernorm",)
    #: The same for the FFN (removed whole by BlockPruner).
    ffn_attr = "mlp"
    ffn_norm_attrs: tuple[str, ...] = ("post_attention_layernorm",)

    @property
    def attention_parts(self) -> tuple[str, ...]:
        """The attributes a removed attention takes with it."""
        return (self.attention_attr, *self.attention_norm_attrs)

    @property
    def ffn_parts(self) -> tuple[str, ...]:
        """The attributes a removed FFN takes with it."""
        return (self.ffn_attr, *self.ffn_norm_attrs)

    # --- where things are -------------------------------------------------------------------
    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.decoder(model).layers

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attention_attr)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.ffn_attr)

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

    def is_ffn_present(self, layer: nn.Module) -> bool:
        return not isinstance(self.mlp(layer), RemovedFFN)

    def block_counts(self, model: nn.Module) -> BlockCounts:
        """P_attn and P_mlp measured on the first block that still has each submodule (block 0 of a
        dense model), P_layers on every block (docs/method.md, Terms)."""
        layers = self.layers(model)
        with_attn = [layer for layer in layers if self.is_attention_present(layer)]
        with_ffn = [layer for layer in layers if self.is_ffn_present(layer)]
        return BlockCounts(
            num_layers=len(layers),
            intermediate_size=self.ffn_width(with_ffn[0]) if with_ffn else 0,
            attn_params=count(self.attention(with_attn[0])) if with_attn else 0,
            mlp_params=count(self.mlp(with_ffn[0])) if with_ffn else 0,
            layer_params=count(layers),
        )

    def ffn_width(self, layer: nn.Module) -> int:
        return self.ffn_down(layer).in_features

    # --- surgery (structural: weights really removed, config updated) -----------------------
    def prune_ffn(self, layer: nn.Module, keep: torch.Tensor) -> None:
        raise NotImplementedError

    def padded_ffn(self, layer: nn.Module, width: int) -> dict[str, torch.Tensor]:
        """The FFN's tensors (named as in ``layer.state_dict()``) widened to ``width`` neurons with
        zero neurons, which add exactly 0; ``layer`` is left as it is."""
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

    def remove_ffn(self, model: nn.Module, index: int) -> None:
        """Replace block ``index``'s FFN (and the norms that only touch it) by a weightless stand-in;
        recorded in ``config.twossp_removed_ffn``."""
        layer = self.layers(model)[index]
        if not self.is_ffn_present(layer):
            raise ValueError(f"FFN of block {index} is already removed")
        self._detach_ffn(layer)
        model.config.twossp_removed_ffn = sorted({*getattr(model.config, "twossp_removed_ffn", []), index})

    def _detach_attention(self, layer: nn.Module) -> None:
        setattr(layer, self.attention_attr, RemovedAttention(self.attention(layer).layer_idx))
        for attr in self.attention_norm_attrs:
            setattr(layer, attr, nn.Identity())

    def _detach_ffn(self, layer: nn.Module) -> None:
        setattr(layer, self.ffn_attr, RemovedFFN())
        for attr in self.ffn_norm_attrs:
            setattr(layer, attr, nn.Identity())

    @contextmanager
    def _swapped(self, layer: nn.Module, attrs: tuple[str, ...], detach: Any) -> Iterator[None]:
        saved = {attr: getattr(layer, attr) for attr in attrs}
        detach(layer)
        try:
            yield
        finally:
            for attr, module in saved.items():
                setattr(layer, attr, module)

    def attention_bypassed(self, layer: nn.Module) -> Any:
        """Context manager: run ``layer`` as if its attention were removed (no KV cache involved);
        the original modules are restored on exit."""
        return self._swapped(layer, (self.attention_attr, *self.attention_norm_attrs), self._detach_attention)

    def ffn_bypassed(self, layer: nn.Module) -> Any:
        """Context manager: run ``layer`` as if its FFN were removed; restored on exit."""
        return self._swapped(layer, (self.ffn_attr, *self.ffn_norm_attrs), self._detach_ffn)

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
        for key in ("twossp_removed_attention", "twossp_removed_ffn"):
            removed = getattr(config, key, None)
            if removed:
                setattr(config, key, sorted(new_index[i] for i in removed if i in new_index))
        self._renumber_cache_slots(model)

    def _renumber_cache_slots(self, model: nn.Module) -> None:
        """Give the live attentions KV-cache slots so that slot 0 is live (transformers reads the
        cached length from slot 0) and, where layers differ in type (sliding-window vs full,
        ``config.layer_types``), every attention gets a slot of its own type: a cache builds slot k
        from ``layer_types[k]``. Each attention takes the lowest free slot of its type."""
        layers = self.layers(model)
        types = list(getattr(model.config, "layer_types", None) or [])
        if len(types) != len(layers):
            types = ["attention"] * len(layers)
        live_types = [t for layer, t in zip(layers, types) if self.is_attention_present(layer)]
        if live_types and types[0] not in live_types:
            # Every attention of block 0's type is gone, block 0's own included (e.g. all sliding
            # ones in Gemma). A block without attention reads no mask, rotary embedding or cache
            # slot, so block 0 takes a live attention's type: slot 0 is then built for that type and
            # one of those attentions holds it. Recorded in the config, so a reload builds the same.
            types[0] = live_types[0]
            model.config.layer_types = list(types)
        free = {t: [k for k, tk in enumerate(types) if tk == t] for t in set(types)}
        for layer, kind in zip(layers, types):
            if self.is_attention_present(layer):
                self.attention(layer).layer_idx = free[kind].pop(0)

    def check_supported(self, config: Any) -> None:
        """Raise ``UnsupportedArchitecture`` for configurations this adapter cannot prune."""


def layer_output(output: Any) -> torch.Tensor:
    """A decoder layer's hidden states: transformers 5 layers return the tensor, older ones a tuple
    whose first item is it."""
    return output[0] if isinstance(output, tuple) else output


def nll_sum(adapter: FamilyAdapter, model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
            chunk: int = 1024) -> torch.Tensor:
    """Summed next-token NLL of one window from the decoder's final hidden state.

    ``hidden`` is (1, L, d) and ``targets`` the window's tokens; position t predicts token t+1.
    Logits are made ``chunk`` positions at a time so a 150k vocabulary never holds L x V floats."""
    h = hidden[0, :-1]
    y = targets.to(h.device).view(-1)[1:]
    total = torch.zeros((), dtype=torch.float64, device=h.device)
    for start in range(0, h.shape[0], chunk):
        logits = adapter.logits(model, h[start:start + chunk]).float()
        total += F.cross_entropy(logits, y[start:start + chunk], reduction="sum").double()
    return total
