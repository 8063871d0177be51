"""Token streams: each (tokenizer, source, seed) tokenised once per process and reused."""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from typing import Any

import torch

from twossp.data.sources import load_text
from twossp.errors import DataUnavailable
from twossp.spec import TextSource, source_label


def token_stream(tokenizer: Any, source: TextSource, seed: int = 0) -> torch.Tensor:
    # Sources are hashable (names are strings, file sources frozen models), so they key the cache.
    return _cached(tokenizer, source, seed).clone()


@lru_cache(maxsize=16)
def _cached(tokenizer: Any, source: TextSource, seed: int) -> torch.Tensor:
    text = load_text(source, seed)
    # The text is deliberately longer than the model's context: silence the length warning.
    log = logging.getLogger("transformers.tokenization_utils_base")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    finally:
        log.setLevel(level)
    return torch.tensor(ids, dtype=torch.long)


def tokens_sha256(tokens: torch.Tensor) -> str:
    """sha256 of token ids as little-endian int64, in order: which exact tokens produced a number."""
    return hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().astype("<i8").tobytes()).hexdigest()


def calibration_windows(tokenizer: Any, source: TextSource, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """The first ``samples`` consecutive windows of ``seq_len`` tokens (docs/evaluation.md, Calibration data)."""
    tokens = token_stream(tokenizer, source, seed)
    if tokens.numel() < samples * seq_len:
        raise DataUnavailable(
            f"calibration source {source_label(source)!r} has {tokens.numel():,} tokens, fewer than "
            f"{samples} windows of {seq_len} ({samples * seq_len:,})"
        )
    return tokens[: samples * seq_len].view(samples, seq_len)
