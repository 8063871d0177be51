"""SliceGPT (Ashkboos et al., arXiv 2401.15024): rotate the residual stream onto its principal
components, then delete the least important ones, so that every matrix that reads or writes the
stream loses whole columns or rows.

Three steps, as in the paper:

1. RMSNorm scales are fused into the linear layers that follow them (Sec. 3.2), leaving a weightless
   RMS normalisation, which commutes with any orthogonal Q: ``RMSNorm(x Q) = RMSNorm(x) Q``.
2. At every place the stream is read (the embedding output, the input of each attention, the input
   of each FFN) a PCA of the calibration signal gives Q, its columns by decreasing eigenvalue of
   ``X^T X`` (Sec. 3.3). The signals come from the model whose earlier blocks are already sliced,
   block by block (Sec. 3.4), each PCA taken in the dense model's own coordinates.
3. The stream is kept in the first D' of those coordinates (Sec. 3.4): readers become ``W Q[:, :D']``,
   writers ``Q[:, :D']^T W``, and since consecutive places have different Q each residual connection
   gets a shortcut matrix ``Q_prev[:, :D']^T Q_next[:, :D']``. A block computes

       x_mid = x S_attn + Attn(N(x)),    x_out = x_mid S_mlp + MLP(N(x_mid))

   with N the weightless normalisation. The shortcut matrices are parameters of the block and count
   towards its size.

As in the authors' code, N divides the sum of squares by the *dense* width D, not by D': a sliced
signal keeps the scale its full-width self had, up to the energy of the discarded directions. And,
as their default does, the last block's output and the LM head stay at width D (rotated, not
sliced); ``slice_head=True`` slices them too.

``config.hidden_size`` is left alone: attention and rotary shapes derive from it. The sliced width
is recorded in ``config.twossp_slicegpt``, from which ``checkpoint.rebuild_sliced`` reshapes a freshly built
model before a checkpoint's weights are loaded into it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from twossp.contracts import SLICEGPT_CONFIG_KEY, Progress, PruneOutcome
from twossp.errors import BudgetError, UnsupportedArchitecture
from twossp.families.base import FamilyAdapter, RemovedAttention, new_linear
from twossp.placement import move, placement_of
from twossp.prune.calibration import block_calls
from twossp.prune.context import PruneContext


CONFIG_KEY = SLICEGPT_CONFIG_KEY

#: Architectures whose blocks are plain pre-norm RMSNorm blocks with an unscaled embedding: the
#: only shape the rotation is exact for. Gemma (scaled embedding, (1 + w) norms, sandwich norms)
#: and anything else is refused before any work is done.
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM")

#: Which linears of a block read the residual stream (their input features are sliced) and which
#: write it (their output features are sliced), by attribute name. Phi-3 fuses q/k/v and gate/up.
READS_ATTENTION = ("q_proj", "k_proj", "v_proj", "qkv_proj")
WRITES_ATTENTION = "o_proj"
READS_MLP = ("gate_proj", "up_proj", "gate_up_proj")
WRITES_MLP = "down_proj"
_LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
_PARAMETERLESS_CHILDREN = {"resid_attn_dropout", "resid_mlp_dropout"}  # Phi-3; identities in eval mode


class RMSNormalize(nn.Module):
    """RMS normalisation without a scale (fused into the next linears), dividing the sum of squares
    by the dense width ``dense_size`` whatever the width of its input."""

    def __init__(self, dense_size: int, eps: float) -> None:
        super().__init__()
        self.dense_size = dense_size
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # as transformers' RMSNorm: statistics in fp32
        mean_square = x32.pow(2).sum(-1, keepdim=True) / self.dense_size
        return (x32 * torch.rsqrt(mean_square + self.eps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"dense_size={self.dense_size}, eps={self.eps}"


class SlicedDecoderLayer(nn.Module):
    """A pre-norm decoder block after SliceGPT: the family's own attention and FFN modules (with
    sliced linears), weightless norms, and a shortcut matrix on each residual connection.

    Takes the arguments transformers 5 passes to a decoder layer and returns a tensor, as its
    layers do; the attention keeps its ``layer_idx``, so the KV cache works unchanged."""

    def __init__(self, self_attn: nn.Module, mlp: nn.Module, input_layernorm: nn.Module,
                 post_attention_layernorm: nn.Module, attn_shortcut: nn.Module, mlp_shortcut: nn.Module,
                 attention_type: str | None = None) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = input_layernorm
        self.post_attention_layernorm = post_attention_layernorm
        self.attn_shortcut = attn_shortcut
        self.mlp_shortcut = mlp_shortcut
        if attention_type is not None:
            self.attention_type = attention_type

    def attention_half(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       position_ids: torch.Tensor | None = None, cache: Any = None, use_cache: bool | None = False,
                       position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                       **kwargs: Any) -> torch.Tensor:
        """x_mid = x S_attn + Attn(N(x))"""
        if cache is None:
            cache = kwargs.pop("past_key_values", None)  # the name transformers used before ``cache``
        attn, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                 position_ids=position_ids, cache=cache, use_cache=use_cache,
                                 position_embeddings=position_embeddings, **kwargs)
        return self.attn_shortcut(hidden_states) + attn

    def mlp_half(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """x_out = x_mid S_mlp + MLP(N(x_mid))"""
        return self.mlp_shortcut(hidden_states) + self.mlp(self.post_attention_layernorm(hidden_states))

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.mlp_half(self.attention_half(hidden_states, *args, **kwargs))


# --- structure ----------------------------------------------------------------------------------
def check_supported(model: nn.Module, adapter: FamilyAdapter) -> None:
    """Raise ``UnsupportedArchitecture`` unless the rotation is exact for ``model``: a listed
    architecture, an unscaled ``nn.Embedding``, every block pre-norm with two RMSNorms, a present
    attention and FFN whose stream-facing linears are the expected ones."""
    archs = list(getattr(model.config, "architectures", None) or [])
    if not any(arch in SUPPORTED for arch in archs):
        raise UnsupportedArchitecture(
            f"SliceGPT is not implemented for {', '.join(archs) or type(model).__name__}; "
            f"supported: {', '.join(SUPPORTED)}")
    if getattr(model.config, CONFIG_KEY, None):
        raise UnsupportedArchitecture("this model has already been sliced by SliceGPT")
    adapter.check_supported(model.config)
    embed = model.get_input_embeddings()
    if type(embed) is not nn.Embedding:
        raise UnsupportedArchitecture(f"SliceGPT needs a plain nn.Embedding, got {type(embed).__name__}")
    width = embed.embedding_dim
    norms = [adapter.final_norm(model)]
    for i, layer in enumerate(adapter.layers(model)):
        children = {name for name, _ in layer.named_children()}
        if not _LAYER_CHILDREN <= children or children - _LAYER_CHILDREN - _PARAMETERLESS_CHILDREN:
            raise UnsupportedArchitecture(
                f"block {i} has submodules {sorted(children)}; SliceGPT handles pre-norm blocks made of "
                f"{sorted(_LAYER_CHILDREN)} only (attention or FFN removed, or another layout)")
        if isinstance(adapter.attention(layer), RemovedAttention):
            raise UnsupportedArchitecture(f"block {i} has no attention: SliceGPT needs the dense model")
        if not adapter.is_ffn_present(layer):
            raise UnsupportedArchitecture(f"block {i} has no FFN: SliceGPT needs the dense model")
        stream_linears(adapter.attention(layer), READS_ATTENTION, WRITES_ATTENTION, width, f"block {i} attention")
        stream_linears(adapter.mlp(layer), READS_MLP, WRITES_MLP, width, f"block {i} FFN")
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
    for norm in norms:
        weight = getattr(norm, "weight", None)
        if (not type(norm).__name__.endswith("RMSNorm") or not hasattr(norm, "variance_epsilon")
                or weight is None or tuple(weight.shape) != (width,)):
            raise UnsupportedArchitecture(f"SliceGPT needs RMSNorm(weight * x / rms(x)) norms, got {norm}")
    if len({float(norm.variance_epsilon) for norm in norms}) != 1:
        raise UnsupportedArchitecture("SliceGPT expects one RMSNorm epsilon throughout the model")


def stream_linears(module: nn.Module, reads: tuple[str, ...], writes: str, width: int,
                    where: str) -> tuple[list[str], str]:
    """The names of ``module``'s linears that read the stream, and of the one that writes it."""
    present = [name for name in reads if isinstance(getattr(module, name, None), nn.Linear)]
    out = getattr(module, writes, None)
    if not present or not isinstance(out, nn.Linear):
        raise UnsupportedArchitecture(f"{where}: expected linears {list(reads)} and {writes!r}")
    if any(getattr(module, name).in_features != width for name in present) or out.out_features != width:
        raise UnsupportedArchitecture(f"{where}: stream-facing linears do not have the hidden width {width}")
    return present, writes


def sliced_layer_params(model: nn.Module, adapter: FamilyAdapter, width: int, slice_head: bool = False) -> int:
    """P_layers of ``model`` (dense) once sliced to ``width``, shortcut matrices included and the
    norm scales gone (fused into the linears)."""
    dense = model.get_input_embeddings().embedding_dim
    layers = adapter.layers(model)
    total = 0
    for i, layer in enumerate(layers):
        d_out = width if slice_head or i < len(layers) - 1 else dense
        for module, reads, writes, d_read, d_write in (
                (adapter.attention(layer), READS_ATTENTION, WRITES_ATTENTION, width, width),
                (adapter.mlp(layer), READS_MLP, WRITES_MLP, width, d_out)):
            names, out_name = stream_linears(module, reads, writes, dense, "")
            facing = {getattr(module, name) for name in names} | {getattr(module, out_name)}
            total += sum(p.numel() for m in module.modules() if m not in facing for p in m.parameters(recurse=False))
            for name in names:
                linear = getattr(module, name)
                total += linear.out_features * d_read + (linear.out_features if linear.bias is not None else 0)
            out = getattr(module, out_name)
            total += d_write * out.in_features + (d_write if out.bias is not None else 0)
        total += width * width + width * d_out  # the two shortcut matrices
    return total


def choose_width(model: nn.Module, adapter: FamilyAdapter, sparsity: float, round_to: int,
                 slice_head: bool = False) -> int:
    """The largest multiple of ``round_to`` whose sliced P_layers (shortcuts included) is at most
    ``(1 - sparsity)`` of the dense P_layers; one width for every block (the paper's constant slicing)."""
    if not 0 <= sparsity < 1:
        raise BudgetError(f"sparsity must be in [0, 1), got {sparsity}")
    dense_width = model.get_input_embeddings().embedding_dim
    dense = adapter.block_counts(model).layer_params
    allowed = (1 - sparsity) * dense
    for width in range(dense_width - dense_width % round_to, 0, -round_to):
        if sliced_layer_params(model, adapter, width, slice_head) <= allowed:
            return width
    smallest = sliced_layer_params(model, adapter, round_to, slice_head) if round_to <= dense_width else None
    raise BudgetError(
        f"SliceGPT cannot reach sparsity {sparsity}: even the smallest width ({round_to}, a multiple of "
        f"round_to={round_to}) keeps {smallest} of {dense} layer parameters "
        f"(the FFN and attention widths and the shortcut matrices are not sliced away)")


# --- the method ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceReport:
    width: int             # D', the sliced hidden width
    dense_width: int       # D
    head_width: int        # width of the last block's output and the LM head's input
    shortcut_params: int
    layer_params: int      # P_layers after slicing, shortcuts included


def _block_inputs(model: nn.Module, adapter: FamilyAdapter, calibration: torch.Tensor,
                  device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Block 0's input for every calibration window, and for every block the keyword arguments the
    decoder passes it (mask, positions, rotary embeddings; ``calibration.block_calls``), without a
    KV cache."""
    inputs, calls = block_calls(model, adapter, calibration, device)
    kwargs = [{**{name: value for name, value in call.items() if name != "past_key_values"},
               "cache": None, "use_cache": False} for call in calls]
    return inputs, kwargs


def _gram(signals: list[torch.Tensor]) -> torch.Tensor:
    """sum over windows and tokens of x^T x, in float64."""
    width = signals[0].shape[-1]
    gram = torch.zeros(width, width, dtype=torch.float64, device=signals[0].device)
    for x in signals:
        x = x.reshape(-1, width).double()
        gram += x.T @ x
    return gram


def principal_directions(gram: torch.Tensor) -> torch.Tensor:
    """Q: the eigenvectors of ``gram`` as columns, by decreasing eigenvalue (paper Sec. 3.3)."""
    values, vectors = torch.linalg.eigh(gram)
    return vectors[:, torch.argsort(values, descending=True)]


def _times(weight: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor | None = None,
           rows: int = 8192) -> torch.Tensor:
    """diag-scaled ``weight @ basis`` in float64, cast back to ``weight``'s dtype; a few thousand
    rows at a time, so that an embedding or LM head never exists whole in float64."""
    basis = basis.to(weight.device)
    scale = scale.double().to(weight.device) if scale is not None else None
    out = torch.empty(weight.shape[0], basis.shape[1], dtype=weight.dtype, device=weight.device)
    for start in range(0, weight.shape[0], rows):
        block = weight[start:start + rows].double()
        out[start:start + rows] = (block * scale if scale is not None else block) @ basis
    return out


def _reader(linear: nn.Linear, scale: torch.Tensor, basis: torch.Tensor) -> nn.Linear:
    """``linear`` after the norm scale ``scale`` it followed, reading the stream in ``basis``:
    W diag(scale) Q[:, :D']. The bias is untouched."""
    return new_linear(_times(linear.weight, basis, scale), linear.bias, linear)


def _writer(linear: nn.Linear, basis: torch.Tensor) -> nn.Linear:
    """``linear`` writing the stream in ``basis``: Q[:, :D']^T W and Q[:, :D']^T b."""
    basis = basis.to(linear.weight.device)
    bias = basis.T @ linear.bias.double() if linear.bias is not None else None
    return new_linear(basis.T @ linear.weight.double(), bias, linear)


def _shortcut(matrix: torch.Tensor, like: nn.Linear) -> nn.Linear:
    """The residual connection x -> x M as a bias-free Linear (its weight is M^T)."""
    return new_linear(matrix.T, None, like)


def _rotate(signal: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """A calibration signal in the new basis. In float32, not float64: the signal itself carries
    no more precision than that, and these products are most of the method's arithmetic."""
    return (signal.float() @ basis.float()).to(signal.dtype)


def child_name(parent: nn.Module, child: nn.Module) -> str:
    return next(name for name, module in parent.named_children() if module is child)


@dataclass(frozen=True)
class _Widths:
    """The widths one slicing works in."""

    dense: int   # D, the hidden size
    sliced: int  # D', the stream between blocks
    head: int    # the last block's output and the LM head's input (D' or D)
    eps: float   # the RMS norms' epsilon


@torch.no_grad()
def slice_model(model: nn.Module, adapter: FamilyAdapter, calibration: torch.Tensor, width: int,
                device: torch.device, slice_head: bool = False, progress: Progress | None = None) -> SliceReport:
    """Rotate and slice ``model`` in place to hidden width ``width`` (paper Sec. 3, Alg. of Sec. 3.4).

    ``calibration`` is (n, L) token windows. With ``width`` equal to the hidden size nothing is
    sliced and the model computes the dense function (up to rounding): the rotations are exact.
    Every check runs before the first weight changes; an error after that (out of memory) leaves
    the model half sliced, to be discarded."""
    check_supported(model, adapter)
    embed = model.get_input_embeddings()
    dense_width = embed.embedding_dim
    if not 0 < width <= dense_width:
        raise BudgetError(f"sliced width must be in [1, {dense_width}], got {width}")
    model.eval()
    layers = adapter.layers(model)
    final_norm = adapter.final_norm(model)
    head = model.get_output_embeddings()
    widths = _Widths(dense_width, width, width if slice_head else dense_width, float(final_norm.variance_epsilon))
    tied = head.weight is embed.weight

    # the embedding output: the first place the stream is read
    signals, kwargs = _block_inputs(model, adapter, calibration, device)
    q = principal_directions(_gram(signals))
    new_embed = nn.Embedding(embed.num_embeddings, width, padding_idx=embed.padding_idx,
                             device=embed.weight.device, dtype=embed.weight.dtype)
    new_embed.weight.copy_(_times(embed.weight, q[:, :width]))
    model.set_input_embeddings(new_embed)
    signals = [_rotate(x, q[:, :width]) for x in signals]

    placement = placement_of(model)
    for i in range(len(layers)):
        dense_block = layers[i]
        with placement.resident(dense_block) as block_device:
            signals, q = _slice_block(adapter, layers, i, move(signals, block_device), move(kwargs[i], block_device),
                                      q.to(block_device), widths)
            placement.replace(dense_block, layers[i])
        if progress:
            progress("slicegpt blocks", i + 1, len(layers))
    del signals

    _slice_head(model, adapter, head, q[:, :widths.head], widths)
    setattr(model.config, CONFIG_KEY, {"sliced_hidden_size": width, "hidden_size": dense_width,
                                       "head_hidden_size": widths.head, "rms_norm_eps": widths.eps,
                                       "untied_embeddings": tied})
    shortcuts = sum(layer.attn_shortcut.weight.numel() + layer.mlp_shortcut.weight.numel() for layer in layers)
    return SliceReport(width, dense_width, widths.head, shortcuts, adapter.block_counts(model).layer_params)


def _slice_block(adapter: FamilyAdapter, layers: nn.ModuleList, i: int, signals: list[torch.Tensor],
                 kwargs: dict[str, Any], q: torch.Tensor, widths: _Widths) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Block ``i`` rotated and sliced, replaced by a ``SlicedDecoderLayer`` (paper Sec. 3.4): its
    readers read the stream in ``q``, the basis it arrives in; the attention writes in the principal
    directions of the stream after it (``q_mid``), the MLP in those of the block's output
    (``q_out``); each residual connection becomes a shortcut matrix between two bases. Returns the
    calibration signals leaving the block, in ``q_out``, and ``q_out``."""
    width, dense_width, eps = widths.sliced, widths.dense, widths.eps
    layer = layers[i]
    attn, mlp = adapter.attention(layer), adapter.mlp(layer)
    attn_reads, _ = stream_linears(attn, READS_ATTENTION, WRITES_ATTENTION, dense_width, f"block {i}")
    mlp_reads, _ = stream_linears(mlp, READS_MLP, WRITES_MLP, dense_width, f"block {i}")
    scale_attn, scale_mlp = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
    for name in attn_reads:
        setattr(attn, name, _reader(getattr(attn, name), scale_attn, q[:, :width]))
    like = getattr(attn, WRITES_ATTENTION)
    # until the next Q is known, the shortcut maps the sliced stream back to the dense coordinates
    sliced = SlicedDecoderLayer(attn, mlp, RMSNormalize(dense_width, eps), RMSNormalize(dense_width, eps),
                                _shortcut(q[:, :width].T, like), nn.Identity(),
                                getattr(layer, "attention_type", None))
    layers[i] = sliced

    signals = [sliced.attention_half(x, **kwargs) for x in signals]  # (1, L, D), dense coordinates
    q_mid = principal_directions(_gram(signals))
    sliced.attn_shortcut = _shortcut(q[:, :width].T @ q_mid[:, :width], like)
    setattr(attn, WRITES_ATTENTION, _writer(like, q_mid[:, :width]))
    for name in mlp_reads:
        setattr(mlp, name, _reader(getattr(mlp, name), scale_mlp, q_mid[:, :width]))
    sliced.mlp_shortcut = _shortcut(q_mid[:, :width].T, like)
    signals = [_rotate(x, q_mid[:, :width]) for x in signals]

    signals = [sliced.mlp_half(x) for x in signals]
    q_out = principal_directions(_gram(signals))
    d_out = widths.head if i == len(layers) - 1 else width
    sliced.mlp_shortcut = _shortcut(q_mid[:, :width].T @ q_out[:, :d_out], like)
    setattr(mlp, WRITES_MLP, _writer(getattr(mlp, WRITES_MLP), q_out[:, :d_out]))
    return [_rotate(x, q_out[:, :d_out]) for x in signals], q_out


def _slice_head(model: nn.Module, adapter: FamilyAdapter, head: nn.Linear, basis: torch.Tensor,
                widths: _Widths) -> None:
    """The final norm's scale fused into the LM head, which reads the last block's output in
    ``basis``; the norm left weightless; the embedding and the head untied."""
    final_norm, decoder = adapter.final_norm(model), adapter.decoder(model)
    model.set_output_embeddings(_reader(head, final_norm.weight, basis))
    setattr(decoder, child_name(decoder, final_norm), RMSNormalize(widths.dense, widths.eps))
    model.config.tie_word_embeddings = False  # the embedding and the head now differ

def run(context: PruneContext) -> PruneOutcome:
    """The sweep runner: the widest multiple of ``method.round_to`` that meets the sparsity in
    P_layers (shortcut matrices counted), then ``slice_model``."""
    model, adapter, method = context.model, context.adapter, context.method
    check_supported(model, adapter)
    dense = adapter.block_counts(model).layer_params
    width = choose_width(model, adapter, context.sparsity, method.round_to)
    start = time.perf_counter()
    report = slice_model(model, adapter, context.calibration, width, context.device, progress=context.progress)
    return PruneOutcome(
        kept_ffn=None, removed_attention=[], removed_blocks=[],
        timings={"prune": time.perf_counter() - start},
        details={"sliced_width": report.width, "hidden_size_dense": report.dense_width,
                 "hidden_size_sliced": report.width, "head_hidden_size": report.head_width,
                 "slicing": round(1 - report.width / report.dense_width, 6),
                 "shortcut_params": report.shortcut_params, "layer_params": report.layer_params,
                 "layer_params_dense": dense, "round_to": method.round_to},
    )
