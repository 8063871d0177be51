"""The pruning methods a sweep can name: one registry, one entry per method.

An entry holds everything twossp needs to know about a method: its sweep spec (a Pydantic model,
validated in sweep files), its runner (a ``Lazy`` reference to a ``prune.context.Runner``: a
function that takes one ``PruneContext`` and prunes its model in place, imported only by the
worker), its plan preview (what it will remove, from parameter counts alone, raising
``BudgetError`` where the run could not succeed), whether ``twossp export`` can rebuild it from the
stored layer masks, and its description (the spec's docstring). Nothing else in twossp branches on
method names: adding a method is its runner module plus one entry here.

An entry may also name a shared step (``SHARED_STEPS``): work that every run of the method on one
model and calibration repeats whatever its target (2SSP's stage-1 neuron scores, the block states
ShortGPT and the window method rank, BlockPruner's greedy path). The planner groups the runs that
need the same step, the executor computes it once and hands its result to each of them, and the
runner takes it instead of computing it (``PruneContext.shared``).

Torch-free: ``twossp sweep validate`` and ``twossp list methods`` import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

from pydantic import Field

from twossp.budget import blocks_to_remove, ceil_share, two_stage_budget
from twossp.contracts import BlockCounts
from twossp.errors import BudgetError
from twossp.registry import Lazy, Registry
from twossp.strict import Strict


#: Integers stored in the database's INTEGER columns (and so in every run key) fit in 32 bits.
MAX_INT = 2**31 - 1


class MethodSpec(Strict):
    """Base of every method's sweep spec; ``name`` is the discriminator."""

    name: str
    #: The field that says how many calibration windows the method reads (the sweep checks that
    #: every calibration size has that many); None: it reads them all.
    windows_field: ClassVar[str | None] = None


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------
class DenseMethod(MethodSpec):
    """The unpruned model: the reference every pruned run is compared against."""

    name: Literal["dense"] = "dense"


class TwoSSPMethod(MethodSpec):
    """2SSP (arXiv 2501.17771): FFN width pruning, then iterative attention removal."""

    name: Literal["2ssp"] = "2ssp"
    alpha: float = Field(default=1.5, gt=0)
    num_calibration_second_stage: int = Field(default=1, ge=1, le=MAX_INT)
    windows_field: ClassVar[str | None] = "num_calibration_second_stage"


class ShortGPTMethod(MethodSpec):
    """ShortGPT (arXiv 2403.03853): drop the ceil(s*N) blocks of lowest Block Influence."""

    name: Literal["shortgpt"] = "shortgpt"


class WindowMethod(MethodSpec):
    """Gromov et al. (arXiv 2403.17887): drop the ceil(s*N) consecutive blocks whose input and
    output hidden states are most similar."""

    name: Literal["window"] = "window"


class BlockPrunerMethod(MethodSpec):
    """BlockPruner (arXiv 2406.10594): greedily remove the attention or FFN submodule whose removal
    gives the lowest calibration perplexity, until the sparsity is reached."""

    name: Literal["blockpruner"] = "blockpruner"
    num_calibration: int = Field(default=1, ge=1, le=MAX_INT)  # windows scoring each candidate (the paper: one)
    windows_field: ClassVar[str | None] = "num_calibration"


class EvoPressMethod(MethodSpec):
    """EvoPress (arXiv 2410.14649): evolutionary search over which ceil(s*N) blocks to drop,
    fitness = KL divergence to the dense model, multi-step selection."""

    name: Literal["evopress"] = "evopress"
    generations: int = Field(default=50, ge=1, le=MAX_INT)
    offspring: int = Field(default=16, ge=1, le=MAX_INT)
    search_seed: int = Field(default=0, ge=0, le=MAX_INT)
    initial_candidates: int = Field(default=64, ge=1, le=MAX_INT)  # random configurations; the fittest starts
    max_mutations: int = Field(default=3, ge=1, le=MAX_INT)  # level-switch swaps per offspring, at most


class SliceGPTMethod(MethodSpec):
    """SliceGPT (arXiv 2401.15024): PCA rotations fused into the weights, hidden width sliced;
    the parameters of the added shortcut matrices are counted."""

    name: Literal["slicegpt"] = "slicegpt"
    round_to: int = Field(default=8, ge=1, le=MAX_INT)  # the sliced width is a multiple of this


# --------------------------------------------------------------------------------------------
# Plan previews: what a run will remove, from the counts of config.json alone
# --------------------------------------------------------------------------------------------
Preview = Callable[[MethodSpec, float, BlockCounts], str]


def _two_ssp_preview(method: TwoSSPMethod, sparsity: float, counts: BlockCounts) -> str:
    budget = two_stage_budget(counts, sparsity, method.alpha)
    return f"{budget.num_attention_removed} attn, FFN {counts.intermediate_size}->{budget.ffn_keep}"


def _whole_blocks_preview(method: MethodSpec, sparsity: float, counts: BlockCounts) -> str:
    count = blocks_to_remove(counts.num_layers, sparsity)
    if count >= counts.num_layers:
        raise BudgetError(f"sparsity {sparsity:g} removes {count} of {counts.num_layers} blocks: nothing would be left")
    return f"{count} of {counts.num_layers} blocks"


def _submodules_preview(method: MethodSpec, sparsity: float, counts: BlockCounts) -> str:
    return f"attn/FFN submodules holding >= {ceil_share(sparsity, counts.layer_params):,} parameters"


def _slicegpt_preview(method: MethodSpec, sparsity: float, counts: BlockCounts) -> str:
    return f"hidden width sliced (a multiple of {method.round_to}) to keep <= {1 - sparsity:.3g} of P_layers"


# --------------------------------------------------------------------------------------------
# Estimated work: decoder-layer forwards of one run's pruning, (shareable part, the run's own part)
# --------------------------------------------------------------------------------------------
Work = Callable[[MethodSpec, float, BlockCounts, int], tuple[int, int]]


def _search_forwards(num_layers: int, windows: int, candidates: list[int]) -> int:
    """A prefix-reusing greedy search (``prune.calibration.BlockInputs``): one pass to capture the
    block inputs, then per step each candidate runs its suffix, (N + 1) / 2 blocks on average."""
    return windows * (num_layers + sum(count * (num_layers + 1) // 2 for count in candidates))


def _two_ssp_work(method: TwoSSPMethod, sparsity: float, counts: BlockCounts, samples: int) -> tuple[int, int]:
    steps = two_stage_budget(counts, sparsity, method.alpha).num_attention_removed
    n = counts.num_layers
    stage2 = _search_forwards(n, min(samples, method.num_calibration_second_stage), [n - k for k in range(steps)])
    return samples * n, stage2


def _whole_blocks_work(method: MethodSpec, sparsity: float, counts: BlockCounts, samples: int) -> tuple[int, int]:
    return samples * counts.num_layers, 0


def _blockpruner_work(method: BlockPrunerMethod, sparsity: float, counts: BlockCounts,
                      samples: int) -> tuple[int, int]:
    n = counts.num_layers
    steps = min(2 * n - 1, ceil_share(sparsity, 2 * n))  # submodules of about average size
    return _search_forwards(n, min(samples, method.num_calibration), [2 * n - k for k in range(steps)]), 0


# --------------------------------------------------------------------------------------------
# Kept states: hidden states (one window long, hidden_size wide) a run's pruning holds at its peak
# --------------------------------------------------------------------------------------------
States = Callable[[MethodSpec, int, int], int]


def _search_states(windows: int, num_layers: int) -> int:
    """A prefix-reusing search (``prune.calibration.BlockInputs``) keeps every block's input of every
    window it scores on, and while it scores, the best candidate's recomputed inputs and the current
    one's: three copies of windows x N states at most."""
    return 3 * windows * num_layers


def _two_ssp_states(method: TwoSSPMethod, samples: int, num_layers: int) -> int:
    return _search_states(min(samples, method.num_calibration_second_stage), num_layers)


def _blockpruner_states(method: BlockPrunerMethod, samples: int, num_layers: int) -> int:
    return _search_states(min(samples, method.num_calibration), num_layers)


def _first_and_last_states(method: MethodSpec, samples: int, num_layers: int) -> int:
    """EvoPress and SliceGPT keep block 0's input of every window, and one more state per window
    (EvoPress: the dense final hidden state; SliceGPT: the signals of the block being sliced)."""
    return 2 * samples


# --------------------------------------------------------------------------------------------
# Shared steps
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SharedStep:
    """Work several runs share (see the module docstring)."""

    kind: str
    #: a ``prune.context.StepComputation``: (ModelContext, params) -> the result (tensors on the CPU,
    #: lists and numbers), what the methods' runners take as ``PruneContext.shared``
    compute: Lazy
    description: str
    #: the method's fields that change the result (its other fields, and the sparsity, do not)
    params: Callable[[MethodSpec], dict[str, Any]] = lambda method: {}
    #: the result is a search computed up to the highest sparsity of the runs it feeds, each of which
    #: takes its prefix (``params`` then holds that ``sparsity``)
    to_target: bool = False
    #: hidden states it keeps at its peak, from (params, calibration windows, N), as ``Method.states``;
    #: None: a few small vectors per block
    states: Callable[[dict[str, Any], int, int], int] | None = None
    #: it scores candidate removals ``runtime.batch`` at a time, as ``Method.batched``
    batched: bool = False


SHARED_STEPS: Registry[SharedStep] = Registry("shared step", {step.kind: step for step in (
    SharedStep("ffn scores", Lazy("twossp.prune.width:shared_scores"),
               "2SSP stage 1: every FFN neuron's activation norm over the calibration windows"),
    SharedStep("block states", Lazy("twossp.prune.blocks:shared_scores"),
               "ShortGPT's Block Influence and the window method's similarity at every block count, from the "
               "last-token hidden states entering and leaving every block"),
    SharedStep("blockpruner path", Lazy("twossp.prune.blockpruner:shared_path"),
               "BlockPruner's greedy removals, up to the highest sparsity of the runs it feeds",
               params=lambda method: {"num_calibration": method.num_calibration}, to_target=True,
               states=lambda params, samples, n: _search_states(min(samples, params["num_calibration"]), n),
               batched=True),
)})


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One registered method (see the module docstring)."""

    spec: type[MethodSpec]
    run: Lazy | None                    # a ``prune.context.Runner``: PruneContext -> PruneOutcome; None: dense
    preview: Preview | None = None
    export_refusal: str | None = None   # why ``twossp export`` cannot rebuild it from masks; None: it can
    gguf_refusal: str | None = None     # why its models cannot be written as GGUF for llama.cpp; None: they can
    stock_refusal: str | None = None    # why its models cannot be written as a stock checkpoint; None: they can
    #: its models are saved in twossp's own checkpoint layout whatever the family (SliceGPT's
    #: rotations and shortcut matrices), not in a portable one
    own_checkpoint: bool = False
    #: it deletes whole blocks only, so every block left is whole and its models save as the
    #: family's plain checkpoint
    whole_blocks: bool = False
    #: a search run to a higher sparsity holds every lower one's as a prefix (BlockPruner's greedy
    #: path does not depend on the target), so one search measures every sparsity
    prefix_search: bool = False
    #: the step its runs share, a ``SHARED_STEPS`` kind; None: nothing is shared
    shared: str | None = None
    #: estimated decoder-layer forwards of a run (``Work``); None: not estimated
    work: Work | None = None
    #: hidden states its pruning keeps at its peak, from (spec, calibration windows, N) (``States``;
    #: ``twossp.memory`` plans them); None: a few small vectors per block, not counted
    states: States | None = None
    #: its search scores candidate removals ``runtime.batch`` at a time in one forward
    batched: bool = False

    @property
    def name(self) -> str:
        return self.spec.model_fields["name"].default

    @property
    def prunes(self) -> bool:
        """Whether runs of it take a sparsity, calibration and seed (every method but dense)."""
        return self.run is not None

    @property
    def description(self) -> str:
        """The spec's docstring, its first paragraph on one line."""
        return " ".join((self.spec.__doc__ or "").strip().split("\n\n")[0].split())


_ENTRIES = (
    Method(DenseMethod, run=None, preview=lambda method, sparsity, counts: "-",
           work=lambda method, sparsity, counts, samples: (0, 0)),
    Method(TwoSSPMethod, Lazy("twossp.prune.two_stage:run"), _two_ssp_preview, shared="ffn scores",
           work=_two_ssp_work, states=_two_ssp_states, batched=True),
    Method(ShortGPTMethod, Lazy("twossp.prune.blocks:run_shortgpt"), _whole_blocks_preview, shared="block states",
           work=_whole_blocks_work, whole_blocks=True),
    Method(WindowMethod, Lazy("twossp.prune.blocks:run_window"), _whole_blocks_preview, shared="block states",
           work=_whole_blocks_work, whole_blocks=True),
    Method(BlockPrunerMethod, Lazy("twossp.prune.blockpruner:run"), _submodules_preview, prefix_search=True,
           shared="blockpruner path", work=_blockpruner_work, states=_blockpruner_states,
           batched=True),
    Method(EvoPressMethod, Lazy("twossp.prune.evopress:run"), _whole_blocks_preview, states=_first_and_last_states,
           whole_blocks=True),
    Method(SliceGPTMethod, Lazy("twossp.prune.slicegpt:run"), _slicegpt_preview, states=_first_and_last_states,
           export_refusal="its PCA rotations are not layer masks and are not stored in the database, so it "
                          "cannot be rebuilt from there: a sliced model is saved while it runs, with "
                          "`save_to: DIR` in the sweep",
           gguf_refusal="its rotated, narrowed residual stream with a shortcut matrix on every residual connection "
                        "has no llama.cpp architecture; save it with `format: safetensors` and load it with "
                        "twossp.load_pruned",
           stock_refusal="its rotated, narrowed residual stream with a shortcut matrix on every residual connection "
                         "has no stock architecture; save it with `format: safetensors` (twossp's own SliceGPT "
                         "checkpoint) and load it with twossp.load_pruned",
           own_checkpoint=True),
)

METHODS: Registry[Method] = Registry("method", {entry.name: entry for entry in _ENTRIES})


def method_of(spec: MethodSpec) -> Method:
    """The registry entry of a validated method spec."""
    return METHODS[spec.name]


__all__ = ["METHODS", "MAX_INT", "Method", "MethodSpec", "SHARED_STEPS", "SharedStep", "States", "Work", "method_of",
           *(entry.spec.__name__ for entry in _ENTRIES)]
