"""A pruned model as one GGUF file that llama.cpp runs as it is.

Which llama.cpp architecture the file declares:

- the family's own (``llama``; ``qwen2`` for Qwen2) when every block still has its attention and an
  FFN, all of one width: a dense model, whole blocks removed (ShortGPT, the window method), width
  pruning alone. Every GGUF reader runs it.
- ``deci`` otherwise: llama.cpp's architecture for Llama-layout decoders whose blocks differ. It
  takes per-block head counts (0 and 0: no attention, so no weights and no KV cache) and a
  per-block FFN width.

Three shapes are written in another, exactly equivalent, form:

- Block 0 without attention: llama.cpp reads the head size from block 0's head count, so block 0
  gets a "linear attention" (one output matrix applied to the normed input) whose matrix is zero. It
  adds exactly zero, and costs one hidden x hidden product per token.
- A block that keeps its attention but lost its FFN: deci reads FFN width 0 as an empty block and
  drops the attention's output, so the FFN is written 32 zero neurons wide (adding exactly zero).
- A block with neither is the identity: it is left out and the blocks after it renumbered.

An FFN width that is not a multiple of 32 is padded with zero neurons, again exact. Block-quantised
types (``q8_0``, ``q4_0``, ...) quantise each row in blocks of 32 along its input dimension, so
``ffn_down`` is then quantised like every other matrix; and llama.cpp's fast matrix kernels need
whole blocks even in f16 (a 1058-wide f16 FFN ran prompts at 246 tokens/s on SmolLM2, padded to
1088 at 433). Any other matrix whose rows do not divide into blocks stays f16, as llama.cpp's own
quantiser does. Norm weights and biases are always f32.

llama.cpp's ``llama`` and ``deci`` rotate adjacent pairs of each head with RoPE, Hugging Face the
two halves of the head. The q and k rows are therefore reordered within each head, the same way for
both, which leaves every dot product (and so the model) unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from twossp.contracts import GGUF_TYPES, SLICEGPT_CONFIG_KEY
from twossp.errors import ExportUnsupported
from twossp.registry import Registry

ZERO_FFN_WIDTH = 32  # the width of the zero FFN written for a block whose FFN was removed
FFN_ALIGN = 32       # FFN widths are padded to a multiple of this with zero neurons (see the module docstring)


def gguf_module() -> Any:
    import gguf

    return gguf


# ---------------------------------------------------------------------------- tensor types
@dataclass(frozen=True)
class TensorType:
    ggml: str          # gguf.GGMLQuantizationType member name (the main type, for the K-quant mixes)
    file_type: str     # gguf.LlamaFileType member name
    description: str
    #: quantised by llama.cpp itself (its K-quant mixes, which the gguf package cannot write): twossp
    #: writes f16, then llama.cpp's quantiser makes this type from it
    by_llama_cpp: bool = False

    @property
    def quantization(self) -> Any:
        return gguf_module().GGMLQuantizationType[self.ggml]

    @property
    def block(self) -> int:
        """Elements per quantisation block along a row (1 for float types)."""
        return gguf_module().GGML_QUANT_SIZES[self.quantization][0]


TENSOR_TYPES: Registry[TensorType] = Registry("GGUF tensor type", {
    "f32": TensorType("F32", "ALL_F32", "32-bit floats: the model exactly"),
    "f16": TensorType("F16", "MOSTLY_F16", "16-bit floats"),
    "bf16": TensorType("BF16", "MOSTLY_BF16", "bfloat16"),
    "q8_0": TensorType("Q8_0", "MOSTLY_Q8_0", "8-bit blocks of 32 with one scale"),
    "q5_1": TensorType("Q5_1", "MOSTLY_Q5_1", "5-bit blocks of 32 with a scale and a minimum"),
    "q5_0": TensorType("Q5_0", "MOSTLY_Q5_0", "5-bit blocks of 32 with one scale"),
    "q4_1": TensorType("Q4_1", "MOSTLY_Q4_1", "4-bit blocks of 32 with a scale and a minimum"),
    "q4_0": TensorType("Q4_0", "MOSTLY_Q4_0", "4-bit blocks of 32 with one scale"),
    "q6_k": TensorType("Q6_K", "MOSTLY_Q6_K", "6-bit K-quant", by_llama_cpp=True),
    "q5_k_m": TensorType("Q5_K", "MOSTLY_Q5_K_M", "5-bit K-quant mix, some tensors 6-bit", by_llama_cpp=True),
    "q5_k_s": TensorType("Q5_K", "MOSTLY_Q5_K_S", "5-bit K-quant", by_llama_cpp=True),
    "q4_k_m": TensorType("Q4_K", "MOSTLY_Q4_K_M", "4-bit K-quant mix, some tensors 6-bit", by_llama_cpp=True),
    "q4_k_s": TensorType("Q4_K", "MOSTLY_Q4_K_S", "4-bit K-quant", by_llama_cpp=True),
    "q3_k_m": TensorType("Q3_K", "MOSTLY_Q3_K_M", "3-bit K-quant mix", by_llama_cpp=True),
    "q2_k": TensorType("Q2_K", "MOSTLY_Q2_K", "2-bit K-quant mix", by_llama_cpp=True),
})
assert tuple(TENSOR_TYPES) == GGUF_TYPES


def encode(array: np.ndarray, ggml: Any) -> np.ndarray:
    """``array`` (float32) in the bytes of GGML type ``ggml``."""
    gguf = gguf_module()
    if ggml == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if ggml == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), ggml)


# ---------------------------------------------------------------------------- family layouts
def _get(config: Any, key: str, default: Any = None) -> Any:
    """A config value from a transformers config or a parsed config.json."""
    value = config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)
    return default if value is None else value


def rope_settings(config: Any) -> dict[str, Any]:
    """The RoPE parameters of a config, in transformers 5's form (``rope_parameters``) or 4's
    (``rope_theta`` and ``rope_scaling``)."""
    params = dict(_get(config, "rope_parameters", None) or _get(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", _get(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


class Layout:
    """How one family's decoder block maps onto llama.cpp's tensors. Arrays come out in Hugging
    Face's (out, in) layout, which is the GGUF writer's order."""

    plain_arch = "llama"          # llama.cpp's architecture for a model whose blocks are all whole
    plain_rotates_halves = False  # that architecture applies RoPE to head halves, as Hugging Face does
    biases = False                # q/k/v biases

    def attention(self, adapter: Any, layer: Any) -> dict[str, Any]:
        attn = adapter.attention(layer)
        tensors = {"q": attn.q_proj.weight, "k": attn.k_proj.weight, "v": attn.v_proj.weight,
                   "output": attn.o_proj.weight}
        if self.biases:
            tensors |= {"q.bias": attn.q_proj.bias, "k.bias": attn.k_proj.bias, "v.bias": attn.v_proj.bias}
        return tensors

    def ffn(self, adapter: Any, layer: Any) -> dict[str, Any]:
        mlp = adapter.mlp(layer)
        return {"gate": mlp.gate_proj.weight, "up": mlp.up_proj.weight, "down": mlp.down_proj.weight}

    def refusal(self, config: Any) -> str | None:
        """Why this config cannot be written for llama.cpp, or None."""
        rope = rope_settings(config)
        if rope["rope_type"] not in ("default", "linear", "llama3"):
            return (f"its RoPE scaling ({rope['rope_type']!r}) is not one twossp writes for llama.cpp "
                    "(default, linear and llama3 are)")
        if float(_get(config, "partial_rotary_factor", 1.0)) != 1.0:
            return "it applies RoPE to part of each head only, which llama.cpp's Llama layout does not"
        return None


class Qwen2Layout(Layout):
    plain_arch = "qwen2"
    plain_rotates_halves = True
    biases = True


class Phi3Layout(Layout):
    """Phi-3 is the Llama layout with fused projections: q/k/v and gate/up are split apart."""

    def attention(self, adapter: Any, layer: Any) -> dict[str, Any]:
        attn = adapter.attention(layer)
        q_rows = attn.config.num_attention_heads * attn.head_dim
        kv_rows = attn.config.num_key_value_heads * attn.head_dim
        q, k, v = attn.qkv_proj.weight.split([q_rows, kv_rows, kv_rows])
        return {"q": q, "k": k, "v": v, "output": attn.o_proj.weight}

    def ffn(self, adapter: Any, layer: Any) -> dict[str, Any]:
        mlp = adapter.mlp(layer)
        gate, up = mlp.gate_up_proj.weight.chunk(2)
        return {"gate": gate, "up": up, "down": mlp.down_proj.weight}


#: Hugging Face architecture -> layout; the families llama.cpp cannot run pruned, and why.
LAYOUTS: Registry[Layout] = Registry("architecture exportable to GGUF", {
    "LlamaForCausalLM": Layout(),
    "MistralForCausalLM": Layout(),
    "Qwen2ForCausalLM": Qwen2Layout(),
    "Phi3ForCausalLM": Phi3Layout(),
})
_REFUSED = {
    "Qwen3ForCausalLM": "llama.cpp's architecture for blocks that differ (deci) has no per-head q/k norms, "
                        "which Qwen3's attention needs",
    "Gemma2ForCausalLM": "llama.cpp's Gemma architectures cannot leave a block's attention or FFN out, and its "
                         "architecture for blocks that differ (deci) has no Gemma norms or soft-capping",
    "Gemma3ForCausalLM": "llama.cpp's Gemma architectures cannot leave a block's attention or FFN out, and its "
                         "architecture for blocks that differ (deci) has no Gemma norms or soft-capping",
}
INSTEAD = ("export it with --format safetensors (or `save_to:` without `format: gguf`) and load it with "
           "twossp.load_pruned")


def refusal(config: Any) -> str | None:
    """Why a model of ``config`` (a transformers config or a parsed config.json) cannot be written
    as GGUF, or None. Torch-free: the planner asks it before any run starts."""
    architectures = _get(config, "architectures", None) or ["?"]
    arch = architectures[0]
    if arch in _REFUSED:
        return f"{arch}: {_REFUSED[arch]}"
    if arch not in LAYOUTS:
        return f"{arch}: no llama.cpp layout is known for this architecture (exportable: {', '.join(LAYOUTS)})"
    if _get(config, SLICEGPT_CONFIG_KEY, None):
        return ("a SliceGPT model: its rotated, narrowed residual stream with a shortcut matrix on every residual "
                "connection has no llama.cpp architecture")
    reason = LAYOUTS[arch].refusal(config)
    return f"{arch}: {reason}" if reason else None


def layout_for(config: Any) -> Layout:
    reason = refusal(config)
    if reason:
        raise ExportUnsupported(f"cannot write GGUF: {reason}; {INSTEAD}")
    return LAYOUTS[config.architectures[0]]


# ---------------------------------------------------------------------------- the file
@dataclass(frozen=True)
class GgufFile:
    """What was written, for the model card and the caller."""

    path: Path
    architecture: str                 # the llama.cpp architecture declared
    tensor_type: str                  # the requested type (``TENSOR_TYPES`` key)
    blocks: int                       # blocks in the file
    attention_blocks: int             # of which with attention
    ffn_widths: list[int]             # per block in the file, as written (zero-padded where noted)
    dropped_blocks: list[int]         # blocks of the pruned model left out (no attention and no FFN)
    rewrites: list[str] = field(default_factory=list)        # exact rewrites, in words
    types: dict[str, int] = field(default_factory=dict)      # GGML type -> tensors written in it

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]                 # numpy order: (out, in) for matrices
    make: Callable[[], np.ndarray]         # float32 values, made when written (one tensor in memory at a time)
    ggml: Any = None


def _numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _pair_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's rows from (first half, second half) to interleaved pairs: row 2j takes
    row j, row 2j+1 takes row j + d/2 (weights or a bias)."""
    shape = rows.shape
    d = shape[0] // heads
    return rows.reshape(heads, 2, d // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _zeros(*shape: int) -> Callable[[], np.ndarray]:
    return lambda: np.zeros(shape, np.float32)


def _ones(n: int) -> Callable[[], np.ndarray]:
    return lambda: np.ones(n, np.float32)


def _of(tensor: Any, transform: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> Callable[[], np.ndarray]:
    return lambda: transform(_numpy(tensor))


def _padded_rows(tensor: Any, rows: int) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        a = _numpy(tensor)
        return np.concatenate([a, np.zeros((rows - a.shape[0], a.shape[1]), np.float32)])
    return make


def _padded_columns(tensor: Any, columns: int) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        a = _numpy(tensor)
        return np.concatenate([a, np.zeros((a.shape[0], columns - a.shape[1]), np.float32)], axis=1)
    return make


def llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> np.ndarray:
    """Llama 3's RoPE scaling as the per-frequency divisors llama.cpp reads from ``rope_freqs``:
    1 for short wavelengths, ``factor`` for long ones, a smooth blend between."""
    base, factor = float(rope["rope_theta"]), float(rope["factor"])
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    original = float(rope["original_max_position_embeddings"])
    factors = []
    for i in range(head_dim // 2):
        wavelength = 2 * math.pi * base ** (2 * i / head_dim)
        if wavelength < original / high:
            factors.append(1.0)
        elif wavelength > original / low:
            factors.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, np.float32)


def _blocks(indices: list[int]) -> str:
    """"block 3", "blocks 0-29", "blocks 2, 5, 9": dense block indices in words."""
    if len(indices) == 1:
        return f"block {indices[0]}"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"blocks {indices[0]}-{indices[-1]}"
    return f"blocks {', '.join(map(str, indices))}"


def _add_value(writer: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float64(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        if value:
            writer.add_array(key, [int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v
                                   for v in value])
    else:
        raise TypeError(f"GGUF metadata {key}: {type(value).__name__} is not a GGUF value")


def write_gguf(model: Any, tokenizer: Any, path: str | Path, tensor_type: str = "f16",
               metadata: Mapping[str, Any] | None = None) -> GgufFile:
    """Write ``model`` (as pruned by twossp) and ``tokenizer`` to ``path`` as one GGUF file.

    ``metadata`` adds keys (``general.name``, ``twossp.*``) beside the ones llama.cpp needs.
    Raises ``ExportUnsupported`` for a model llama.cpp cannot run as pruned. The K-quant types are
    made by llama.cpp's quantiser (llama-cpp-python) from an f16 file written first, the FFN padded
    to their blocks of 256."""
    kind = TENSOR_TYPES[tensor_type]
    if not kind.by_llama_cpp:
        return _write(model, tokenizer, Path(path), tensor_type, kind.block, metadata)
    from twossp.serve.engine import quantize

    path = Path(path)
    source = path.with_name(f".{path.name}.f16")
    try:
        written = _write(model, tokenizer, source, "f16", kind.block, metadata)
        quantize(source, path, kind.file_type)
    finally:
        source.unlink(missing_ok=True)
    types = dict(Counter(tensor.tensor_type.name for tensor in gguf_module().GGUFReader(path).tensors))
    made = (f"quantised to {tensor_type} by llama.cpp's own quantiser from an f16 file: it picks each tensor's type "
            "(its mix, and other types for a matrix whose rows 256 does not divide)")
    return dataclasses.replace(written, path=path, tensor_type=tensor_type, types=types,
                               rewrites=[*written.rewrites, made])


def _write(model: Any, tokenizer: Any, path: Path, tensor_type: str, align: int,
           metadata: Mapping[str, Any] | None) -> GgufFile:
    """Write ``model`` as GGUF of ``tensor_type``, its FFNs padded to multiples of ``align`` (and of
    ``FFN_ALIGN``), in phases: the model read (which blocks stay, which architecture), its tensors
    planned (none made yet), their types chosen, the keys and the tokenizer added, then the tensors
    written one at a time to a partial file that is renamed into place once whole."""
    from twossp.serve.vocab import add_tokenizer

    source = _read_source(model)
    kind = TENSOR_TYPES[tensor_type]
    planned = _plan_tensors(source, align)
    types = _choose_types(planned, kind, tensor_type)
    context = _context_length(model.config, planned.rewrites)
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")  # renamed into place once whole
    writer = gguf_module().GGUFWriter(str(partial), source.arch)
    _add_model_keys(writer, source, planned, kind, context)
    for key, value in (metadata or {}).items():
        _add_value(writer, key, value)
    add_tokenizer(writer, tokenizer, source.vocab)
    _write_tensors(writer, planned.tensors, partial, path)
    return GgufFile(path, source.arch, tensor_type, len(source.kept), sum(1 for c in planned.kv_counts if c),
                    planned.ffn_widths, source.dropped, planned.rewrites, types)


@dataclass(frozen=True)
class _Source:
    """The pruned model as the file will hold it: which blocks stay, the architecture declared and
    the shapes llama.cpp reads."""

    model: Any
    layout: Layout
    adapter: Any
    kept: list[tuple[int, Any, bool, bool]]  # (dense block index, layer, has attention, has an FFN), in order
    dropped: list[int]                       # dense blocks with neither: left out of the file
    plain: bool                              # every kept block whole, one FFN width: the family's architecture
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    rope: dict[str, Any]

    @property
    def arch(self) -> str:
        return self.layout.plain_arch if self.plain else "deci"

    @property
    def pair_rows(self) -> bool:
        """Whether q and k rows are reordered for an architecture that rotates adjacent pairs."""
        return not (self.plain and self.layout.plain_rotates_halves)

    @property
    def vocab(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)


def _read_source(model: Any) -> _Source:
    """Sort ``model``'s blocks into kept and dropped and pick the architecture; raises
    ``ExportUnsupported`` for a family llama.cpp cannot run pruned or a model with no block left."""
    from twossp.families import adapter_for

    config = model.config
    layout = layout_for(config)
    adapter = adapter_for(config)
    present = [(i, layer, adapter.is_attention_present(layer), adapter.is_ffn_present(layer))
               for i, layer in enumerate(adapter.layers(model))]
    dropped = [i for i, _, attn, ffn in present if not attn and not ffn]
    kept = [p for p in present if p[2] or p[3]]
    if not kept:
        raise ExportUnsupported("cannot write GGUF: every block lost both its attention and its FFN")
    widths = {adapter.ffn_width(layer) for _, layer, _, ffn in kept if ffn}
    plain = all(attn and ffn for _, _, attn, ffn in kept) and len(widths) == 1
    hidden = model.get_input_embeddings().embedding_dim
    heads = int(config.num_attention_heads)
    return _Source(model, layout, adapter, kept, dropped, plain, hidden, heads, int(config.num_key_value_heads),
                   int(_get(config, "head_dim", 0) or hidden // heads), rope_settings(config))


@dataclass
class _Planned:
    """The tensors of the file in order (none made yet), the per-block keys that describe them, and
    the exact rewrites they took, in words."""

    tensors: list[_Tensor] = field(default_factory=list)
    head_counts: list[int] = field(default_factory=list)
    kv_counts: list[int] = field(default_factory=list)
    ffn_widths: list[int] = field(default_factory=list)     # as written (zero-padded where noted)
    rewrites: list[str] = field(default_factory=list)
    paddings: dict[tuple[int, int, int], list[int]] = field(default_factory=dict)  # (width, padded, whole) -> blocks
    zero_ffn: list[int] = field(default_factory=list)      # dense blocks written with a zero FFN


def _plan_tensors(source: _Source, align: int) -> _Planned:
    """Every tensor of the file, in file order: the embedding (and Llama 3's RoPE factors), each kept
    block's attention and FFN, the final norm and an untied head."""
    planned = _Planned()
    embedding = source.model.get_input_embeddings().weight
    planned.tensors.append(_Tensor("token_embd.weight", tuple(embedding.shape), _of(embedding)))
    if source.rope["rope_type"] == "llama3":
        factors = llama3_rope_factors(source.rope, source.head_dim)
        planned.tensors.append(_Tensor("rope_freqs.weight", factors.shape, lambda: factors))
    for n, (i, layer, attn, ffn) in enumerate(source.kept):
        _plan_attention(source, planned, n, i, layer, attn)
        if ffn:
            _plan_ffn(source, planned, n, i, layer, align)
        else:
            _plan_zero_ffn(source, planned, n, i)
    planned.rewrites += _block_rewrites(planned, source.dropped)
    planned.tensors.append(_Tensor("output_norm.weight", (source.hidden,),
                                   _of(source.adapter.final_norm(source.model).weight)))
    head = source.model.get_output_embeddings()
    if head.weight is not embedding:  # tied embeddings: llama.cpp reuses token_embd
        planned.tensors.append(_Tensor("output.weight", tuple(head.weight.shape), _of(head.weight)))
    return planned


def _plan_attention(source: _Source, planned: _Planned, n: int, i: int, layer: Any, present: bool) -> None:
    """Block ``n`` of the file (dense block ``i``): its attention, block 0's zero linear attention
    where it has none (llama.cpp reads the head size from block 0), or no attention at all."""
    hidden = source.hidden
    if present:
        planned.head_counts.append(source.heads)
        planned.kv_counts.append(source.kv_heads)
        planned.tensors += _attention_tensors(source, f"blk.{n}", layer)
    elif n == 0:
        planned.head_counts.append(source.heads)
        planned.kv_counts.append(0)
        planned.tensors += [_Tensor("blk.0.attn_norm.weight", (hidden,), _ones(hidden)),
                            _Tensor("blk.0.attn_output.weight", (hidden, hidden), _zeros(hidden, hidden))]
        planned.rewrites.append(f"block {i} has no attention; llama.cpp reads the head size from the first block, so "
                                "it is written as a linear attention whose output matrix is zero (it adds exactly 0)")
    else:
        planned.head_counts.append(0)
        planned.kv_counts.append(0)


def _attention_tensors(source: _Source, prefix: str, layer: Any) -> list[_Tensor]:
    """A kept attention's norm, q, k, v and output (and q/k/v biases), the q and k rows paired for
    an architecture that rotates adjacent pairs (see the module docstring)."""
    parts = source.layout.attention(source.adapter, layer)
    norm = getattr(layer, source.adapter.attention_norm_attrs[0]).weight
    tensors = [_Tensor(f"{prefix}.attn_norm.weight", (source.hidden,), _of(norm))]
    for part, name in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("output", "attn_output")):
        n_heads = source.heads if part == "q" else source.kv_heads
        transform = (lambda a, h=n_heads: _pair_rows(a, h)) if source.pair_rows and part in ("q", "k") else None
        for suffix, tensor in (("weight", parts[part]), ("bias", parts.get(f"{part}.bias"))):
            if tensor is not None:
                tensors.append(_Tensor(f"{prefix}.{name}.{suffix}", tuple(tensor.shape),
                                       _of(tensor, transform) if transform else _of(tensor)))
    return tensors


def _plan_ffn(source: _Source, planned: _Planned, n: int, i: int, layer: Any, align: int) -> None:
    """Block ``n``'s FFN (dense block ``i``), padded with zero neurons to whole blocks of
    ``max(align, FFN_ALIGN)``."""
    parts = source.layout.ffn(source.adapter, layer)
    width = int(parts["down"].shape[1])
    whole = max(align, FFN_ALIGN)
    padded = -(-width // whole) * whole
    if padded != width:
        planned.paddings.setdefault((width, padded, whole), []).append(i)
    hidden, prefix = source.hidden, f"blk.{n}"
    norm = getattr(layer, source.adapter.ffn_norm_attrs[0]).weight
    planned.tensors += [
        _Tensor(f"{prefix}.ffn_norm.weight", (hidden,), _of(norm)),
        _Tensor(f"{prefix}.ffn_gate.weight", (padded, hidden), _padded_rows(parts["gate"], padded)),
        _Tensor(f"{prefix}.ffn_up.weight", (padded, hidden), _padded_rows(parts["up"], padded)),
        _Tensor(f"{prefix}.ffn_down.weight", (hidden, padded), _padded_columns(parts["down"], padded)),
    ]
    planned.ffn_widths.append(padded)


def _plan_zero_ffn(source: _Source, planned: _Planned, n: int, i: int) -> None:
    """Block ``n`` (dense block ``i``) kept its attention but lost its FFN: an FFN of
    ``ZERO_FFN_WIDTH`` zero neurons, since llama.cpp drops the attention of a block with FFN width 0."""
    hidden, prefix, padded = source.hidden, f"blk.{n}", ZERO_FFN_WIDTH
    planned.zero_ffn.append(i)
    planned.tensors += [_Tensor(f"{prefix}.ffn_norm.weight", (hidden,), _ones(hidden)),
                        _Tensor(f"{prefix}.ffn_gate.weight", (padded, hidden), _zeros(padded, hidden)),
                        _Tensor(f"{prefix}.ffn_up.weight", (padded, hidden), _zeros(padded, hidden)),
                        _Tensor(f"{prefix}.ffn_down.weight", (hidden, padded), _zeros(hidden, padded))]
    planned.ffn_widths.append(padded)


def _block_rewrites(planned: _Planned, dropped: list[int]) -> list[str]:
    """The block-level rewrites in words: FFNs padded, zero FFNs, blocks left out."""
    rewrites = [f"{_blocks(blocks)}: FFN width {width} padded to {padded} with zero neurons, whole blocks of "
                f"{whole} for llama.cpp's kernels (exact)"
                for (width, padded, whole), blocks in planned.paddings.items()]
    if planned.zero_ffn:
        rewrites.append(f"{_blocks(planned.zero_ffn)} kept attention but no FFN: written with a zero FFN "
                        f"{ZERO_FFN_WIDTH} wide (it adds exactly 0), since llama.cpp would drop the attention of a "
                        "block with FFN width 0")
    if dropped:
        rewrites.append(f"{_blocks(dropped)} {'has' if len(dropped) == 1 else 'have'} neither attention nor FFN: "
                        "left out, the blocks after them renumbered")
    return rewrites


def _choose_types(planned: _Planned, kind: TensorType, tensor_type: str) -> dict[str, int]:
    """Each tensor's GGML type: f32 for norms and biases, f16 for a matrix whose rows do not divide
    into ``kind``'s blocks (noted in the rewrites), ``kind`` otherwise; returns type -> tensor count."""
    gguf = gguf_module()
    for t in planned.tensors:
        if len(t.shape) == 1:
            t.ggml = gguf.GGMLQuantizationType.F32
        elif t.shape[-1] % kind.block:
            t.ggml = gguf.GGMLQuantizationType.F16
            planned.rewrites.append(f"{t.name} stays f16: its rows ({t.shape[-1]}) do not divide into {tensor_type} "
                                    "blocks")
        else:
            t.ggml = kind.quantization
    return dict(Counter(t.ggml.name for t in planned.tensors))


def _context_length(config: Any, rewrites: list[str]) -> int:
    """The context length declared: the model's, or its sliding window where that is shorter (noted
    in ``rewrites``), since llama.cpp's Llama layout attends to the whole context."""
    context = int(_get(config, "max_position_embeddings", 2048))
    window = _get(config, "sliding_window", None)
    if window and int(window) < context and _get(config, "use_sliding_window", True):
        context = int(window)
        rewrites.append(f"context length set to the sliding window ({context} tokens): llama.cpp's Llama layout "
                        "attends to the whole context, which equals the window up to that length")
    return context


def _add_model_keys(writer: Any, source: _Source, planned: _Planned, kind: TensorType, context: int) -> None:
    """The keys llama.cpp needs to run the file, in the writer's order: a plain architecture takes one
    head count and FFN width, ``deci`` one per block."""
    gguf = gguf_module()
    plain, rope, head_dim = source.plain, source.rope, source.head_dim
    writer.add_file_type(int(gguf.LlamaFileType[kind.file_type]))
    if kind.block > 1:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(context)
    writer.add_embedding_length(source.hidden)
    writer.add_block_count(len(source.kept))
    writer.add_feed_forward_length(planned.ffn_widths[0] if plain else planned.ffn_widths)
    writer.add_head_count(source.heads if plain else planned.head_counts)
    writer.add_head_count_kv(source.kv_heads if plain else planned.kv_counts)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(source.model.config.rms_norm_eps))
    writer.add_vocab_size(source.vocab)


def _write_tensors(writer: Any, tensors: list[_Tensor], partial: Path, path: Path) -> None:
    """Write the header, the keys and ``tensors`` to ``partial``, each tensor made and encoded when
    its turn comes (one in memory at a time), then rename ``partial`` to ``path``; a failure leaves
    no partial file behind."""
    gguf = gguf_module()
    for t in tensors:
        nbytes = int(np.prod(gguf.quants.quant_shape_to_byte_shape(t.shape, t.ggml)))
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes, raw_dtype=t.ggml)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            writer.write_tensor_data(encode(t.make(), t.ggml))
        writer.close()
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
