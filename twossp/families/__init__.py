"""Model families: one adapter per architecture, in a registry keyed by the Hugging Face architecture
string (``config.architectures[0]``). Entries are lazy ``"module:Class"`` strings so importing this
package never imports torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from twossp.errors import UnsupportedArchitecture

if TYPE_CHECKING:
    from twossp.families.base import FamilyAdapter
    from twossp.prune.budget import BlockCounts

#: architecture -> (adapter, what it covers, parameter counts from a config alone; torch-free)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "LlamaForCausalLM": ("twossp.families.llama:LlamaAdapter", "Llama 2, Llama 3.x, SmolLM2",
                         "twossp.families.config_counts:llama"),
    "MistralForCausalLM": ("twossp.families.llama:MistralAdapter", "Mistral 7B (v0.1-v0.3)",
                           "twossp.families.config_counts:llama"),
    "Qwen2ForCausalLM": ("twossp.families.llama:Qwen2Adapter", "Qwen2, Qwen2.5 (q/k/v biases counted)",
                         "twossp.families.config_counts:qwen2"),
    "Qwen3ForCausalLM": ("twossp.families.llama:Qwen3Adapter", "Qwen3 (q/k norms counted with the attention)",
                         "twossp.families.config_counts:qwen3"),
    "Phi3ForCausalLM": ("twossp.families.llama:Phi3Adapter", "Phi-3, Phi-3.5 (fused qkv_proj and gate_up_proj)",
                        "twossp.families.config_counts:llama"),
    "Gemma2ForCausalLM": ("twossp.families.gemma:Gemma2Adapter",
                          "Gemma 2 (four norms per block, sliding/full layers, logit soft-capping)",
                          "twossp.families.config_counts:gemma2"),
    "Gemma3ForCausalLM": ("twossp.families.gemma:Gemma3Adapter",
                          "Gemma 3 text-only, e.g. 1B (q/k norms counted with the attention)",
                          "twossp.families.config_counts:gemma3"),
}

#: architectures close to a supported one but not supported, and why (added to the error message)
_NOT_SUPPORTED = {
    "Gemma3ForConditionalGeneration": "the multimodal Gemma 3 (4B and larger, with a vision tower) is not "
                                      "supported; the text-only Gemma3ForCausalLM (e.g. Gemma 3 1B) is",
}


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def family_descriptions() -> dict[str, str]:
    """Architecture string -> what it covers, without importing any adapter (or torch)."""
    return {arch: desc for arch, (_, desc, _) in sorted(_REGISTRY.items())}


def _entry(config: Any) -> tuple[str, str, str]:
    get = config.get if isinstance(config, dict) else lambda name, default=None: getattr(config, name, default)
    archs = list(get("architectures") or [])
    for arch in archs:
        if arch in _REGISTRY:
            return _REGISTRY[arch]
    got = ", ".join(archs) or f"model_type={get('model_type', '?')!r} with no architectures"
    why = "".join(f" ({_NOT_SUPPORTED[arch]})" for arch in archs if arch in _NOT_SUPPORTED)
    raise UnsupportedArchitecture(
        f"unsupported architecture {got}{why}; supported: {', '.join(supported_architectures())}"
    )


def _load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def adapter_for(config: Any) -> "FamilyAdapter":
    """The adapter for a transformers config; ``UnsupportedArchitecture`` lists the supported ones."""
    return _load(_entry(config)[0])()


def config_block_counts(config: Any, adapter: type | None = None) -> "BlockCounts":
    """Parameter counts from a config (object or ``config.json`` dict) alone, without torch; with
    ``adapter`` (a class), that family's counting, whatever the config's architecture says."""
    if adapter is None:
        return _load(_entry(config)[2])(config)
    name = f"{adapter.__module__}:{adapter.__qualname__}"
    counts = next(entry[2] for entry in _REGISTRY.values() if entry[0] == name)
    return _load(counts)(config)
