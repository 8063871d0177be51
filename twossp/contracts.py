"""The data that crosses layers: what a worker hands the driver (``RunResult``), what a pruning
method hands the worker (``PruneOutcome``), the parameter counts every layer reasons about
(``BlockCounts``), layer masks, run states, the score rows the leaderboard summarises and the
progress callback.

Everything here is plain data and imports neither torch nor any other twossp layer, so both
sides of each boundary import it (the sweep driver unpickles results without torch).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

#: Tensor types a GGUF export can be written in (``twossp.serve.gguf.TENSOR_TYPES`` describes them).
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0",
              "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_m", "q2_k")
#: The config key of a SliceGPT model: how ``slice_model`` rebuilt it (its checkpoints need twossp to load).
SLICEGPT_CONFIG_KEY = "twossp_slicegpt"

#: progress(phase, done, total): how far a long step is; called from the worker's thread.
Progress = Callable[[str, int, int], None]


class RunStatus(str, enum.Enum):
    """A run's state in the database (a CHECK constraint holds the column to these values)."""

    PENDING = "pending"        # planned or released, not running
    RUNNING = "running"        # claimed by a driver whose heartbeat says it is alive
    COMPLETED = "completed"    # scores, timings and masks stored
    FAILED = "failed"          # the error stored

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class BlockCounts:
    """Parameter counts of a model's decoder stack, measured on block 0 (docs/method.md, Terms)."""

    num_layers: int        # N
    intermediate_size: int  # d_ff
    attn_params: int       # P_attn: q, k, v, o (+ biases)
    mlp_params: int        # P_mlp: gate, up, down (+ biases)
    layer_params: int      # P_layers: every parameter inside the decoder layers, norms included


@dataclass(frozen=True)
class Budget:
    """How 2SSP splits a sparsity between its stages (paper Eq. 5; ``twossp.budget``)."""

    sparsity: float
    num_attention_removed: int  # N_attn
    ffn_params_cut_per_block: int  # m
    ffn_keep: int               # d_keep, the same in every block


# --------------------------------------------------------------------------------------------
# Layer masks: what a pruned model kept, in the dense model's indices
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerMask:
    """One dense block: whether its attention stays and which FFN neurons do. Returned by
    workers, stored in ``layer_masks``, and enough to rebuild the pruned model from the dense one
    (``twossp.prune.masks.apply_masks``)."""

    layer: int
    attention_kept: bool
    ffn_width: int        # dense FFN width (bits in the mask)
    ffn_mask: bytes       # kept neurons, np.packbits(bool[ffn_width]) (big-endian bit order)

    @property
    def removed_block(self) -> bool:
        """The whole block is gone: no attention and no FFN neuron left."""
        return not self.attention_kept and self.ffn_kept == 0

    @property
    def ffn_kept(self) -> int:
        return int(self.kept_indices().size)

    def kept_indices(self) -> np.ndarray:
        bits = np.unpackbits(np.frombuffer(self.ffn_mask, dtype=np.uint8), count=self.ffn_width)
        return np.flatnonzero(bits)


def pack_indices(indices: Sequence[int] | np.ndarray, width: int) -> bytes:
    bits = np.zeros(width, dtype=bool)
    bits[np.asarray(indices, dtype=np.int64)] = True
    return np.packbits(bits).tobytes()


def layer_masks(num_layers: int, dense_width: int, kept_ffn: Sequence[Sequence[int]] | None,
                removed_attention: Sequence[int], removed_blocks: Sequence[int] = (),
                removed_ffn: Sequence[int] = ()) -> list[LayerMask]:
    """One mask per dense block; ``kept_ffn=None`` means every neuron kept (e.g. the dense model).
    A removed FFN keeps no neuron; a removed block keeps neither its attention nor any neuron."""
    removed = set(removed_attention) | set(removed_blocks)
    masks = []
    for i in range(num_layers):
        kept = kept_ffn[i] if kept_ffn is not None else np.arange(dense_width)
        if i in removed_blocks or i in removed_ffn:
            kept = np.arange(0)
        masks.append(LayerMask(i, i not in removed, dense_width, pack_indices(kept, dense_width)))
    return masks


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
#: Score rows, as (dataset, metric), that the leaderboard shows beside perplexity: the mean lm-eval
#: accuracy over a run's tasks (a fraction) and the speed measurements it compares against dense.
DOWNSTREAM_ACC_MEAN = ("downstream", "acc_mean")
SPEED_PREFILL_SECONDS = ("speed", "prefill_seconds")
SPEED_DECODE_TOKENS_PER_SECOND = ("speed", "decode_tokens_per_second")


#: One removal step: (``attention`` | ``ffn`` | ``block``, dense block index).
Removal = tuple[str, int]
#: ``runs.details`` key of the calibration perplexity after each removal step (every searching method).
CALIBRATION_PERPLEXITY_KEY = "calibration_perplexity_after_each_removal"


@dataclass(frozen=True)
class SearchKeys:
    """The names a search's figures are stored under in ``runs.details``. Each method keeps the names
    its runs have always been stored under, so databases written before read the same."""

    order: str = "removal_order"           # [[kind, layer], ...] in order of removal
    layer_forwards: str = "layer_forwards"
    naive_layer_forwards: str = "naive_layer_forwards"
    candidate_batch: str = "candidate_batch"  # stored only where it is above one
    #: the one kind every step removes, stored as bare layer indices (2SSP's stage 2: attention)
    only_kind: str | None = None


#: 2SSP's stage 2, an attention-only search.
STAGE2_KEYS = SearchKeys("removed_attention_order", "stage2_layer_forwards", "stage2_naive_layer_forwards",
                         "stage2_candidate_batch", only_kind="attention")
#: Every stored form, tried in this order when a run's details are read back.
_SEARCH_KEYS = (STAGE2_KEYS, SearchKeys())


@dataclass(frozen=True)
class RemovalRecord:
    """What the views read of a run's removals, from ``runs.details``."""

    steps: list[Removal]            # in order of removal where ``ordered``, else the blocks removed whole
    ordered: bool                   # the method searched step by step (2SSP's stage 2, BlockPruner)
    calibration_perplexity: list[float] = field(default_factory=list)  # after each ordered step


def removal_record(details: dict[str, Any] | None) -> RemovalRecord:
    """A stored run's removals, whichever method stored them (``PruneOutcome.stored_details``)."""
    details = details or {}
    after = [float(v) for v in details.get(CALIBRATION_PERPLEXITY_KEY) or []]
    for keys in _SEARCH_KEYS:
        if keys.order in details:
            order = details[keys.order]
            steps = ([(keys.only_kind, int(layer)) for layer in order] if keys.only_kind
                     else [(str(kind), int(layer)) for kind, layer in order])
            return RemovalRecord(steps, True, after)
    return RemovalRecord([("block", int(layer)) for layer in details.get("removed_blocks", [])], False)


#: ``runs.details`` keys that ``RemovalRecord`` reads (the run view shows them in its layer map).
REMOVAL_DETAIL_KEYS = tuple(dict.fromkeys((CALIBRATION_PERPLEXITY_KEY, *(keys.order for keys in _SEARCH_KEYS))))


@dataclass
class PruneOutcome:
    """What a pruning method did, in terms of the dense model's indices."""

    kept_ffn: "list[torch.Tensor] | None"  # per block: kept neuron indices of the dense FFN (None: all)
    removed_attention: list[int]         # blocks whose attention was removed, in order of removal
    timings: dict[str, float] = field(default_factory=dict)
    removed_blocks: list[int] = field(default_factory=list)  # whole blocks deleted (dense indices)
    removed_ffn: list[int] = field(default_factory=list)     # blocks whose whole FFN was removed
    #: the search's steps in order of removal; None: the method does not remove step by step
    removal_order: list[Removal] | None = None
    calibration_perplexity: list[float] = field(default_factory=list)  # after each step of ``removal_order``
    layer_forwards: int | None = None        # decoder-layer forwards the search ran
    naive_layer_forwards: int | None = None  # what rerunning the whole model for every candidate would have run
    candidate_batch: int = 1                 # candidates the search scored per forward (``runtime.batch``)
    stored_as: SearchKeys = SearchKeys()
    details: dict = field(default_factory=dict)              # the method's own record for the database
    budget: "Budget | None" = None
    search: Any = None  # the method's own search record (e.g. prune.depth.DepthSearch), in-process only

    def masks(self, num_layers: int, dense_width: int) -> list[LayerMask]:
        return layer_masks(num_layers, dense_width, self.kept_ffn, self.removed_attention, self.removed_blocks,
                           self.removed_ffn)

    def stored_details(self) -> dict[str, Any]:
        """``runs.details``, under the names of ``stored_as`` and in the order runs have always been
        stored in: the budget, the removal order and the calibration perplexity after each step, the
        method's own record, then the search's counts."""
        keys = self.stored_as
        record: dict[str, Any] = {}
        if self.budget is not None:
            record["budget"] = {"num_attention_removed": self.budget.num_attention_removed,
                                "ffn_keep": self.budget.ffn_keep,
                                "ffn_params_cut_per_block": self.budget.ffn_params_cut_per_block}
        if self.removal_order is not None:
            record[keys.order] = ([layer for _, layer in self.removal_order] if keys.only_kind
                                  else [[kind, layer] for kind, layer in self.removal_order])
            record[CALIBRATION_PERPLEXITY_KEY] = list(self.calibration_perplexity)
        record.update(self.details)
        counts = ((keys.layer_forwards, self.layer_forwards), (keys.naive_layer_forwards, self.naive_layer_forwards),
                  (keys.candidate_batch, self.candidate_batch if self.candidate_batch > 1 else None))
        record.update({name: value for name, value in counts if value is not None})
        return record


@dataclass(frozen=True)
class RecoveryStep:
    """One optimiser step of a recovery (``twossp.recover``): the loss it minimised and its parts,
    the learning rate it stepped with, the gradient norm before clipping, and the tokens and seconds
    of training so far; at the evaluation steps, the held-out perplexity after the step."""

    step: int                       # 1, 2, ...
    loss: float                     # the mean over the step's tokens of what was minimised
    kd_loss: float | None           # its forward-KL part (None: not distilling)
    ce_loss: float | None           # the student's next-token cross-entropy (measured either way)
    lr: float
    grad_norm: float | None         # before clipping; None when not finite or not measured
    tokens: int                     # training tokens seen up to and including this step
    seconds: float                  # training wall time up to the end of this step
    heldout_perplexity: float | None = None


@dataclass
class RunResult:
    """One finished run as plain data, cheap to pickle across Ray; the driver turns it into rows."""

    key: str
    status: RunStatus                    # COMPLETED or FAILED once the worker returns
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    achieved_sparsity: float | None = None
    params_dense: int | None = None
    params_pruned: int | None = None
    scores: list[tuple[str, str, float]] = field(default_factory=list)   # (dataset, metric, value)
    generations: list[tuple[str, str, int]] = field(default_factory=list)  # (prompt, output, new tokens)
    timings: dict[str, float] = field(default_factory=dict)
    masks: list[LayerMask] = field(default_factory=list)
    calibration_sha256: str | None = None                             # of the calibration windows used
    token_hashes: dict[str, str] = field(default_factory=dict)        # dataset -> sha256 of its windows
    details: dict[str, Any] = field(default_factory=dict)
    host: str | None = None
    device: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    shared_step: str | None = None  # the key of the shared step whose result the run took instead of computing it
    #: where the blocks lived: ``single``, ``split`` (over how many devices) or ``stream`` (from where)
    placement: str | None = None
    #: peak memory per phase and device: (phase, device, metric, bytes); ``twossp.device.peak_memory``'s
    #: metrics (the CUDA allocator's peak per GPU, the process's peak resident set on the CPU)
    memory: list[tuple[str, str, str, int]] = field(default_factory=list)
    #: what ``save_to:`` wrote, one ``exports`` row each (``runtime.export.export_row``)
    exports: list[dict[str, Any]] = field(default_factory=list)
    #: a recovered run's loss curve, one entry per optimiser step (``recovery_steps`` rows)
    recovery: list["RecoveryStep"] = field(default_factory=list)

    @classmethod
    def failure(cls, key: str, error: str) -> "RunResult":
        return cls(key=key, status=RunStatus.FAILED, error=error)


@dataclass
class StepResult:
    """One shared step (``methods.SharedStep``) as computed once for the runs that need it: its
    result (``payload``), or the error every one of them then fails with."""

    key: str
    kind: str
    status: RunStatus
    error: str | None = None
    payload: Any = None
    calibration_sha256: str | None = None  # of the windows it was computed on (a run checks its own against it)
    placement: str | None = None           # as ``RunResult``'s (not stored: a step's memory is its runs' concern)
    memory: list[tuple[str, str, str, int]] = field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings: dict[str, float] = field(default_factory=dict)
    host: str | None = None
    device: str | None = None
    params_dense: int | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    stored: bool = False  # read back from the database (computed by an earlier sweep), not computed now

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())
