"""Inference speed of one (possibly pruned) model: prefill time, greedy decode rate, peak memory.

The paper's protocol for inference time is "one forward of a 2048-token sample, 10 warm-up runs
then 10 timed"; ``measure_speed`` implements that protocol for the prefill and adds a greedy
KV-cache decode. The window length, warm-up and repeat counts are the caller's (the run spec's
defaults), not fixed here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from twossp.device import elapsed, peak_memory, reset_peak_memory


@dataclass(frozen=True)
class Speed:
    """What ``measure_speed`` measured (times in seconds, memory in bytes)."""

    prefill_seconds: float                    # mean over the timed prefill forwards
    prefill_seconds_sd: float | None          # sample sd; None for a single repeat
    prefill_tokens: int                       # tokens in the window one prefill forward reads
    decode_tokens_per_second: float           # mean over the timed decode runs
    decode_tokens_per_second_sd: float | None
    new_tokens: int                           # one-token decode steps per run
    memory: tuple[str, int] | None            # (metric name, bytes) from ``twossp.device.peak_memory``
    tokens: torch.Tensor                      # the greedy ids of the last decode run, (new_tokens,), on the CPU

    def scores(self) -> list[tuple[str, str, float]]:
        """Rows ``("speed", metric, value)`` for the results table."""
        rows = [("prefill_seconds", self.prefill_seconds)]
        if self.prefill_seconds_sd is not None:
            rows.append(("prefill_seconds_sd", self.prefill_seconds_sd))
        rows.append(("prefill_tokens_per_second", self.prefill_tokens / self.prefill_seconds))
        rows.append(("decode_tokens_per_second", self.decode_tokens_per_second))
        if self.decode_tokens_per_second_sd is not None:
            rows.append(("decode_tokens_per_second_sd", self.decode_tokens_per_second_sd))
        if self.memory is not None:
            rows.append((self.memory[0], float(self.memory[1])))
        return [("speed", metric, float(value)) for metric, value in rows]


def measure_speed(model: nn.Module, window: torch.Tensor, prompt: torch.Tensor, new_tokens: int,
                  warmup: int, repeats: int, device: torch.device) -> Speed:
    """Time ``model`` (a Hugging Face causal LM already on ``device``, batch size 1).

    - Prefill: one forward of ``window`` (1-D token ids) without a cache, full logits, as in the
      paper's inference-time protocol; ``warmup`` untimed forwards, then ``repeats`` timed.
    - Decode: greedy with a KV cache from ``prompt`` (1-D token ids). An untimed forward of the
      prompt fills the cache and predicts the first token; then ``new_tokens`` one-token forwards,
      each fed the previous argmax, are timed (tokens per second = ``new_tokens`` / their time). No
      EOS stop. The last step's prediction is dropped, so ``Speed.tokens`` holds exactly
      ``new_tokens`` ids, the same as ``model.generate(..., do_sample=False)`` produces.
      ``warmup`` untimed runs, then ``repeats`` timed.
    - Peak memory: reset before the first timed prefill, read after the last timed decode run.

    On CUDA the times are CUDA-event intervals on the device's stream and the memory is the peak
    of torch's allocator (tensors only). On the CPU the times are host wall-clock and the memory
    is the process's peak resident set (weights, activations and the interpreter; the lifetime
    peak where the OS cannot reset it; see ``twossp.device.peak_memory``)."""
    _check_arguments(window, prompt, new_tokens, warmup, repeats)
    window_ids = window.to(device)[None]
    prompt_ids = prompt.to(device)[None]

    def prefill() -> None:
        model(window_ids, use_cache=False)  # the output is dropped so repeats do not hold two sets of logits

    with torch.inference_mode():
        for _ in range(warmup):
            prefill()
        reset_peak_memory(device)
        prefill_times = [elapsed(device, prefill) for _ in range(repeats)]
        rates = []
        for run in range(warmup + repeats):  # the first ``warmup`` decode runs are not counted
            seconds, generated = _decode(model, prompt_ids, new_tokens, device)
            if run >= warmup:
                rates.append(new_tokens / seconds)
        memory = peak_memory(device)

    return Speed(
        prefill_seconds=statistics.fmean(prefill_times),
        prefill_seconds_sd=statistics.stdev(prefill_times) if repeats > 1 else None,
        prefill_tokens=window.numel(),
        decode_tokens_per_second=statistics.fmean(rates),
        decode_tokens_per_second_sd=statistics.stdev(rates) if repeats > 1 else None,
        new_tokens=new_tokens,
        memory=memory,
        tokens=torch.cat(generated, dim=1)[0].cpu(),
    )


def _check_arguments(window: torch.Tensor, prompt: torch.Tensor, new_tokens: int, warmup: int, repeats: int) -> None:
    """``ValueError`` for counts out of range or token ids that are not a non-empty 1-D tensor."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    for name, ids in (("window", window), ("prompt", prompt)):
        if ids.dim() != 1 or ids.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D tensor of token ids, got shape {tuple(ids.shape)}")


def _decode(model: nn.Module, prompt_ids: torch.Tensor, new_tokens: int,
            device: torch.device) -> tuple[float, list[torch.Tensor]]:
    """One greedy decode run: an untimed forward of the prompt fills the cache and predicts the
    first token, then ``new_tokens`` one-token forwards are timed. Returns their seconds and the
    (1, 1) token fed to each step (the last step's prediction is dropped)."""
    out = model(prompt_ids, use_cache=True)
    first = out.logits[:, -1].argmax(-1, keepdim=True)
    steps: list[torch.Tensor] = []
    return elapsed(device, lambda: _decode_steps(model, out.cache, first, new_tokens, steps)), steps


def _decode_steps(model: nn.Module, cache: Any, token: torch.Tensor, new_tokens: int,
                  steps: list[torch.Tensor]) -> None:
    """``new_tokens`` one-token forwards from ``cache``, each fed the previous argmax (appended to
    ``steps``)."""
    for _ in range(new_tokens):
        steps.append(token)
        out = model(token, cache=cache, use_cache=True)
        cache = out.cache
        # the argmax stays on the device: a host read would synchronise every step
        token = out.logits[:, -1].argmax(-1, keepdim=True)
