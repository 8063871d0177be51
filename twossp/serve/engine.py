"""llama.cpp on an exported GGUF, through its Python binding (``llama-cpp-python``, the ``gguf``
extra; pip builds llama.cpp from source): its tokens, its logits, greedy generation, perplexity on
the windows twossp evaluates, and prompt and generation speed.

Perplexity is computed as twossp's own evaluation computes it: each window on its own from an
empty cache, every position but the last predicting the next token, exp of the token-weighted mean
negative log-likelihood (in float64)."""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator, Sequence

import numpy as np

from twossp.errors import EngineUnavailable

INSTALL = ("pip install 'twossp[gguf]' (it builds llama.cpp from source, about 8 minutes on 2 cores; "
           "pip caches the wheel)")


def llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise EngineUnavailable(f"llama-cpp-python is not installed ({exc}): {INSTALL}") from None
    return llama_cpp


#: llama.cpp's extra buffer types repack weights for faster kernels (AMX among them). On the VM twossp
#: is tested on, which advertises AMX, they crash the process with an illegal instruction on the
#: first q8_0 product, so they are off unless this variable is 1.
EXTRA_BUFFERS_ENV = "TWOSSP_LLAMA_EXTRA_BUFFERS"


def extra_buffers() -> bool:
    return os.environ.get(EXTRA_BUFFERS_ENV, "") == "1"


@contextmanager
def _model_params(use_extra_buffers: bool) -> Iterator[None]:
    """The binding builds its model parameters from llama.cpp's defaults and has no argument for
    extra buffer types: its defaults are wrapped while a model loads."""
    low = llama_cpp().llama_cpp
    default = low.llama_model_default_params

    def params() -> Any:
        value = default()
        value.use_extra_bufts = use_extra_buffers
        return value

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = default


def quantize(source: str | Path, target: str | Path, file_type: str) -> None:
    """llama.cpp's own quantiser: ``source`` (an f16 or f32 GGUF) to ``target`` in ``file_type``
    (a ``gguf.LlamaFileType`` name such as ``MOSTLY_Q4_K_M``), on every core."""
    import ctypes

    import gguf

    low = llama_cpp()
    params = low.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType[file_type])
    params.nthread = os.cpu_count() or 1
    status = low.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        Path(target).unlink(missing_ok=True)
        raise EngineUnavailable(f"llama.cpp could not quantise {source} to {file_type} (status {status})")


def engine_version() -> str:
    return str(getattr(llama_cpp(), "__version__", "?"))


@dataclass(frozen=True)
class EnginePerplexity:
    perplexity: float
    nll_sum: float
    tokens: int
    windows: int


@dataclass(frozen=True)
class EngineSpeed:
    prompt_tokens: int
    new_tokens: int
    prompt_tokens_per_second: float   # median over repeats
    generation_tokens_per_second: float
    threads: int


class Engine:
    """One GGUF loaded in llama.cpp. ``all_logits`` keeps every position's logits (for perplexity
    and comparisons); without it only the last position's are computed, as a server does.

    The KV cache is f16, llama.cpp's default; ``f32_cache`` keeps it f32 to compare an f32 file
    closely. ``flash_attention`` (off, the binding's default) is llama.cpp's ``-fa on``: only with
    it does llama.cpp leave out the V cache of a block without attention (without it, every block's
    V cache is padded to one size), but on the 2-core test machine it made SmolLM2's generation about
    a fifth to a third slower. Its CPU kernel works in f16, so ``f32_cache`` turns it off."""

    def __init__(self, path: str | Path, context: int, all_logits: bool = True, threads: int | None = None,
                 f32_cache: bool = False, flash_attention: bool = False) -> None:
        self.threads = threads or os.cpu_count() or 1
        self.all_logits = all_logits
        self.extra_buffers = extra_buffers()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(path)
        with _model_params(self.extra_buffers):
            try:
                self.llm = llama_cpp().Llama(model_path=str(path), n_ctx=context, n_batch=context, n_ubatch=context,
                                             logits_all=all_logits, n_threads=self.threads,
                                             n_threads_batch=self.threads, verbose=False,
                                             flash_attn=flash_attention and not f32_cache,
                                             **({"type_k": 0, "type_v": 0} if f32_cache else {}))  # GGML_TYPE_F32
            except ValueError as exc:  # the binding's "Failed to load model"; llama.cpp logs why
                raise EngineUnavailable(f"llama.cpp could not load {path} ({exc}); run with "
                                        "verbose llama.cpp logging to see why") from None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.llm.close()

    @property
    def vocab(self) -> int:
        return self.llm.n_vocab()

    def tokenize(self, text: str) -> list[int]:
        """``text``'s tokens, no BOS added and special-token text kept as text (the Hugging Face
        tokenizer's ``add_special_tokens=False``)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def metadata(self) -> dict[str, str]:
        return dict(self.llm.metadata)

    def _run(self, ids: Sequence[int]) -> None:
        self.llm.reset()
        self.llm.eval(list(map(int, ids)))

    def _last_logits(self) -> np.ndarray:
        if self.all_logits:
            return self.llm.scores[self.llm.n_tokens - 1]
        pointer = llama_cpp().llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab,))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), vocab) logits of ``ids`` from an empty cache."""
        if not self.all_logits:
            raise ValueError("this engine keeps only the last position's logits")
        self._run(ids)
        return np.array(self.llm.scores[: len(ids)])

    def generate(self, ids: Sequence[int], new_tokens: int) -> list[int]:
        """Greedy continuation of ``ids`` (argmax at every step, no sampling, no stop token)."""
        self._run(ids)
        out = []
        for _ in range(new_tokens):
            token = int(np.argmax(self._last_logits()))
            out.append(token)
            self.llm.eval([token])
        return out

    def perplexity(self, windows: np.ndarray) -> EnginePerplexity:
        """Perplexity over ``windows`` ((n, L) token ids), each from an empty cache."""
        total, tokens = 0.0, 0
        for window in np.asarray(windows):
            logits = self.logits(window).astype(np.float64)[:-1]
            peak = logits.max(axis=1, keepdims=True)
            log_norm = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
            total += float((log_norm - logits[np.arange(len(window) - 1), window[1:]]).sum())
            tokens += len(window) - 1
        if not tokens:
            raise ValueError("no complete window to evaluate")
        return EnginePerplexity(float(np.exp(total / tokens)), total, tokens, len(windows))

    def speed(self, prompt: Sequence[int], new_tokens: int, repeats: int = 3, warmup: int = 1) -> EngineSpeed:
        """Prompt processing (the whole prompt in one batch) and greedy generation tokens per second,
        the median of ``repeats`` timed passes after ``warmup`` untimed ones."""
        prompt_rates, generation_rates = [], []
        for attempt in range(warmup + repeats):
            start = time.perf_counter()
            self._run(prompt)
            prompt_seconds = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(new_tokens):
                self.llm.eval([int(np.argmax(self._last_logits()))])
            generation_seconds = time.perf_counter() - start
            if attempt >= warmup:
                prompt_rates.append(len(prompt) / prompt_seconds)
                generation_rates.append(new_tokens / generation_seconds)
        return EngineSpeed(len(prompt), new_tokens, statistics.median(prompt_rates),
                           statistics.median(generation_rates), self.threads)
