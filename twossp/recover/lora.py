"""LoRA adapters (peft) on what a pruned model still has, merged back into its weights.

Only the linear layers inside the decoder blocks are adapted, each from its own shape, so blocks
whose FFNs were narrowed differently get adapters of their own widths, and a removed attention or
FFN (a weightless stand-in after surgery) has nothing to adapt. The LM head and the embeddings are
never adapted: many models tie them (SmolLM2's are 21% of its weights), and an adapter on a tied
head does not survive merging and reloading.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from twossp.errors import RecoveryFailed
from twossp.families.base import FamilyAdapter


def live_linear_layers(model: nn.Module, adapter: FamilyAdapter, targets: list[str] | None = None) -> list[str]:
    """The full names of the linear layers inside the decoder blocks (every one, or those whose own
    name is in ``targets``: ``q_proj``, ``down_proj``...), in block order."""
    names = {id(module): name for name, module in model.named_modules()}
    found: list[str] = []
    present: set[str] = set()
    for block in adapter.layers(model):
        prefix = names[id(block)]
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear) and module.in_features and module.out_features:
                own = name.rsplit(".", 1)[-1]
                present.add(own)
                if targets is None or own in targets:
                    found.append(f"{prefix}.{name}")
    unknown = sorted(set(targets or ()) - present)
    if unknown:
        raise RecoveryFailed(f"LoRA target {', '.join(map(repr, unknown))} is not a linear layer of the pruned "
                             f"model's blocks; they have {', '.join(sorted(present))}")
    return found


def with_adapters(model: nn.Module, adapter: FamilyAdapter, settings: Any) -> Any:
    """``model`` with LoRA adapters of ``settings`` (a ``LoraSpec``) on its live linear layers, every
    other weight frozen; the peft model, whose ``merge_and_unload`` gives the plain model back. The
    adapters' initial weights come from torch's generator (seed it first for a repeatable run)."""
    from peft import LoraConfig, get_peft_model

    targets = live_linear_layers(model, adapter, settings.targets)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none")
    with warnings.catch_warnings():  # peft asks transformers a deprecated question (is_gradient_checkpointing)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def merged(peft_model: Any) -> nn.Module:
    """The plain model with every adapter folded into its layer's weight (W + B A * alpha / r)."""
    return peft_model.merge_and_unload()
