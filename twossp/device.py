"""The one place that names accelerator devices. Everything else takes a ``torch.device``.

Importing it does not import torch (each function does), so the torch-free planner reads
``AUTO_BATCH`` from here too."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: ``runtime.batch: auto``: candidate removals (2SSP stage 2, BlockPruner) or perplexity windows one
#: forward holds, per device type. On the CPU one at a time: batching measured 0.93x on SmolLM2's
#: stage 2 there, inside the machine's noise (benchmarks/README.md); an accelerator is kept busy by
#: a batch (not measured here: benchmarks/stage2_batched.py is the script for a GPU host).
AUTO_BATCH = {"cpu": 1, "cuda": 8, "mps": 4}
#: the device type a run with GPUs computes on (what the torch-free memory plan plans for)
ACCELERATOR = "cuda"


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of ``runtime.dtype``'s name (``float32``, ``bfloat16``, ``float16``)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype) -> Any:
    """The context training forwards run in: mixed precision in ``dtype`` where it is not float32
    (bf16 on a GPU; the weights being trained stay float32), else nothing."""
    import contextlib

    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def batch_size(device: torch.device, setting: int | str = "auto") -> int:
    """The batch of ``runtime.batch`` on ``device``: the number given, or the device's ``AUTO_BATCH``."""
    return setting if isinstance(setting, int) else AUTO_BATCH.get(device.type, 1)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, then Apple MPS, else the CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def run_devices(device: torch.device, count: int = 1) -> list[torch.device]:
    """The devices of a run on ``device``'s type: CUDA, the first ``count`` GPUs it sees (under Ray,
    those of its task); elsewhere ``device`` itself."""
    import torch

    if device.type == "cuda":
        first = device.index or 0
        return [torch.device("cuda", first + i) for i in range(max(1, min(count, torch.cuda.device_count() - first)))]
    return [device]


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now: CUDA, what the driver reports free; the host, the kernel's
    ``MemAvailable`` (else the physical memory)."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            match = re.search(r"^MemAvailable:\s+(\d+)\s+kB", meminfo.read(), re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


#: allocations at least this large come from the system and go back to it when freed (``return_freed_host_memory``)
HOST_MMAP_THRESHOLD = 8 << 20


def return_freed_host_memory() -> None:
    """Make the host's allocator give large freed blocks (``HOST_MMAP_THRESHOLD`` and up: a streamed
    block's weights) back to the system at once. glibc otherwise raises its threshold to the
    largest block freed, after which blocks of that size are carved from the heap and stay counted
    as the process's memory when freed: a kernel memory limit then refuses a streamed pass that
    never holds more than two blocks. Elsewhere than glibc on Linux, a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    m_mmap_threshold = -3
    mallopt(m_mmap_threshold, HOST_MMAP_THRESHOLD)


def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings are honest."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or the host) ran out of memory."""
    import torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_memory(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


def elapsed(device: torch.device, fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn()`` takes on ``device``.

    CUDA: the time between two CUDA events recorded on the device's current stream around the call
    (kernels run asynchronously, so host clocks would measure only the launches). Elsewhere: host
    wall-clock (``time.perf_counter``), with queued work drained before and after the call."""
    import torch

    if device.type == "cuda":
        with torch.cuda.device(device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1000  # elapsed_time is in milliseconds
    synchronize(device)
    begin = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - begin


#: Whether the last ``reset_peak_memory`` on the CPU managed to reset the resident-set high-water
#: mark; if not, only the lifetime peak can be read.
_rss_peak_reset = False


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on ``device`` (read it with ``peak_memory``).

    CUDA: resets torch's allocator statistics. CPU: on Linux, writing "5" to /proc/self/clear_refs
    resets the process's VmHWM (peak resident set); where that is impossible (another OS, no
    permission) ``peak_memory`` falls back to the peak since the process started."""
    import torch

    global _rss_peak_reset
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "cpu":
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            _rss_peak_reset = True
        except OSError:
            _rss_peak_reset = False


def peak_memory(device: torch.device) -> tuple[str, int] | None:
    """The peak memory since the last ``reset_peak_memory``: ``(metric name, bytes)``.

    - ``peak_cuda_allocated_bytes`` (CUDA): the most bytes torch's allocator held for tensors on
      the device (its cached but unused blocks not counted).
    - ``peak_rss_bytes`` (CPU, Linux, reset worked): the process's peak resident memory (VmHWM)
      since the reset: the weights, activations, the interpreter and every loaded library.
    - ``peak_rss_lifetime_bytes`` (CPU, reset impossible): the process's peak resident memory
      since it started (``getrusage``'s ``ru_maxrss``), so it may include anything the process did
      before the measurement.
    - None on other devices (MPS), which have no such counter here."""
    import torch

    if device.type == "cuda":
        return "peak_cuda_allocated_bytes", int(torch.cuda.max_memory_allocated(device))
    if device.type != "cpu":
        return None
    if _rss_peak_reset:
        with open("/proc/self/status") as status:
            match = re.search(r"^VmHWM:\s+(\d+)\s+kB", status.read(), re.MULTILINE)
        if match:
            return "peak_rss_bytes", int(match.group(1)) * 1024
    try:
        import resource  # absent on Windows
    except ImportError:
        return None
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS
    return "peak_rss_lifetime_bytes", int(max_rss if sys.platform == "darwin" else max_rss * 1024)


class Copier:
    """Copies tensors to ``device`` so that the copies overlap the compute: on CUDA on a stream of
    their own from page-locked memory, elsewhere plainly. ``copy`` returns the copies and a fence;
    ``take`` makes the compute stream wait for the fence and ties the copies' memory to that stream
    (so the allocator never hands it out while a kernel still reads it)."""

    def __init__(self, device: torch.device) -> None:
        import torch

        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def copy(self, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], object | None]:
        import torch

        if self.stream is None:
            return {name: t.to(self.device) for name, t in tensors.items()}, None
        with torch.cuda.stream(self.stream):
            copies = {name: t.pin_memory().to(self.device, non_blocking=True) for name, t in tensors.items()}
            fence = torch.cuda.Event()
            fence.record(self.stream)
        return copies, fence

    def take(self, tensors: dict[str, torch.Tensor], fence: object | None) -> dict[str, torch.Tensor]:
        import torch

        if fence is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(fence)
            for tensor in tensors.values():
                tensor.record_stream(compute)
        return tensors
