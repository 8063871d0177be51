"""The worker entry point: one run, start to finish (load -> prune -> evaluate), returning a
``RunResult``. It never touches the database (the driver alone writes) and runs with or without Ray."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from twossp.errors import TwosspError
from twossp.plan import RunSpec
from twossp.prune.masks import LayerMask, layer_masks
from twossp.spec import source_label

Progress = Callable[[str, int, int], None]


@dataclass
class RunResult:
    """Plain data, cheap to pickle across Ray; the driver turns it into rows."""

    key: str
    status: str                          # completed | failed
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    achieved_sparsity: float | None = None
    params_dense: int | None = None
    params_pruned: int | None = None
    scores: list[tuple[str, str, float]] = field(default_factory=list)   # (dataset, metric, value)
    timings: dict[str, float] = field(default_factory=dict)
    masks: list[LayerMask] = field(default_factory=list)
    calibration_sha256: str | None = None                             # of the calibration windows used
    token_hashes: dict[str, str] = field(default_factory=dict)        # dataset -> sha256 of its windows
    details: dict[str, Any] = field(default_factory=dict)
    host: str | None = None
    device: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, Any]:
    import torch
    import transformers

    import twossp

    return {"twossp": twossp.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "git": _git_revision()}


def _save(model: Any, tokenizer: Any, directory: Path) -> Any:
    """Save into a sibling temporary folder, then rename: a run killed while saving never leaves a
    half-written checkpoint under its final name; a re-run replaces the previous one."""
    import shutil

    from twossp.checkpoint import save_pruned

    partial = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    saved = save_pruned(model, tokenizer, partial)
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return dataclasses.replace(saved, directory=directory)


def execute_run(run: RunSpec, progress: Progress | None = None) -> RunResult:
    """Run one cell of the grid. Any exception becomes a ``failed`` result carrying its message
    (library errors) or traceback (anything unexpected); it is never raised to the caller."""
    result = RunResult(key=run.key, status="running", started_at=_now(), host=platform.node())
    phase = ["start"]

    def track(name: str, done: int, total: int) -> None:
        phase[0] = name
        if progress:
            progress(name, done, total)

    try:
        _execute(run, result, track)
        result.status = "completed"
    except TwosspError as exc:
        result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a failing run is recorded, the sweep goes on
        result.status, result.error = "failed", traceback.format_exc(limit=20)
        if _out_of_memory(exc):
            result.error = (f"OutOfMemory: {result.device or 'the device'} ran out of memory during {phase[0]}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}; "
                            "give the run more memory (gpus/memory in the sweep) or a smaller dtype\n"
                            + result.error)
    finally:
        result.finished_at = _now()
    return result


def _out_of_memory(exc: BaseException) -> bool:
    from twossp.runtime.device import out_of_memory

    return out_of_memory(exc)


def _execute(run: RunSpec, result: RunResult, progress: Progress) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    from twossp.data.tokens import calibration_windows, token_stream, tokens_sha256
    from twossp.evaluate.perplexity import make_windows, perplexity
    from twossp.families import adapter_for
    from twossp.prune.methods import prune
    from twossp.runtime.device import DTYPES, device_name, release_memory, resolve_device, synchronize
    from twossp.runtime.loading import load_model

    hf_logging.disable_progress_bar()
    result.versions = versions()
    if run.runtime.threads:
        torch.set_num_threads(run.runtime.threads)
    device = resolve_device(run.runtime.device)
    result.device = device_name(device)
    tick = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal tick
        synchronize(device)
        now = time.perf_counter()
        result.timings[phase] = result.timings.get(phase, 0.0) + now - tick
        tick = now

    if progress:
        progress("load", 0, 1)
    model, tokenizer = load_model(run.model, DTYPES[run.runtime.dtype], device)
    adapter = adapter_for(model.config)  # load_model has already checked the architecture
    dense = adapter.block_counts(model)
    result.params_dense = dense.layer_params
    lap("load")

    outcome = None
    if run.sparsity is not None:  # every method but dense prunes
        assert run.calibration is not None
        calib = run.calibration
        if progress:
            progress("calibration", 0, 1)
        windows = calibration_windows(tokenizer, calib.source, calib.samples, calib.seq_len, calib.seed)
        result.calibration_sha256 = tokens_sha256(windows)
        lap("calibration data")
        outcome = prune(model, adapter, windows, run.sparsity, run.method, device, progress)
        result.timings.update(outcome.timings)
        result.details = dict(outcome.details)
        tick = time.perf_counter()

    pruned = adapter.block_counts(model)
    result.params_pruned = pruned.layer_params
    result.achieved_sparsity = 1 - pruned.layer_params / dense.layer_params
    result.masks = layer_masks(dense.num_layers, dense.intermediate_size,
                               outcome.kept_ffn if outcome else None,
                               outcome.removed_attention if outcome else [],
                               outcome.removed_blocks if outcome else [],
                               outcome.removed_ffn if outcome else [])

    seq_len = run.evaluation.seq_len or (run.calibration.seq_len if run.calibration else 2048)
    for source in run.evaluation.perplexity:
        label = source_label(source)
        windows = make_windows(token_stream(tokenizer, source), seq_len, run.evaluation.max_windows)
        if windows.shape[0] == 0:
            raise TwosspError(f"evaluation text {label!r} is shorter than one window of {seq_len} tokens")
        ppl = perplexity(model, adapter, windows, device, progress, phase=f"eval {label}")
        result.scores.append((label, "perplexity", ppl.perplexity))
        result.token_hashes[label] = tokens_sha256(windows)
        result.details.setdefault("evaluation_tokens", {})[label] = ppl.tokens
        lap(f"eval {label}")
    if run.save_to and run.sparsity is not None:
        if progress:
            progress("save", 0, 1)
        saved = _save(model, tokenizer, Path(run.save_to) / run.key)
        result.details["saved_to"] = str(saved.directory)
        result.details["saved_stock_checkpoint"] = saved.stock
        lap("save")
    del model
    release_memory(device)
