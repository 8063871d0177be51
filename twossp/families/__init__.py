"""Model families: one adapter per architecture, in a registry keyed by the Hugging Face architecture
string (``config.architectures[0]``). Adapters are ``Lazy`` references, so importing this package
(to list families or count parameters from a config) never imports torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from twossp.contracts import BlockCounts
from twossp.errors import UnsupportedArchitecture
from twossp.families import config_counts
from twossp.registry import Lazy, Registry

if TYPE_CHECKING:
    from twossp.families.base import FamilyAdapter


@dataclass(frozen=True)
class Family:
    adapter: Lazy                          # the FamilyAdapter subclass
    description: str                       # what it covers
    counts: Callable[[Any], BlockCounts]   # parameter counts from a config alone (torch-free)


FAMILIES: Registry[Family] = Registry("architecture", {
    "LlamaForCausalLM": Family(Lazy("twossp.families.llama:LlamaAdapter"), "Llama 2, Llama 3.x, SmolLM2",
                               config_counts.llama),
    "MistralForCausalLM": Family(Lazy("twossp.families.llama:MistralAdapter"), "Mistral 7B (v0.1-v0.3)",
                                 config_counts.llama),
    "Qwen2ForCausalLM": Family(Lazy("twossp.families.llama:Qwen2Adapter"), "Qwen2, Qwen2.5 (q/k/v biases counted)",
                               config_counts.qwen2),
    "Qwen3ForCausalLM": Family(Lazy("twossp.families.llama:Qwen3Adapter"),
                               "Qwen3 (q/k norms counted with the attention)", config_counts.qwen3),
    "Phi3ForCausalLM": Family(Lazy("twossp.families.llama:Phi3Adapter"),
                              "Phi-3, Phi-3.5 (fused qkv_proj and gate_up_proj)", config_counts.llama),
    "Gemma2ForCausalLM": Family(Lazy("twossp.families.gemma:Gemma2Adapter"),
                                "Gemma 2 (four norms per block, sliding/full layers, logit soft-capping)",
                                config_counts.gemma2),
    "Gemma3ForCausalLM": Family(Lazy("twossp.families.gemma:Gemma3Adapter"),
                                "Gemma 3 text-only, e.g. 1B (q/k norms counted with the attention)",
                                config_counts.gemma3),
})

#: architectures close to a supported one but not supported, and why (added to the error message)
_NOT_SUPPORTED = {
    "Gemma3ForConditionalGeneration": "the multimodal Gemma 3 (4B and larger, with a vision tower) is not "
                                      "supported; the text-only Gemma3ForCausalLM (e.g. Gemma 3 1B) is",
}


def supported_architectures() -> list[str]:
    return sorted(FAMILIES)


def family_descriptions() -> dict[str, str]:
    """Architecture string -> what it covers, without importing any adapter (or torch)."""
    return {arch: FAMILIES[arch].description for arch in supported_architectures()}


def family_of(config: Any) -> Family:
    """The family of a transformers config or a ``config.json`` dict; ``UnsupportedArchitecture``
    (listing the supported ones) for any other."""
    get = config.get if isinstance(config, dict) else lambda name, default=None: getattr(config, name, default)
    archs = get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise UnsupportedArchitecture(f"`architectures` should be a list of class names, got {archs!r}")
    for arch in archs:
        if arch in FAMILIES:
            return FAMILIES[arch]
    got = ", ".join(archs) or f"model_type={get('model_type', '?')!r} with no architectures"
    why = "".join(f" ({_NOT_SUPPORTED[arch]})" for arch in archs if arch in _NOT_SUPPORTED)
    raise UnsupportedArchitecture(
        f"unsupported architecture {got}{why}; supported: {', '.join(supported_architectures())}"
    )


def adapter_for(config: Any) -> "FamilyAdapter":
    """The adapter for a transformers config; ``UnsupportedArchitecture`` lists the supported ones."""
    return family_of(config).adapter.load()()


def config_block_counts(config: Any, adapter: type | None = None) -> BlockCounts:
    """Parameter counts from a config (object or ``config.json`` dict) alone, without torch; with
    ``adapter`` (a class), that family's counting, whatever the config's architecture says."""
    if adapter is None:
        return family_of(config).counts(config)
    path = f"{adapter.__module__}:{adapter.__qualname__}"
    return next(family.counts for family in FAMILIES.values() if family.adapter.path == path)(config)
