"""Gemma 2 and Gemma 3 (text-only) families.

Decoder layer = input_layernorm -> self_attn -> post_attention_layernorm -> residual;
pre_feedforward_layernorm -> mlp(gate, up, down) -> post_feedforward_layernorm -> residual.

Each submodule is sandwiched between two norms of its own, so a removed attention takes both of its
norms with it and a removed FFN both of its. Gemma's RMS norm computes x / rms(x) * (1 + w); the
norm of the stand-ins' zero output is zero, so replacing the post-norm by the identity is exact.

Layers alternate sliding-window and full attention (``config.layer_types``); the KV-cache slots are
assigned per type by ``FamilyAdapter._renumber_cache_slots`` (once every sliding attention is gone,
block 0, a sliding layer, is relabelled full there, so that cache slot 0 stays live). The token embeddings are
scaled by sqrt(hidden_size) inside the embedding module, so a decoder forward sees exactly what
``model.forward`` sees. The final logits are soft-capped (``config.final_logit_softcapping``) in
``ForCausalLM.forward``, after the LM head: ``logits`` below applies the same cap, so that stage 2
and perplexity, which compute logits from hidden states, match the model.
"""

from __future__ import annotations

import torch
from torch import nn

from twossp.families.llama import LlamaAdapter


class Gemma2Adapter(LlamaAdapter):
    """Gemma 2: four norms per block, attention logit soft-capping (inside the attention, removed
    with it) and final logit soft-capping (applied in ``logits``)."""

    name = "gemma2"
    attention_norm_attrs = ("input_layernorm", "post_attention_layernorm")
    ffn_norm_attrs = ("pre_feedforward_layernorm", "post_feedforward_layernorm")

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """LM head, then cap = c * tanh(logits / c) as ``Gemma2ForCausalLM.forward`` does."""
        logits = model.lm_head(hidden)
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits


class Gemma3Adapter(Gemma2Adapter):
    """Gemma 3 text-only (``Gemma3ForCausalLM``, e.g. Gemma 3 1B): the Gemma 2 layout plus per-head
    q/k RMS norms inside the attention (removed with it) and a RoPE base per layer type. The
    multimodal ``Gemma3ForConditionalGeneration`` (4B and larger) is not registered."""

    name = "gemma3"
