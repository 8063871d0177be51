"""Tiny deterministic models built from the real transformers config classes, and what the tests
read off a model: its logits, its parameter counts, the call of one of its layers.

Weights are re-drawn from a seeded generator after construction (norm scales and biases included),
so that every parameter is non-trivial: biases that transformers initialises to zero and norm
weights initialised to one would otherwise hide slicing or counting mistakes.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    PretrainedConfig,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3")

_CLASSES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "phi3": (Phi3Config, Phi3ForCausalLM),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM),
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM),
}

#: Gemma's defaults (head_dim 256, windows of 4096 tokens) are far too wide for these models. A window
#: of 4 makes the sliding layers really slide in short tests; caps of 3 (final) and 5 (attention,
#: Gemma 2) really bend the logits; Gemma 3 gets a full layer every 3rd (not 6th) so small models
#: mix both types.
_GEMMA = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=4, final_logit_softcapping=3.0)
_EXTRA = {"gemma2": {**_GEMMA, "attn_logit_softcapping": 5.0}, "gemma3": {**_GEMMA, "sliding_window_pattern": 3}}

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_config(family: str = "llama", num_layers: int = 4, **overrides) -> PretrainedConfig:
    config_cls, model_cls = _CLASSES[family]
    kwargs = {**TINY, "num_hidden_layers": num_layers, **overrides}
    if family == "qwen3":
        kwargs.setdefault("head_dim", 16)  # Qwen3Config defaults to 128, far too wide for hidden 64
    kwargs = {**_EXTRA.get(family, {}), **kwargs}
    config = config_cls(**kwargs)
    config.architectures = [model_cls.__name__]
    return config


def tiny_model(family: str = "llama", num_layers: int = 4, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny fp32 model in eval mode whose weights depend only on ``seed``."""
    config = tiny_config(family, num_layers, **overrides)
    torch.manual_seed(seed)
    model = _CLASSES[family][1](config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                # larger than the usual 0.02 so that logits are far from uniform and the greedy
                # attention search has clear (non-tied) winners
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    return model


def random_tokens(n: int, length: int, vocab: int = TINY["vocab_size"], seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=gen)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The model's own logits on ``ids`` (its forward, soft-capping included), without gradients."""
    with torch.no_grad():
        return model(ids).logits


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_numel(model: torch.nn.Module) -> int:
    """Parameters inside the decoder layers, counted from the state dict's shapes alone (independent
    of the adapters' counting)."""
    return sum(t.numel() for k, t in model.state_dict().items() if ".layers." in k)


def layer_call(model: torch.nn.Module, layer: torch.nn.Module, ids: torch.Tensor) -> tuple[Any, dict, Any]:
    """The input, call arguments and output of ``layer`` in a forward of ``model`` on ``ids`` (the
    hook is removed whatever happens)."""
    captured = {}
    handle = layer.register_forward_hook(
        lambda mod, args, kwargs, out: captured.update(inp=args[0] if args else kwargs["hidden_states"],
                                                       kwargs=kwargs, out=out),
        with_kwargs=True)
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    return captured["inp"], captured["kwargs"], captured["out"]


def hf_format(family: str) -> str:
    """The Hugging Face export format that writes a pruned ``family`` model: the portable
    (Nemotron-NAS) one for the Llama block, the zero-filled stock one for the rest."""
    return "safetensors" if family in ("llama", "mistral") else "hf-stock"
