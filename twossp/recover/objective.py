"""What a recovery step minimises on a batch of windows: the forward KL divergence from the dense
model's next-token distribution to the student's (knowledge distillation), the student's next-token
cross-entropy, or a mix of the two.

Logits are the memory hog of training (a 150k vocabulary makes 600 KB of float32 per position, and
their softmax as much again), so they are made ``chunk`` positions at a time from the final hidden
states; when a batch holds more positions than one chunk, each chunk's logits are recomputed in the
backward pass (activation checkpointing) instead of kept, so at most one chunk of logits is alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from twossp.families.base import FamilyAdapter

#: positions whose logits are made at once
CHUNK = 1024


@dataclass
class BatchLoss:
    """Sums over a batch's predicted positions: what is minimised (``objective``, with its graph) and
    its parts, detached; divide by ``tokens`` for means."""

    objective: torch.Tensor
    kd: float | None
    ce: float
    tokens: int


def final_hidden(model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor) -> torch.Tensor:
    """The decoder's final hidden states (after its final norm) of a batch of windows, no cache."""
    return adapter.decoder(model)(input_ids=windows, use_cache=False).last_hidden_state


class Objective:
    """``loss: kd``: ``(1 - ce_weight) * T^2 * KL(teacher_T || student_T) + ce_weight * CE``, the
    distributions softened by the temperature ``T``; ``loss: ce``: the next-token cross-entropy alone
    (no teacher). Both are sums over positions (each window's last token predicts nothing)."""

    def __init__(self, adapter: FamilyAdapter, loss: str, temperature: float = 1.0, ce_weight: float = 0.0,
                 chunk: int = CHUNK) -> None:
        self.adapter, self.loss, self.temperature, self.ce_weight, self.chunk = adapter, loss, temperature, ce_weight, chunk

    @property
    def distils(self) -> bool:
        return self.loss == "kd"

    def __call__(self, student: nn.Module, teacher: nn.Module | None, windows: torch.Tensor) -> BatchLoss:
        hidden = final_hidden(student, self.adapter, windows)[:, :-1].flatten(0, 1)
        targets = windows[:, 1:].flatten().to(hidden.device)
        teacher_hidden = None
        if self.distils:
            with torch.no_grad():
                teacher_hidden = final_hidden(teacher, self.adapter, windows)[:, :-1].flatten(0, 1)
        total = hidden.new_zeros((), dtype=torch.float32)
        kd_sum, ce_sum = 0.0, 0.0
        recompute = hidden.shape[0] > self.chunk
        for start in range(0, hidden.shape[0], self.chunk):
            part = slice(start, start + self.chunk)
            args = (hidden[part], targets[part], teacher_hidden[part] if teacher_hidden is not None else None)
            objective, kd, ce = (checkpoint(self._terms, student, teacher, *args, use_reentrant=False) if recompute
                                 else self._terms(student, teacher, *args))
            total = total + objective
            kd_sum += float(kd)
            ce_sum += float(ce)
        return BatchLoss(total, kd_sum if self.distils else None, ce_sum, int(targets.numel()))

    def _terms(self, student: nn.Module, teacher: nn.Module | None, hidden: torch.Tensor, targets: torch.Tensor,
               teacher_hidden: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(what is minimised, KD sum, CE sum) over one chunk of positions; the last two detached."""
        logits = self.adapter.logits(student, hidden).float()
        ce = F.cross_entropy(logits, targets, reduction="sum")
        if not self.distils:
            return ce, ce.new_zeros(()), ce.detach()
        t = self.temperature
        with torch.no_grad():
            target = F.log_softmax(self.adapter.logits(teacher, teacher_hidden).float() / t, dim=-1)
        kd = F.kl_div(F.log_softmax(logits / t, dim=-1), target, log_target=True, reduction="sum") * (t * t)
        objective = (1 - self.ce_weight) * kd + self.ce_weight * ce if self.ce_weight else kd
        return objective, kd.detach(), ce.detach()


def objective_of(adapter: FamilyAdapter, spec: Any) -> Objective:
    """The objective of a ``RecoverySpec``."""
    return Objective(adapter, spec.loss, spec.temperature, spec.ce_weight)
