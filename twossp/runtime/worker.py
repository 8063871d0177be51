"""The worker entry point: one run, start to finish, returning a ``RunResult``. It never touches
the database (the driver alone writes) and runs with or without Ray.

A run is five steps, each timed by one stopwatch: load -> calibrate -> prune -> evaluate -> save
(the dense run skips calibrate and prune; save happens when the sweep has ``save_to:``). A recovered
run is load -> rebuild its pruning run's model from its masks -> recover -> evaluate -> save. A shared
step (``execute_step``) is load -> calibrate -> its computation; the runs it feeds check that their
calibration windows are the ones it read before they take its result.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from twossp.contracts import DOWNSTREAM_ACC_MEAN, Progress, RunResult, RunStatus, StepResult
from twossp.errors import DataUnavailable, SharedStepFailed, TwosspError
from twossp.methods import SHARED_STEPS, method_of
from twossp.plan import RunSpec, StepSpec
from twossp.spec import source_label


def _now() -> datetime:
    return datetime.now(timezone.utc)


def git_revision(root: Path = Path(__file__).resolve().parents[2]) -> str | None:
    """The revision of the twossp checkout at ``root`` (the one this code runs from), or None when it
    is not one: an installed wheel, or a copy inside some other repository (whose revision says
    nothing about this code)."""
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = top.stdout.split()
    if top.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root:
        return None
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "twossp"' not in pyproject.read_text(encoding="utf-8", errors="replace"):
        return None
    return lines[1]


def versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    try:
        ours = version("twossp")
    except PackageNotFoundError:
        ours = None
    return {"twossp": ours, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "git": git_revision()}


class Stopwatch:
    """Wall time per phase, the device synchronised at each lap so GPU timings are honest."""

    def __init__(self, device: Any, timings: dict[str, float]) -> None:
        self.device, self.timings = device, timings
        self._tick = time.perf_counter()

    def lap(self, phase: str) -> None:
        from twossp.device import synchronize

        synchronize(self.device)
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self._tick
        self._tick = now

    def skip(self) -> None:
        """Start the next lap now (the time since the last one was accounted for elsewhere)."""
        self._tick = time.perf_counter()


class MemoryMeter:
    """Peak memory per phase and device (``RunResult.memory``): each device's peak since the last
    phase ended (``twossp.device.peak_memory``), read and reset whenever the phase changes."""

    def __init__(self, devices: list[Any], rows: list[tuple[str, str, str, int]]) -> None:
        from twossp.device import reset_peak_memory

        self.devices, self.rows, self.phase = list(dict.fromkeys(devices)), rows, None
        for device in self.devices:
            reset_peak_memory(device)

    def enter(self, phase: str) -> None:
        if phase != self.phase:
            self.close()
            self.phase = phase

    def close(self) -> None:
        from twossp.device import peak_memory, reset_peak_memory

        if self.phase is None:
            return
        for device in self.devices:
            peak = peak_memory(device)
            if peak is not None:
                self.rows.append((self.phase, str(device), peak[0], peak[1]))
            reset_peak_memory(device)
        self.phase = None


def execute_run(run: RunSpec, progress: Progress | None = None, shared: StepResult | None = None) -> RunResult:
    """Run one cell of the grid; ``shared``: the result of the shared step it takes (``plan.plan_shared``).
    Any exception becomes a ``failed`` result carrying its message (library errors) or traceback
    (anything unexpected); it is never raised to the caller."""
    result = RunResult(key=run.key, status=RunStatus.RUNNING, started_at=_now(), host=platform.node())
    _guarded(result, lambda track: _Run(run, result, track, shared=shared).execute(), progress)
    return result


def execute_step(step: StepSpec, progress: Progress | None = None) -> StepResult:
    """Compute one shared step, guarded as a run is: a failure is a ``failed`` result with its error."""
    result = StepResult(key=step.key, kind=step.kind, status=RunStatus.RUNNING, started_at=_now(),
                        host=platform.node())
    _guarded(result, lambda track: _Step(step, result, track).execute(), progress)
    return result


def _guarded(result: RunResult | StepResult, body: Callable[[Progress], None], progress: Progress | None) -> None:
    """Run ``body`` (given the progress callback) and set ``result``'s status, error and end time."""
    phase = ["start"]

    def track(name: str, done: int, total: int) -> None:
        phase[0] = name
        if progress:
            progress(name, done, total)

    try:
        body(track)
        result.status = RunStatus.COMPLETED
    except TwosspError as exc:
        result.status, result.error = RunStatus.FAILED, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a failing run is recorded, the sweep goes on
        result.status, result.error = RunStatus.FAILED, traceback.format_exc(limit=20)
        if _out_of_memory(exc):
            result.error = (f"OutOfMemory: {result.device or 'the device'} ran out of memory during {phase[0]}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}; "
                            "give the run more memory (gpus/memory in the sweep) or a smaller dtype\n"
                            + result.error)
    finally:
        result.finished_at = _now()


def _out_of_memory(exc: BaseException) -> bool:
    from twossp.device import out_of_memory

    return out_of_memory(exc)


@dataclass
class _Loaded:
    """What a run and a shared step both do: load the model on its device, cut the calibration
    windows, free the memory. ``spec`` is a ``RunSpec`` or a ``StepSpec``, ``result`` its result."""

    spec: Any
    result: Any
    progress: Progress
    model: Any = None
    tokenizer: Any = None
    adapter: Any = None
    device: Any = None
    clock: Stopwatch | None = None
    dense: Any = None
    placement: Any = None
    meter: "MemoryMeter | None" = None

    def begin(self) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.result.versions = versions()

    def context(self, windows: Any) -> Any:
        """The ``prune.ModelContext`` of the loaded model and ``windows``."""
        from twossp.prune import ModelContext

        return ModelContext(model=self.model, adapter=self.adapter, calibration=windows, device=self.device,
                            progress=self.track, batch=self.batch)

    def load(self) -> None:
        import torch

        from twossp.families import adapter_for
        from twossp.device import device_name, resolve_device, run_devices, torch_dtype
        from twossp.runtime.loading import load_placed, load_tokenizer

        if self.spec.runtime.threads:
            torch.set_num_threads(self.spec.runtime.threads)
        self.device = resolve_device(self.spec.runtime.device)
        self.result.device = device_name(self.device)
        self.clock = Stopwatch(self.device, self.result.timings)
        if self.spec.weights_changed():
            raise DataUnavailable(f"the weights of {self.spec.model.label} changed since the sweep was planned "
                                  f"({self.spec.model.path or self.spec.model.gguf}); run the sweep again")
        devices = run_devices(self.device, math.floor(self.spec.model.gpus))
        self.meter = MemoryMeter(devices, self.result.memory)
        self.track("load", 0, 1)
        choice = self.choose_placement(devices)
        used = devices[:choice.devices] if choice.placement == "split" else devices[:1]
        self.model, self.placement = load_placed(self.spec.model, torch_dtype(self.spec.runtime.dtype), choice.placement,
                                                 used, choice.offload or "disk")
        self.tokenizer = load_tokenizer(self.spec.model)
        self.result.placement = self.placement.describe()
        self.result.memory += [("plan", str(device), "estimate_bytes", part.peak)
                               for device, part in zip(used, choice.memory)]
        self.adapter = adapter_for(self.model.config)  # load_placed has already checked the architecture
        self.dense = self.adapter.block_counts(self.model)
        self.result.params_dense = self.dense.layer_params
        self.clock.lap("load")

    def choose_placement(self, devices: list[Any]) -> Any:
        """``runtime.placement`` as chosen for this run (``memory.choose_placement``) from the model's
        config and the memory free now on its devices (the host's when it computes on the CPU)."""
        from twossp.device import free_memory
        from twossp.families import config_block_counts
        from twossp.memory import choose_placement
        from twossp.runtime.loading import load_config

        config = load_config(self.spec.model)
        inputs = self.memory_inputs(config.to_dict(), config_block_counts(config))
        import torch

        host = free_memory(torch.device("cpu"))
        on_gpu = self.device.type != "cpu"
        return choose_placement(inputs, self.spec.runtime.placement, len(devices) if on_gpu else 0,
                                [free_memory(d) for d in devices] if on_gpu else [], host, self.spec.runtime.offload)

    def memory_inputs(self, config: dict[str, Any], counts: Any) -> Any:
        raise NotImplementedError

    def calibrate(self) -> Any:
        from twossp.data.tokens import calibration_windows, tokens_sha256

        calib = self.spec.calibration
        assert calib is not None  # every pruning run has one (plan)
        self.track("calibration", 0, 1)
        windows = calibration_windows(self.tokenizer, calib.source, calib.samples, calib.seq_len, calib.seed)
        self.result.calibration_sha256 = tokens_sha256(windows)
        self.clock.lap("calibration data")
        return windows

    @property
    def batch(self) -> int:
        """``runtime.batch`` on this run's device."""
        from twossp.device import batch_size

        return batch_size(self.device, self.spec.runtime.batch)

    def release(self) -> None:
        """The placement's hooks and scratch files gone, the model dropped, the last phase's peak read."""
        from twossp.device import release_memory

        if self.placement is not None:
            self.placement.close()
        self.model = None
        if self.device is not None:
            release_memory(self.device)
        if self.meter is not None:
            self.meter.close()

    def track(self, name: str, done: int, total: int) -> None:
        """The progress callback the run's code calls: a new phase name ends the last phase's memory
        measurement."""
        if self.meter is not None:
            self.meter.enter(name)
        self.progress(name, done, total)


@dataclass
class _Run(_Loaded):
    """One run's steps over the state they share (the model, its adapter and tokenizer)."""

    spec: RunSpec
    result: RunResult
    shared: StepResult | None = None
    outcome: Any = None
    first_window: Any = None  # the first perplexity window: what the speed measurement reads
    start_masks: Any = None   # a recovered run's: the masks of the pruning run it starts from

    def execute(self) -> None:
        self.begin()
        if self.shared is not None and self.shared.status != RunStatus.COMPLETED:
            raise SharedStepFailed(f"the shared step it needs ({self.shared.kind} {self.shared.key}) failed: "
                                   f"{self.shared.error}")
        self.check_tasks()
        try:
            self.load()
            if self.spec.recovery:
                self.recover(self.start_from_pruning_run())
            elif method_of(self.spec.method).prunes:
                self.prune(self.calibrate())
            self.record_structure()
            self.evaluate()
            if self.spec.save_to and method_of(self.spec.method).prunes:
                self.save()
        finally:
            self.release()

    def memory_inputs(self, config: dict[str, Any], counts: Any) -> Any:
        from twossp.memory import memory_inputs

        return memory_inputs(config, counts, self.spec, self.device.type)

    def check_tasks(self) -> None:
        """A task that cannot get its data here fails the run before any pruning work."""
        from twossp.data.hub import unreachable_tasks
        from twossp.plan import plan_task_data

        evaluation = self.spec.evaluation
        unreachable = unreachable_tasks(evaluation.tasks, evaluation.task_data)
        if unreachable:
            raise DataUnavailable(unreachable)
        if self.spec.task_data is not None and plan_task_data(evaluation) != self.spec.task_data:
            raise DataUnavailable("the files of a task changed since the sweep was planned; run the sweep again")

    def prune(self, windows: Any) -> None:
        from twossp.prune import prune

        payload, record = self.take_shared()
        self.outcome = prune(self.context(windows).pruning(sparsity=self.spec.sparsity, method=self.spec.method,
                                                           shared=payload))
        self.result.timings.update(self.outcome.timings)  # the method's own phases ("prune", "stage 1", ...)
        self.result.details = self.outcome.stored_details()
        if record:
            self.result.details["shared_step"] = record
        self.clock.skip()

    def start_from_pruning_run(self) -> Any:
        """The pruning run's model, rebuilt from the dense weights and its masks (the shared step
        ``plan.PRUNED_MODEL``); returns the dense model, the teacher of a distillation (else None)."""
        import copy

        from twossp.errors import RecoveryFailed
        from twossp.prune.masks import apply_masks

        if self.shared is None:
            raise RecoveryFailed("a recovered run starts from its pruning run's model, and none was given")
        if self.placement.describe() != "single":
            raise RecoveryFailed(f"recovery trains the whole model on one device, and this run's blocks are placed "
                                 f"{self.placement.describe()!r}; give the run a device that holds the dense and the "
                                 "pruned model (`runtime.placement: single`)")
        self.track("rebuild", 0, 1)
        teacher = copy.deepcopy(self.model) if self.spec.recovery.loss == "kd" else None
        self.start_masks = self.shared.payload["masks"]
        apply_masks(self.model, self.adapter, self.start_masks)
        self.result.details["recovered_from"] = self.shared.payload["run"]
        self.clock.lap("rebuild")
        return teacher

    def recover(self, teacher: Any) -> None:
        """Heal the pruned model (``twossp.recover``) on the recovery text; its curve and record stored."""
        from twossp.data.tokens import token_stream
        from twossp.device import torch_dtype
        from twossp.recover import recover

        spec = self.spec.recovery
        self.track("recovery", 0, spec.steps)
        tokens = token_stream(self.tokenizer, spec.data, spec.seed)
        outcome = recover(self.model, teacher, self.adapter, tokens, spec, self.device,
                          torch_dtype(self.spec.runtime.dtype), self.track)
        self.model = outcome.model
        self.result.recovery = outcome.curve
        self.result.details["recovery"] = {"from": self.shared.payload["run"], "label": spec.label,
                                           "loss": spec.loss, "tune": spec.tune, "steps": spec.steps,
                                           "data": source_label(spec.data), **outcome.details()}
        self.clock.lap("recovery")

    def take_shared(self) -> tuple[Any, dict[str, Any] | None]:
        """The shared step's result if it was computed on this run's calibration windows (else the run
        computes its own, and says why), and what the run records of it."""
        step = self.shared
        if step is None:
            return None, None
        record = {"key": step.key, "kind": step.kind, "seconds": round(step.seconds, 3), "host": step.host,
                  "from_database": step.stored}
        if step.calibration_sha256 != self.result.calibration_sha256:
            return None, {**record, "reused": False, "why": "its calibration windows differ from this run's"}
        self.result.shared_step = step.key
        return step.payload, {**record, "reused": True}

    def record_structure(self) -> None:
        from twossp.contracts import layer_masks

        pruned = self.adapter.block_counts(self.model)
        self.result.params_pruned = pruned.layer_params
        self.result.achieved_sparsity = 1 - pruned.layer_params / self.dense.layer_params
        if self.outcome:
            self.result.masks = self.outcome.masks(self.dense.num_layers, self.dense.intermediate_size)
        else:
            self.result.masks = self.start_masks or layer_masks(self.dense.num_layers, self.dense.intermediate_size,
                                                                None, [])

    def evaluate(self) -> None:
        """Perplexity per dataset, then what else the sweep asks for: lm-eval tasks, speed, generations."""
        from twossp.data.tokens import token_stream, tokens_sha256
        from twossp.evaluate.perplexity import make_windows, perplexity

        evaluation = self.spec.evaluation
        seq_len = self.seq_len
        for source in evaluation.perplexity:
            label = source_label(source)
            windows = make_windows(token_stream(self.tokenizer, source), seq_len, evaluation.max_windows)
            if windows.shape[0] == 0:
                raise DataUnavailable(f"evaluation text {label!r} is shorter than one window of {seq_len} tokens")
            if self.first_window is None:
                self.first_window = windows[0]
            ppl = perplexity(self.model, self.adapter, windows, self.device, self.track, phase=f"eval {label}",
                             batch=self.batch)
            self.result.scores.append((label, "perplexity", ppl.perplexity))
            self.result.token_hashes[label] = tokens_sha256(windows)
            self.result.details.setdefault("evaluation_tokens", {})[label] = ppl.tokens
            self.clock.lap(f"eval {label}")
        if evaluation.tasks:
            self.tasks()
        if evaluation.speed:
            self.speed()
        if evaluation.generate:
            self.generate()

    @property
    def seq_len(self) -> int:
        calib = self.spec.calibration
        return self.spec.evaluation.seq_len or (calib.seq_len if calib else 2048)

    def tasks(self) -> None:
        import tempfile
        from importlib.metadata import version

        from twossp.evaluate.harness import evaluate_tasks

        evaluation = self.spec.evaluation
        with tempfile.TemporaryDirectory(prefix="twossp-tasks-") as workdir:
            scores = evaluate_tasks(self.model, self.tokenizer, evaluation.tasks, evaluation.task_data, self.device,
                                    workdir, self.track)
        self.result.scores += scores.scores
        if scores.mean_accuracy is not None:
            self.result.scores.append((*DOWNSTREAM_ACC_MEAN, scores.mean_accuracy))
        self.result.details["tasks"] = scores.details
        self.result.versions["lm_eval"] = version("lm_eval")
        self.clock.lap("tasks")

    def speed(self) -> None:
        import torch

        from twossp.evaluate.speed import measure_speed

        settings = self.spec.evaluation.speed
        self.track("speed", 0, 1)
        # The timing of a dense forward does not depend on which tokens it reads: real text when
        # there is some, else a fixed sequence of ids.
        window = self.first_window if self.first_window is not None else \
            torch.arange(self.seq_len) % len(self.tokenizer)
        speed = measure_speed(self.model, window, window[:settings.prompt_tokens], settings.new_tokens,
                              settings.warmup, settings.repeats, self.device)
        self.result.scores += speed.scores()
        self.clock.lap("speed")

    def generate(self) -> None:
        from twossp.evaluate.generate import generate_texts

        settings = self.spec.evaluation.generate
        self.track("generate", 0, 1)
        self.result.generations = generate_texts(self.model, self.tokenizer, self.spec.generation_prompts(),
                                                 settings.max_new_tokens, self.device)
        self.clock.lap("generate")

    def save(self) -> None:
        self.track("save", 0, 1)
        from twossp.runtime.export import export_row, provenance, save_model

        spec, result = self.spec, self.result
        import torch

        self.placement.gather(torch.device("cpu"))  # a streamed model is written whole, from the host
        origin = provenance(spec, spec.key, result.masks, result.achieved_sparsity, result.scores, result.versions,
                            result.details.get("recovery"))
        saved = save_model(self.model, self.tokenizer, Path(spec.save_to) / spec.key, spec.save_format,
                           spec.save_type, origin)
        result.details["saved_to"] = str(saved.directory)
        if spec.save_format == "gguf":
            result.details["saved_gguf"] = saved.file.path.name
        else:
            result.details["saved_stock_checkpoint"] = saved.stock
        result.exports.append(export_row(saved))
        self.clock.lap("save")



@dataclass
class _Step(_Loaded):
    """A shared step's steps: load -> calibrate -> compute."""

    spec: StepSpec
    result: StepResult

    def execute(self) -> None:
        self.begin()
        try:
            self.load()
            windows = self.calibrate()
            compute = SHARED_STEPS[self.spec.kind].compute.load()
            self.result.payload = compute(self.context(windows), self.spec.params)
            self.clock.lap(self.spec.kind)
        finally:
            self.release()

    def memory_inputs(self, config: dict[str, Any], counts: Any) -> Any:
        from twossp.memory import step_memory_inputs

        return step_memory_inputs(config, counts, self.spec, self.device.type)
