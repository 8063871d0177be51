"""Model families: one adapter per architecture, in a registry keyed by the Hugging Face architecture
string (``config.architectures[0]``). Entries are lazy ``"module:Class"`` strings so importing this
package never imports torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from twossp.errors import UnsupportedArchitecture

if TYPE_CHECKING:
    from twossp.families.base import FamilyAdapter

_REGISTRY: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("twossp.families.llama:LlamaAdapter", "Llama 2, Llama 3.x, SmolLM2"),
    "MistralForCausalLM": ("twossp.families.llama:MistralAdapter", "Mistral 7B (v0.1-v0.3)"),
    "Qwen2ForCausalLM": ("twossp.families.llama:Qwen2Adapter", "Qwen2, Qwen2.5 (q/k/v biases counted)"),
}


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def family_descriptions() -> dict[str, str]:
    """Architecture string -> what it covers, without importing any adapter (or torch)."""
    return {arch: desc for arch, (_, desc) in sorted(_REGISTRY.items())}


def adapter_for(config: Any) -> "FamilyAdapter":
    """The adapter for a transformers config; ``UnsupportedArchitecture`` lists the supported ones."""
    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        if arch in _REGISTRY:
            module, cls = _REGISTRY[arch][0].split(":")
            return getattr(importlib.import_module(module), cls)()
    got = ", ".join(archs) or f"model_type={getattr(config, 'model_type', '?')!r} with no architectures"
    raise UnsupportedArchitecture(
        f"unsupported architecture {got}; supported: {', '.join(supported_architectures())}"
    )
