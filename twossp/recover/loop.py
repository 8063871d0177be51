"""The recovery loop: a pruned model trained for a fixed number of optimiser steps on windows of
text, by AdamW with warm-up then a cosine, linear or constant learning rate (torch's own optimiser
and schedulers), gradients accumulated over micro-batches and clipped, every step recorded.

Written once for every device: float32 weights are trained (a model loaded in bf16 is trained in
float32 and put back in bf16; LoRA adapters are float32 anyway), the forwards run under bf16
autocast where the run's dtype is bf16. On the CPU a seed makes a recovery repeatable: it orders the
windows and initialises the adapters. Not resumable: a recovery that fails is run again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from twossp.contracts import RecoveryStep
from twossp.device import autocast, synchronize
from twossp.errors import RecoveryFailed
from twossp.families.base import FamilyAdapter
from twossp.recover.lora import merged, with_adapters
from twossp.recover.objective import Objective, objective_of

Progress = Callable[[str, int, int], None]


@dataclass
class Windows:
    """A recovery's text cut into windows: those it trains on, and those held out to measure it."""

    train: torch.Tensor    # (N, seq_len)
    heldout: torch.Tensor  # (M, seq_len), M = 0 without evaluation

    @classmethod
    def cut(cls, tokens: torch.Tensor, seq_len: int, batch_size: int, heldout: int) -> "Windows":
        """Consecutive windows of ``seq_len`` tokens; the last ``heldout`` are kept out of training."""
        count = tokens.numel() // seq_len
        windows = tokens[: count * seq_len].view(count, seq_len)
        if count - heldout < batch_size:
            raise RecoveryFailed(f"the recovery text has {tokens.numel():,} tokens: {count} windows of {seq_len}, "
                                 f"too few for {heldout} held-out windows and a batch of {batch_size}; give more "
                                 "text, or a shorter `seq_len`, smaller `batch_size` or fewer `eval_windows`")
        return cls(windows[: count - heldout], windows[count - heldout:])

    def batches(self, batch_size: int, seed: int):  # noqa: ANN201 - an endless iterator of tensors
        """Batches of training windows, endlessly: each pass over them in an order of its own, drawn
        from ``seed``; the windows a pass leaves over (fewer than a batch) wait for the next."""
        epoch = 0
        while True:
            order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed + epoch))
            for start in range(0, len(order) - batch_size + 1, batch_size):
                yield self.train[order[start:start + batch_size]]
            epoch += 1


@dataclass
class RecoveryOutcome:
    """What a recovery did: the model to evaluate (adapters merged) and its record."""

    model: nn.Module
    curve: list[RecoveryStep]
    trainable_params: int
    total_params: int
    tokens: int                          # training tokens read
    seconds: float                       # training wall time (held-out measurements not counted)
    train_windows: int
    heldout_windows: int
    epochs: float                        # passes over the training windows
    heldout_before: float | None = None  # held-out perplexity of the pruned model, before step 1
    #: the step whose weights were kept (``keep_best``: the lowest held-out perplexity; 0: none beat
    #: the pruned model, whose weights are kept); None: the last step's
    best_step: int | None = None

    def details(self) -> dict[str, Any]:
        """``runs.details["recovery"]`` (the run adds where it started from)."""
        return {"trainable_params": self.trainable_params, "total_params": self.total_params, "tokens": self.tokens,
                "seconds": round(self.seconds, 3),
                "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds else None,
                "train_windows": self.train_windows, "heldout_windows": self.heldout_windows,
                "epochs": round(self.epochs, 3), "heldout_perplexity_before": self.heldout_before,
                "best_step": self.best_step, "final_loss": self.curve[-1].loss if self.curve else None}


def schedule(optimizer: torch.optim.Optimizer, spec: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """``warmup`` steps rising linearly to ``lr``, then the ``schedule`` (cosine or linear to zero at
    the last step, or constant), stepped once per optimiser step."""
    from torch.optim import lr_scheduler

    rest = spec.steps - spec.warmup
    after = {"cosine": lambda: lr_scheduler.CosineAnnealingLR(optimizer, T_max=rest),
             "linear": lambda: lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=rest),
             "constant": lambda: lr_scheduler.ConstantLR(optimizer, 1.0, total_iters=0)}[spec.schedule]()
    if not spec.warmup:
        return after
    warm = lr_scheduler.LinearLR(optimizer, 1.0 / (spec.warmup + 1), 1.0, total_iters=spec.warmup)
    return lr_scheduler.SequentialLR(optimizer, [warm, after], milestones=[spec.warmup])


def heldout_perplexity(model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, batch_size: int,
                       device: torch.device, dtype: torch.dtype) -> float:
    """exp of the mean next-token cross-entropy of ``model`` over ``windows``."""
    ce = Objective(adapter, "ce")
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(device, dtype):
        for start in range(0, len(windows), batch_size):
            loss = ce(model, None, windows[start:start + batch_size].to(device))
            total, tokens = total + loss.ce, tokens + loss.tokens
    model.train(was_training)
    return math.exp(total / tokens)


def recover(student: nn.Module, teacher: nn.Module | None, adapter: FamilyAdapter, tokens: torch.Tensor, spec: Any,
            device: torch.device, dtype: torch.dtype, progress: Progress | None = None) -> RecoveryOutcome:
    """Heal ``student`` (a pruned model on ``device``) as ``spec`` (a ``RecoverySpec``) says, on
    ``tokens`` (the recovery text); ``teacher``: the dense model, for ``loss: kd``. The student is
    changed in place; the outcome's model is the one to use (LoRA adapters merged into it)."""
    progress = progress or (lambda phase, done, total: None)
    windows = Windows.cut(tokens, spec.seq_len, spec.batch_size, spec.eval_windows if spec.eval_every else 0)
    objective = objective_of(adapter, spec)
    if objective.distils and teacher is None:
        raise RecoveryFailed("distillation needs the dense model as its teacher")
    torch.manual_seed(spec.seed)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    model = student.float() if spec.tune == "full" else student  # float32 weights are trained
    peft = with_adapters(model, adapter, spec.adapters) if spec.tune == "lora" else None
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = schedule(optimizer, spec)

    def measure() -> float:
        return heldout_perplexity(model, adapter, windows.heldout, spec.batch_size, device, dtype)

    def snapshot() -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    heldout_before = measure() if spec.eval_every else None
    best = (heldout_before, 0, snapshot()) if spec.eval_every and spec.keep_best else None  # (ppl, step, weights)
    batches = windows.batches(spec.batch_size, spec.seed)
    curve: list[RecoveryStep] = []
    seen, seconds = 0, 0.0
    for step in range(1, spec.steps + 1):
        progress("recovery", step - 1, spec.steps)
        synchronize(device)
        began = time.perf_counter()
        parts = [_micro_step(model, teacher, objective, next(batches).to(device), device, dtype, spec.accumulation)
                 for _ in range(spec.accumulation)]
        norm, lr = _update(trainable, optimizer, scheduler, spec.max_grad_norm)
        synchronize(device)
        seconds += time.perf_counter() - began
        count = sum(p.tokens for p in parts)
        seen += sum(p.read for p in parts)
        loss = sum(p.loss for p in parts) / count
        if not math.isfinite(loss):
            raise RecoveryFailed(f"the recovery loss became {loss} at step {step} (learning rate {lr:.3g}); "
                                 "lower `lr` or `max_grad_norm`")
        heldout = measure() if spec.eval_every and (step % spec.eval_every == 0 or step == spec.steps) else None
        if best is not None and heldout is not None and heldout < best[0]:
            best = (heldout, step, snapshot())
        curve.append(RecoveryStep(
            step=step, loss=loss, kd_loss=sum(p.kd for p in parts) / count if objective.distils else None,
            ce_loss=sum(p.ce for p in parts) / count, lr=lr,
            grad_norm=float(norm) if math.isfinite(float(norm)) else None, tokens=seen, seconds=seconds,
            heldout_perplexity=heldout))
    progress("recovery", spec.steps, spec.steps)
    best_step = None
    if best is not None and best[1] != spec.steps:  # an earlier step (or none: 0) measured best
        _restore(model, best[2])
        best_step = best[1]
    counted = sum(p.numel() for p in trainable)
    total = sum(p.numel() for p in model.parameters())
    model.eval()
    result = merged(peft) if peft is not None else model
    result.requires_grad_(False)
    return RecoveryOutcome(model=result.to(dtype), curve=curve, trainable_params=counted, total_params=total,
                           tokens=seen, seconds=seconds, train_windows=len(windows.train),
                           heldout_windows=len(windows.heldout), epochs=seen / windows.train.numel(),
                           heldout_before=heldout_before, best_step=best_step)


def _update(trainable: list[nn.Parameter], optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, max_grad_norm: float | None) -> tuple[torch.Tensor, float]:
    """One optimiser step on the accumulated gradients, clipped: (their norm before clipping, the lr used)."""
    norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm or math.inf)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return norm, lr


def _restore(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Put a snapshot of trained parameters (by name) back into ``model``."""
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        for name, value in weights.items():
            parameters[name].copy_(value)


@dataclass
class _Part:
    """One micro-batch's sums (``BatchLoss``) and how many tokens it read."""

    loss: float
    kd: float
    ce: float
    tokens: int  # predicted positions
    read: int    # tokens read (each window's last one predicts nothing but is read)


def _micro_step(model: nn.Module, teacher: nn.Module | None, objective: Objective, windows: torch.Tensor,
                device: torch.device, dtype: torch.dtype, accumulation: int) -> _Part:
    """Forward and backward of one micro-batch; its gradient is 1/``accumulation`` of the step's
    (each micro-batch's loss is its mean over its own tokens, all micro-batches the same size)."""
    with autocast(device, dtype):
        loss = objective(model, teacher, windows)
    (loss.objective / (loss.tokens * accumulation)).backward()
    return _Part(float(loss.objective.detach()), loss.kd or 0.0, loss.ce, loss.tokens, windows.numel())
