"""Model families: one adapter per architecture, in a registry keyed by the Hugging Face architecture
string (``config.architectures[0]``). Entries are lazy ``"module:Class"`` strings so importing this
package never imports torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from twossp.errors import UnsupportedArchitecture

if TYPE_CHECKING:
    from twossp.families.base import FamilyAdapter

_REGISTRY: dict[str, str] = {
    "LlamaForCausalLM": "twossp.families.llama:LlamaAdapter",
    "MistralForCausalLM": "twossp.families.llama:MistralAdapter",
    "Qwen2ForCausalLM": "twossp.families.llama:Qwen2Adapter",
}


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def adapter_for(config: Any) -> "FamilyAdapter":
    """The adapter for a transformers config; ``UnsupportedArchitecture`` lists the supported ones."""
    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        if arch in _REGISTRY:
            module, cls = _REGISTRY[arch].split(":")
            return getattr(importlib.import_module(module), cls)()
    got = ", ".join(archs) or f"model_type={getattr(config, 'model_type', '?')!r} with no architectures"
    raise UnsupportedArchitecture(
        f"unsupported architecture {got}; supported: {', '.join(supported_architectures())}"
    )
