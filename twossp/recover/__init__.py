"""Recovery: healing a pruned model before it is evaluated (``recovery:`` in a sweep).

A recovered run starts from its pruning run's model and trains it for a fixed number of steps,
either to match the dense model's next-token distribution (distillation, forward KL) or on the
next-token loss alone, every weight or LoRA adapters (peft) merged at the end. ``loop`` is the
training loop, ``objective`` what it minimises (logits made a chunk at a time), ``lora`` the
adapters.
"""

from twossp.recover.loop import RecoveryOutcome, Windows, heldout_perplexity, recover
from twossp.recover.lora import live_linear_layers, merged, with_adapters
from twossp.recover.objective import BatchLoss, Objective, final_hidden

__all__ = ["BatchLoss", "Objective", "RecoveryOutcome", "Windows", "final_hidden", "heldout_perplexity",
           "live_linear_layers", "merged", "recover", "with_adapters"]
