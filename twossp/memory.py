"""Memory planned before every run (README, Placements): the peak bytes each device holds under each
placement, from a model's ``config.json`` and its parameter counts alone (no weights, no torch), and
the placement a run takes given its devices' free memory.

A run's peak on one device is

    overhead + weights + max(max(walk, states) + candidates, evaluation, training)

- ``overhead``: what a device holds before any tensor (``RUNTIME_OVERHEAD``: the CUDA context on
  a GPU; ``HOST_OVERHEAD``: the interpreter, its libraries and the allocator's slack when the host
  computes).
- ``weights``: the parameters resident on the device, in the run's dtype. ``single``: all of them;
  ``split`` over G devices: ceil(N / G) blocks each, the first device also holding the embeddings,
  the final norm and the LM head; ``stream``: those and ``STREAMED_BLOCKS`` blocks (the current one
  and the prefetched next).
- ``walk``: every pruning pass walks all its calibration windows through the blocks together, blocks
  outside and windows inside (``prune.calibration.walk``): the inputs and the outputs of one block
  for every window, on the device running that block.
- ``states``: the calibration hidden states the method's pruning keeps (``Method.states``: 2SSP's
  stage 2 and BlockPruner keep every block's input of every window they score on), each
  ``calibration.seq_len x hidden_size`` in the run's dtype; ``split`` keeps each block's inputs on its
  device, ``stream`` on a GPU keeps them in host memory (``placement.Stream.keep``).
- ``candidates``: one pruning forward through a block (``block_workspace``) of ``runtime.batch``
  candidates (a batched search, ``Method.batched``) or one window, plus a chunk of logits.
- ``evaluation``: the largest forward of the evaluation: perplexity (``runtime.batch`` windows of
  ``evaluation.seq_len``, logits a chunk at a time), lm-eval tasks (``batch_size`` sequences of at
  most ``evaluation.seq_len`` tokens with their whole logits), the speed test (its tokens, KV cache).

- ``training``: a recovered run's training (``training_bytes``): the dense teacher, for full tuning
  float32 weights with gradients and AdamW's moments, and every block's activations of a micro-batch
  kept for the backward pass.

Pruning, training and evaluation happen one after the other, so their workspaces are not added. The formulas
are deliberately conservative (the dense weights throughout, an attention score matrix as the math
path materialises it, three copies of the search's states): they say what is sure to fit, and the
worker measures the real peaks (``RunResult.memory``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from twossp.contracts import BlockCounts
from twossp.device import ACCELERATOR, AUTO_BATCH
from twossp.methods import SHARED_STEPS, method_of
from twossp.plan import RunSpec, StepSpec

GiB = 1 << 30
#: bytes a device holds before any tensor (the CUDA context is about this much)
RUNTIME_OVERHEAD = GiB // 2
#: the same when the host computes: the interpreter, torch, transformers, lm-eval (and a Ray worker),
#: and the allocator's slack. Measured on the quickstart's runs (CPU, Ray workers): peaks up to 0.29 GB
#: above the estimate made with ``RUNTIME_OVERHEAD``, so the host's is twice that.
HOST_OVERHEAD = GiB
#: blocks a streamed model holds on its device at once: the one running and the next, prefetched
STREAMED_BLOCKS = 2
#: positions turned into logits at once when a loss is computed (``families.base.nll_sum``)
LOGITS_CHUNK = 1024
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PLACEMENTS = ("single", "split", "stream")


# --------------------------------------------------------------------------------------------
# What is estimated from
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """The sizes of a model that its memory depends on, from ``config.json`` and its ``BlockCounts``
    (the family's own count of a block's parameters: biases, extra norms)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    block_params: int   # one decoder block's parameters, norms included

    @classmethod
    def of(cls, config: dict[str, Any], counts: BlockCounts) -> "ModelShape":
        """``KeyError``/``TypeError`` for a config that lacks what a Llama-shaped model states."""
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return cls(hidden=hidden, intermediate=int(config["intermediate_size"]), layers=counts.num_layers,
                   heads=heads, kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or hidden // heads), vocab=int(config["vocab_size"]),
                   tied=bool(config.get("tie_word_embeddings", False)),
                   block_params=-(-counts.layer_params // counts.num_layers))

    @property
    def end_params(self) -> int:
        """Parameters outside the blocks: the embeddings, the final norm and (untied) the LM head."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.end_params + self.layers * self.block_params


@dataclass(frozen=True)
class MemoryInputs:
    """A run's numbers that its memory depends on (``memory_inputs``)."""

    model: ModelShape
    dtype: str
    calib_len: int        # calibration window length (0: the run does not prune)
    walked: int           # hidden states (calib_len x hidden) a pass through the blocks holds at once
    states: int           # hidden states (calib_len x hidden) the pruning keeps at its peak
    one_window_states: int  # the same, were the search to keep a single window
    windows_field: str    # the setting that says how many windows the states cover
    candidates: int       # sequences in one pruning forward
    eval_len: int
    eval_batch: int       # perplexity windows per forward
    task_batch: int       # the largest lm-eval batch_size (0: no tasks)
    speed_tokens: int     # prompt + new tokens of the speed test (0: none)
    overhead: int = RUNTIME_OVERHEAD  # what the device holds before any tensor (the host: ``HOST_OVERHEAD``)
    #: a recovered run's training (0 length: none): windows per micro-batch and their length, whether
    #: the dense model is kept as a teacher, and whether every weight is trained (``tune: full``)
    train_batch: int = 0
    train_len: int = 0
    teacher: bool = False
    full_tuning: bool = False

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


def memory_inputs(config: dict[str, Any], counts: BlockCounts, run: RunSpec, device_type: str = ACCELERATOR) -> MemoryInputs:
    """The numbers of ``run`` on a ``device_type`` device (``runtime.batch: auto`` is ``AUTO_BATCH``
    of it). Raises ``KeyError``/``TypeError`` for an incomplete config."""
    shape, entry = ModelShape.of(config, counts), method_of(run.method)
    batch = run.runtime.batch if isinstance(run.runtime.batch, int) else AUTO_BATCH.get(device_type, 1)
    samples = run.calibration.samples if run.calibration and not run.recovery else 0  # a recovered run does not prune
    recovery = run.recovery
    states = entry.states(run.method, samples, shape.layers) if entry.states and samples else 0
    one = entry.states(run.method, 1, shape.layers) if entry.states and samples else 0
    evaluation, speed = run.evaluation, run.evaluation.speed
    return MemoryInputs(
        model=shape, dtype=run.runtime.dtype, calib_len=run.calibration.seq_len if run.calibration else 0,
        walked=2 * samples, states=states, one_window_states=min(one, states),
        windows_field=f"the method's `{run.method.windows_field}`" if run.method.windows_field
        else "`calibration.samples`",
        candidates=(batch if entry.batched else 1) if samples else 0,
        eval_len=evaluation.seq_len or (run.calibration.seq_len if run.calibration else 0),
        eval_batch=batch if evaluation.perplexity else 0,
        task_batch=max((task.batch_size for task in evaluation.tasks), default=0),
        overhead=HOST_OVERHEAD if device_type == "cpu" else RUNTIME_OVERHEAD,
        speed_tokens=speed.prompt_tokens + speed.new_tokens if speed else 0,
        train_batch=recovery.batch_size if recovery else 0, train_len=recovery.seq_len if recovery else 0,
        teacher=bool(recovery and recovery.loss == "kd"), full_tuning=bool(recovery and recovery.tune == "full"))


# --------------------------------------------------------------------------------------------
# The parts of one device's peak
# --------------------------------------------------------------------------------------------
def block_workspace(inputs: MemoryInputs, sequences: int, length: int) -> int:
    """Bytes of one forward of ``sequences`` x ``length`` tokens through one decoder block (no
    gradients, so one block's activations live at a time). Per token, in the run's dtype: six
    hidden-size vectors (the block's input, the two normed inputs, the attention output, the
    residual sum, the FFN output), q, k and v twice (before and after the rotary embedding), three
    FFN intermediates (gate, up, their product); and ``heads x length`` attention scores in float32,
    as the math path materialises them (a fused kernel needs less)."""
    m = inputs.model
    per_token = inputs.dtype_bytes * (6 * m.hidden + 2 * (m.heads + 2 * m.kv_heads) * m.head_dim
                                      + 3 * m.intermediate) + 4 * m.heads * length
    return sequences * length * per_token


def logits_chunk(inputs: MemoryInputs, length: int) -> int:
    """A loss over ``length`` positions, ``LOGITS_CHUNK`` at a time: the chunk's logits in the run's
    dtype, then in float32 with their log-softmax."""
    return min(LOGITS_CHUNK, length) * inputs.model.vocab * (inputs.dtype_bytes + 8)


def candidates_bytes(inputs: MemoryInputs) -> int:
    """One pruning forward: ``candidates`` sequences of the calibration length through a block, and
    a chunk of logits of one of them (0 for a run that does not prune)."""
    if not inputs.candidates:
        return 0
    return block_workspace(inputs, inputs.candidates, inputs.calib_len) + logits_chunk(inputs, inputs.calib_len)


def evaluation_bytes(inputs: MemoryInputs) -> int:
    """The largest evaluation forward: perplexity (``eval_batch`` windows, logits by chunks), lm-eval
    tasks (``task_batch`` sequences of at most ``eval_len`` tokens, whole logits and their float32
    log-softmax), the speed test (its tokens, their logits and the KV cache of every block)."""
    m, size, length = inputs.model, inputs.dtype_bytes, inputs.eval_len
    perplexity = block_workspace(inputs, inputs.eval_batch, length) + logits_chunk(inputs, length) \
        if inputs.eval_batch else 0
    tasks = block_workspace(inputs, inputs.task_batch, length) + inputs.task_batch * length * m.vocab * (size + 4)
    tokens = inputs.speed_tokens
    speed = block_workspace(inputs, 1, tokens) + tokens * m.vocab * 4 \
        + m.layers * 2 * m.kv_heads * m.head_dim * tokens * size
    return max(perplexity, tasks, speed)


def training_bytes(inputs: MemoryInputs) -> int:
    """A recovery (``twossp.recover``; 0 for a run without one), counted on the dense model's size as
    an upper bound of the pruned one's: the dense teacher (distillation), for full tuning the float32
    copy of every weight with its gradient and AdamW's two moments (LoRA's adapters are a few per
    cent: not counted), every block's activations kept for the backward pass, and one chunk of the
    student's and the teacher's logits."""
    if not inputs.train_len:
        return 0
    m, size = inputs.model, inputs.dtype_bytes
    teacher = m.params * size if inputs.teacher else 0
    trained = m.params * (4 - size + 4 + 8) if inputs.full_tuning else 0
    activations = m.layers * block_workspace(inputs, inputs.train_batch, inputs.train_len)
    return teacher + trained + activations + 2 * logits_chunk(inputs, inputs.train_batch * inputs.train_len)


def states_bytes(inputs: MemoryInputs, states: int | None = None) -> int:
    """Bytes of ``states`` (default: the kept ones) hidden states of the calibration length."""
    count = inputs.states if states is None else states
    return count * inputs.calib_len * inputs.model.hidden * inputs.dtype_bytes


@dataclass(frozen=True)
class DeviceMemory:
    """Peak bytes one device holds, by what holds them (module docstring)."""

    weights: int
    states: int
    candidates: int
    evaluation: int
    walk: int = 0
    overhead: int = RUNTIME_OVERHEAD
    training: int = 0

    @property
    def peak(self) -> int:
        return self.overhead + self.weights + max(max(self.walk, self.states) + self.candidates, self.evaluation,
                                                  self.training)

    def describe(self) -> str:
        parts = (("weights", self.weights), ("walk", self.walk), ("states", self.states), ("candidates", self.candidates),
                 ("evaluation", self.evaluation), ("training", self.training), ("overhead", self.overhead))
        return ", ".join(f"{name} {gib(value)}" for name, value in parts if value)


def gib(value: int) -> str:
    return f"{value / GiB:.1f} GiB"


def device_memory(inputs: MemoryInputs, placement: str, devices: int = 1,
                  states_on_device: bool = True) -> list[DeviceMemory]:
    """The peak parts of each device ``placement`` uses (``split``: over ``devices``; the others:
    one), the embeddings and LM head on the first. ``states_on_device`` False: a streamed run's
    states wait in host memory."""
    m, size = inputs.model, inputs.dtype_bytes
    work = {"candidates": candidates_bytes(inputs), "evaluation": evaluation_bytes(inputs),
            "walk": states_bytes(inputs, inputs.walked), "overhead": inputs.overhead,
            "training": training_bytes(inputs)}
    states = states_bytes(inputs)
    if placement == "single":
        return [DeviceMemory(m.params * size, states, **work)]
    if placement == "stream":
        resident = m.end_params + min(STREAMED_BLOCKS, m.layers) * m.block_params
        return [DeviceMemory(resident * size, states if states_on_device else 0, **work)]
    per_device = math.ceil(m.layers / devices)
    used = math.ceil(m.layers / per_device)
    share = math.ceil(states * per_device / m.layers)
    return [DeviceMemory((per_device * m.block_params + (m.end_params if d == 0 else 0)) * size, share, **work)
            for d in range(used)]


def step_memory_inputs(config: dict[str, Any], counts: BlockCounts, step: StepSpec,
                       device_type: str = ACCELERATOR) -> MemoryInputs:
    """A shared step's numbers: its pass over the calibration windows and the states its search keeps
    (``SharedStep.states``; the BlockPruner path's); no evaluation."""
    shape, entry = ModelShape.of(config, counts), SHARED_STEPS[step.kind]
    batch = step.runtime.batch if isinstance(step.runtime.batch, int) else AUTO_BATCH.get(device_type, 1)
    samples = step.calibration.samples
    states = entry.states(step.params, samples, shape.layers) if entry.states else 0
    one = entry.states(step.params, 1, shape.layers) if entry.states else 0
    return MemoryInputs(model=shape, dtype=step.runtime.dtype, calib_len=step.calibration.seq_len,
                        walked=2 * samples, states=states, one_window_states=min(one, states),
                        windows_field="`calibration.samples`", candidates=batch if entry.batched else 1,
                        eval_len=0, eval_batch=0, task_batch=0, speed_tokens=0,
                        overhead=HOST_OVERHEAD if device_type == "cpu" else RUNTIME_OVERHEAD)


# --------------------------------------------------------------------------------------------
# Choosing a placement
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlacementChoice:
    """Where a run's blocks live and what each device then holds at its peak."""

    placement: str                      # single | split | stream
    offload: str | None                 # stream: where the weights wait (host | disk); None otherwise
    on_gpu: bool                        # False: the host computes
    memory: tuple[DeviceMemory, ...]    # per device used
    capacity: tuple[int, ...]           # free bytes of each device used; () where unknown
    fits: bool
    states_on_device: bool = True
    host_need: int = 0                  # host bytes a streamed run needs (offloaded weights, states)
    host_memory: int = 0
    advice: str | None = None           # where it does not fit: the settings with which it would

    @property
    def devices(self) -> int:
        return len(self.memory)

    @property
    def peak(self) -> int:
        return max(part.peak for part in self.memory)

    def summary(self) -> str:
        """``stream 1x 29.1 GiB``: the placement, how many devices (``host`` when the host computes)
        and the largest device's peak; ``?`` where the devices' memory is unknown."""
        where = f"{self.devices}x" if self.on_gpu else "host"
        return f"{self.placement} {where} {gib(self.peak)}{'' if self.capacity or not self.on_gpu else '?'}"

    def problem(self) -> str:
        """Why it does not fit, with the settings that would make it fit."""
        target = "the host" if not self.on_gpu else "one GPU" if self.devices == 1 else f"each of {self.devices} GPUs"
        worst = max(range(self.devices), key=lambda d: self.memory[d].peak - self.capacity[d])
        if self.memory[worst].peak <= self.capacity[worst]:
            why = f"its host memory holds {gib(self.host_need)} (offloaded weights, states), more than {gib(self.host_memory)}"
        else:
            away = "" if self.states_on_device else "; its states in host memory"
            why = (f"needs {gib(self.memory[worst].peak)} on {target} ({self.memory[worst].describe()}{away}), "
                   f"more than the {gib(self.capacity[worst])} there")
        even = "even " if self.placement == "stream" else ""
        return f"does not fit {even}placed `{self.placement}`: {why}; {self.advice or 'no setting alone makes it fit'}"


def choose_placement(inputs: MemoryInputs, requested: str, gpus: float, device_memory: Sequence[int],
                     host_memory: int, offload: str = "auto") -> PlacementChoice:
    """The placement a run takes (``runtime.placement``, README Placements): the requested one, or
    for ``auto`` ``single`` if the whole run fits one device, else ``split`` over the run's GPUs if
    it has several and fits them, else ``stream``. ``device_memory``: the free bytes of each of the
    run's GPUs (``gpus`` 0 or none given: the host computes, in ``host_memory``). ``offload: auto``
    streams from host memory when the weights fit in half of it, else from disk. Where nothing fits,
    ``advice`` names the settings with which it would."""
    choice = _choose(inputs, requested, gpus, device_memory, host_memory, offload)
    if choice.fits:
        return choice
    case = _Case(inputs, requested, gpus, tuple(device_memory), host_memory, offload)
    return replace(choice, advice=_advice(case))


def _choose(inputs: MemoryInputs, requested: str, gpus: float, device_memory: Sequence[int], host_memory: int,
            offload: str) -> PlacementChoice:
    on_gpu = gpus > 0 and bool(device_memory)
    free = list(device_memory) if on_gpu else [host_memory]
    choice = None
    for placement in PLACEMENTS if requested == "auto" else (requested,):
        if placement == "split" and requested == "auto" and len(free) < 2:
            continue
        choice = _try(inputs, placement, free, host_memory, offload, on_gpu)
        if choice.fits:
            break
    assert choice is not None
    return choice


def _try(inputs: MemoryInputs, placement: str, free: list[int], host: int, offload: str,
         on_gpu: bool) -> PlacementChoice:
    if placement == "stream":
        return _stream(inputs, free[0], host, offload, on_gpu)
    parts = device_memory(inputs, placement, len(free) if placement == "split" else 1)
    capacity = tuple(free[:len(parts)])
    fits = (placement != "split" or len(free) >= 2) and all(p.peak <= c for p, c in zip(parts, capacity))
    return PlacementChoice(placement, None, on_gpu, tuple(parts), capacity, fits, host_memory=host)


def _stream(inputs: MemoryInputs, free: int, host: int, offload: str, on_gpu: bool) -> PlacementChoice:
    """Streamed on a GPU: the weights wait in host memory or on disk (``offload``) and the calibration
    states in host memory (``placement.Stream.keep``); on the host, the weights on disk."""
    weights = inputs.model.params * inputs.dtype_bytes
    where = "disk" if not on_gpu else offload if offload != "auto" else "host" if weights <= host // 2 else "disk"
    on_device = not on_gpu or not inputs.states
    [parts] = device_memory(inputs, "stream", states_on_device=on_device)
    need = ((weights if where == "host" else 0) + (0 if on_device else states_bytes(inputs))) if on_gpu else 0
    fits = parts.peak <= free and need + RUNTIME_OVERHEAD * (need > 0) <= host
    return PlacementChoice("stream", where, on_gpu, (parts,), (free,), fits, on_device, need, host)


@dataclass(frozen=True)
class _Case:
    """A run's settings as ``choose_placement`` takes them, to try changes of them (``_advice``)."""

    inputs: MemoryInputs
    requested: str
    gpus: float
    free: tuple[int, ...]
    host: int
    offload: str

    def choose(self) -> PlacementChoice:
        return _choose(self.inputs, self.requested, self.gpus, self.free, self.host, self.offload)


def _fixes(case: _Case) -> list[tuple[str, Callable[[_Case], _Case]]]:
    """Changes of one setting that need less memory, each as (the setting, how it changes a run)."""
    inputs, fixes = case.inputs, []
    if case.requested != "auto":
        fixes.append(("`runtime.placement: auto`", lambda c: replace(c, requested="auto")))
    if case.offload == "host":
        fixes.append(("`runtime.offload: disk`", lambda c: replace(c, offload="disk")))
    if inputs.dtype == "float32":
        fixes.append(("`runtime.dtype: bfloat16`", lambda c: replace(c, inputs=replace(c.inputs, dtype="bfloat16"))))
    if inputs.candidates > 1 or inputs.eval_batch > 1:
        fixes.append(("`runtime.batch: 1`", lambda c: replace(c, inputs=replace(
            c.inputs, candidates=min(c.inputs.candidates, 1), eval_batch=min(c.inputs.eval_batch, 1)))))
    if inputs.states > inputs.one_window_states:
        fixes.append((f"one calibration window for the search ({inputs.windows_field})",
                      lambda c: replace(c, inputs=replace(c.inputs, states=c.inputs.one_window_states))))
    if inputs.task_batch > 1:
        fixes.append(("the tasks' `batch_size: 1`", lambda c: replace(c, inputs=replace(c.inputs, task_batch=1))))
    return fixes


def _more_gpus(case: _Case) -> tuple[str, _Case] | None:
    """The fewest GPUs (like the first, up to 64) over which the run fits split, if any."""
    if case.gpus <= 0 or not case.free:
        return None
    split = case.requested if case.requested in ("auto", "split") else "split"
    also = "" if split == case.requested else " and `runtime.placement: split`"
    for count in range(max(2, len(case.free) + 1), 65):
        more = replace(case, requested=split, gpus=count, free=(case.free[0],) * count)
        if more.choose().fits:
            return f"`gpus: {count}`{also}", more
    return None


def _advice(case: _Case) -> str | None:
    """The settings with which the run would fit, each with what it then takes: the single changes
    that are enough (up to three), else the fewest changes made together (in ``_fixes``' order, then
    more GPUs)."""
    tries = [(setting, change(case)) for setting, change in _fixes(case)]
    tries += [more] if (more := _more_gpus(case)) else []
    enough = [f"{setting} ({changed.choose().summary()})" for setting, changed in tries if changed.choose().fits]
    if enough:
        return f"it fits with {' or '.join(enough[:3])}"
    settings: list[str] = []
    for setting, change in _fixes(case):
        case, settings = change(case), [*settings, setting]
        more = _more_gpus(case)
        for together, changed in ((settings, case), *([([*settings, more[0]], more[1])] if more else [])):
            if changed.choose().fits:
                return f"it fits with {' and '.join(together)} ({changed.choose().summary()})"
    return None


def unplanned(inputs: MemoryInputs, requested: str, devices: int) -> PlacementChoice:
    """The estimate where the GPUs' memory is unknown (no ``gpu_memory``): the requested placement's,
    ``single``'s for ``auto`` (which the worker chooses from the memory it finds free)."""
    placement = "single" if requested == "auto" else requested
    if placement == "stream":
        return replace(_stream(inputs, 1 << 62, 1 << 62, "auto", True), capacity=())
    parts = device_memory(inputs, placement, devices if placement == "split" else 1)
    return PlacementChoice(placement, None, True, tuple(parts), (), True)


# --------------------------------------------------------------------------------------------
# Planned from a sweep (``sweep plan``)
# --------------------------------------------------------------------------------------------
def plan_placement(run: RunSpec, config: dict[str, Any], counts: BlockCounts, host_memory: int,
                   gpus: float | None = None) -> PlacementChoice:
    """The placement ``run`` would take on its model's ``gpus`` (or ``gpus``, overriding it), each with
    the model's ``gpu_memory`` free, or on the host (``gpus`` 0 or ``runtime.device: cpu``) with
    ``host_memory`` (the model's ``memory:`` where given). A fractional GPU is one GPU of that share of
    the memory. Raises ``KeyError``/``TypeError`` for an incomplete config."""
    model = run.model
    count = model.gpus if gpus is None else gpus
    on_gpu = count > 0 and run.runtime.device != "cpu"
    host = int(model.memory) if model.memory else host_memory
    inputs = memory_inputs(config, counts, run, ("mps" if run.runtime.device == "mps" else ACCELERATOR) if on_gpu else "cpu")
    requested = run.runtime.placement
    if not on_gpu:
        return choose_placement(inputs, requested, 0, [], host, run.runtime.offload)
    devices = max(1, math.floor(count))
    if model.gpu_memory is None:
        return unplanned(inputs, requested, devices)
    each = int(model.gpu_memory * min(count, 1))
    return choose_placement(inputs, requested, count, [each] * devices, host, run.runtime.offload)


__all__ = ["DTYPE_BYTES", "DeviceMemory", "GiB", "LOGITS_CHUNK", "MemoryInputs", "ModelShape", "PlacementChoice",
           "HOST_OVERHEAD", "RUNTIME_OVERHEAD", "STREAMED_BLOCKS", "block_workspace", "candidates_bytes", "choose_placement",
           "device_memory", "evaluation_bytes", "gib", "logits_chunk", "memory_inputs", "plan_placement",
           "states_bytes", "step_memory_inputs", "unplanned"]
