"""Will vLLM, SGLang and llama.cpp's converter load an exported Hugging Face folder as it stands?

An offline check of a folder ``serve.hf`` wrote (or anyone's): it reads ``config.json`` and the
safetensors headers only (the 8-byte little-endian header length, then the JSON header; never a
weight) and applies the loading rules of the engines, each as a named rule with the engines it
concerns and why it matters. The engines fail on these only at load time, on a GPU host, often
silently (a dropped bias, an uninitialised weight): this finds them on any machine, in a second.

- A Nemotron-NAS ("DeciLM") folder gets the schema's rules (``NAS_RULES``): the config's keys and
  types as the engines read them, one ``block_configs`` entry per block, the FFN widths the engines
  derive from ``ffn_mult``, and exactly the tensors those entries imply.
- A stock folder (``plain`` or ``stock`` layout) gets ``STOCK_RULES``: exactly the tensors the
  config implies, derived for the Llama-layout families (``LLAMA_LAYOUT``); for the others the
  shapes are not derived (an informational finding).

Torch-free by design (``twossp serve check`` runs where no model can), and independent of the
writer: the engines' rules are stated here again, not imported from ``serve.hf``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from twossp.errors import CheckpointError

VLLM, SGLANG, LLAMA_CPP, TRANSFORMERS = "vLLM", "SGLang", "llama.cpp", "transformers"
SERVING = (VLLM, SGLANG)
ALL_ENGINES = (VLLM, SGLANG, LLAMA_CPP)

NAS_ARCHITECTURE, NAS_MODEL_TYPE = "DeciLMForCausalLM", "nemotron-nas"
#: the engines round every FFN width the schema derives up to a multiple of this
FFN_MULTIPLE = 256
#: findings of one kind shown in a detail before "(+N more)"
SHOWN = 3
ERROR, WARNING, INFO = "error", "warning", "info"


# ---------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class Finding:
    """One rule applied to a folder. ``level``: ``error`` (an engine refuses the folder or serves it
    wrongly), ``warning`` (it loads, but not as one would want), ``info`` (nothing to check)."""

    rule: str
    engines: tuple[str, ...]
    ok: bool
    detail: str
    level: str = ERROR

    @property
    def status(self) -> str:
        if self.level == INFO:
            return "info"
        if self.ok:
            return "ok"
        return "FAIL" if self.level == ERROR else "warn"


@dataclass
class Report:
    """Every rule's finding for one folder; ``schema`` is ``nemotron-nas`` or ``stock``."""

    folder: Path
    schema: str
    architecture: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No error (warnings and information do not count)."""
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok and f.level == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok and f.level == WARNING]

    def finding(self, rule: str) -> Finding:
        """The finding of ``rule`` (a KeyError names the rules there are)."""
        for found in self.findings:
            if found.rule == rule:
                return found
        raise KeyError(f"no rule {rule!r} in this report (rules: {', '.join(f.rule for f in self.findings)})")

    def lines(self) -> list[str]:
        """A plain-text table (rule, engines, status, detail), a title above and a summary below."""
        rows = [("rule", "engines", "status", "detail")]
        rows += [(f.rule, ", ".join(f.engines), f.status, f.detail) for f in self.findings]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]

        def line(row: tuple[str, ...]) -> str:
            return "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3]

        summary = (f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)" if self.errors or self.warnings
                   else "every rule passes")
        return [f"{self.folder} ({self.schema}, {self.architecture}): {summary}", line(rows[0]),
                "  ".join("-" * w for w in widths) + "  " + "-" * 6, *map(line, rows[1:])]

    def render(self) -> str:
        return "\n".join(self.lines())


# ---------------------------------------------------------------------------- reading the folder
@dataclass(frozen=True)
class Tensor:
    """A tensor as a safetensors header describes it."""

    shape: tuple[int, ...]
    dtype: str
    file: str


@dataclass
class Folder:
    """What the rules read: the parsed config.json and every tensor's header entry (``tensors`` is
    None where the weights could not be read: ``weight_problems`` says why)."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, Tensor] | None
    weight_problems: list[str]
    weight_summary: str

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()


def check_folder(path: str | Path) -> Report:
    """Apply every rule that concerns the folder's schema; raises ``CheckpointError`` only where
    ``path`` is not a folder (a folder without a readable config.json is a failing finding)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return Report(path, "unknown", "?", [Finding(
            "config", (*ALL_ENGINES, TRANSFORMERS), False,
            f"config.json cannot be read ({error}) (every engine starts from it)")])
    if not isinstance(config, dict):
        return Report(path, "unknown", "?", [Finding(
            "config", (*ALL_ENGINES, TRANSFORMERS), False, "config.json is not a JSON object")])
    folder = Folder(path, config, *read_weights(path))
    nas = is_nas(config)
    rules = NAS_RULES if nas else STOCK_RULES
    architecture = ", ".join(map(str, config.get("architectures") or ["?"]))
    return Report(path, NAS_MODEL_TYPE if nas else "stock", architecture, [rule.apply(folder) for rule in rules])


def is_nas(config: dict[str, Any]) -> bool:
    """The folder claims the Nemotron-NAS schema in any of the ways an engine would take it."""
    return (config.get("model_type") == NAS_MODEL_TYPE or NAS_ARCHITECTURE in (config.get("architectures") or [])
            or "block_configs" in config)


def read_weights(path: Path) -> tuple[dict[str, Tensor] | None, list[str], str]:
    """Every tensor's header entry, what is wrong with the files (rule ``weight-files``) and a
    summary. With an index, the files it names (as transformers and vLLM read them); without,
    ``model.safetensors``."""
    index_path = path / "model.safetensors.index.json"
    problems: list[str] = []
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return None, [f"model.safetensors.index.json has no readable weight_map ({error})"], ""
        files = sorted(set(weight_map.values()))
    elif (path / "model.safetensors").is_file():
        weight_map, files = None, ["model.safetensors"]
    else:
        return None, ["no model.safetensors nor model.safetensors.index.json"], ""
    tensors: dict[str, Tensor] = {}
    seen: Counter[str] = Counter()
    for file in files:
        if not (path / file).is_file():
            problems.append(f"the index names {file}, which is not in the folder")
            continue
        try:
            header = safetensors_header(path / file)
        except (OSError, ValueError) as error:
            problems.append(f"{file}: {error}")
            continue
        for name, entry in header.items():
            seen[name] += 1
            tensors[name] = Tensor(tuple(entry["shape"]), str(entry["dtype"]), file)
    problems += [f"{name} is in {count} files" for name, count in seen.items() if count > 1]
    if weight_map is not None:
        problems += [f"the index puts {name} in {file}, whose header lacks it" for name, file in weight_map.items()
                     if (path / file).is_file() and (name not in tensors or tensors[name].file != file)]
        problems += [f"{name} (in {tensors[name].file}) is not in the index" for name in tensors
                     if name not in weight_map]
    summary = f"{len(tensors)} tensors in {len(files)} file{'s' if len(files) > 1 else ''}"
    return tensors, problems, summary


def safetensors_header(file: Path) -> dict[str, dict[str, Any]]:
    """The tensor entries of a safetensors file's header (``__metadata__`` left out), checked to lie
    within the file; reads the header only."""
    size = file.stat().st_size
    with file.open("rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise ValueError("shorter than a safetensors header")
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            raise ValueError(f"header length {length} exceeds the file ({size} bytes)")
        header = json.loads(stream.read(length))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    header.pop("__metadata__", None)
    data = size - 8 - length
    for name, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise ValueError(f"header entry {name!r} lacks dtype, shape or data_offsets")
        if entry["data_offsets"][1] > data:
            raise ValueError(f"{name} ends past the end of the file (truncated)")
    return header


# ---------------------------------------------------------------------------- rules
@dataclass
class Verdict:
    """What a rule found: ``problems`` (none: it passes), ``summary`` (what was seen, when it
    passes), ``info`` (nothing could be checked: ``summary`` says why)."""

    problems: list[str] = field(default_factory=list)
    summary: str = ""
    info: bool = False


@dataclass(frozen=True)
class Rule:
    """A named loading rule, the engines it concerns, why they care, and its check."""

    name: str
    engines: tuple[str, ...]
    why: str
    check: Callable[[Folder], Verdict]
    level: str = ERROR

    def apply(self, folder: Folder) -> Finding:
        verdict = self.check(folder)
        if verdict.info:
            return Finding(self.name, self.engines, True, verdict.summary, INFO)
        if not verdict.problems:
            return Finding(self.name, self.engines, True, f"{verdict.summary} ({self.why})", self.level)
        return Finding(self.name, self.engines, False, f"{shown(verdict.problems)} ({self.why})", self.level)


def shown(items: list[str], limit: int = SHOWN) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def _weight_files(folder: Folder) -> Verdict:
    return Verdict(folder.weight_problems, folder.weight_summary)


def _dtype(folder: Folder) -> Verdict:
    config = folder.config
    found = {t.dtype for t in (folder.tensors or {}).values()}
    tensors = f"the tensors are {', '.join(sorted(found)) or 'unread'}"
    named = config.get("dtype") or config.get("torch_dtype")
    if not named:
        return Verdict([f"neither dtype nor torch_dtype is set; {tensors}"])
    return Verdict(summary=f"dtype {named}; {tensors}")


def _tokenizer(folder: Folder) -> Verdict:
    problems = []
    if not (folder.has("tokenizer.json") or folder.has("tokenizer.model")):
        problems.append("no tokenizer.json nor tokenizer.model")
    try:
        named = json.loads((folder.path / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        named = None
    if not named:
        problems.append("no tokenizer_config.json naming tokenizer_class")
    return Verdict(problems, f"tokenizer_class {named}")


# ---------------------------------------------------------------------------- Nemotron-NAS rules
def _nas_architecture(folder: Folder) -> Verdict:
    config, problems = folder.config, []
    if config.get("model_type") != NAS_MODEL_TYPE:
        problems.append(f"model_type is {config.get('model_type')!r}, not {NAS_MODEL_TYPE!r}")
    if config.get("architectures") != [NAS_ARCHITECTURE]:
        problems.append(f"architectures is {config.get('architectures')!r}, not [{NAS_ARCHITECTURE!r}]")
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or "AutoConfig" not in auto_map:
        problems.append("auto_map.AutoConfig is missing")
        auto_map = auto_map if isinstance(auto_map, dict) else {}
    for key, reference in auto_map.items():
        module = str(reference).split("--")[-1].rpartition(".")[0]
        if not folder.has(module.replace(".", "/") + ".py"):
            problems.append(f"auto_map.{key} names {module}.py, which is not in the folder")
    files = sorted({str(r).split("--")[-1].rpartition(".")[0] + ".py" for r in auto_map.values()})
    return Verdict(problems, f"{NAS_ARCHITECTURE}, config from {', '.join(files)}")


def _block_count(folder: Folder) -> Verdict:
    blocks, layers = folder.config.get("block_configs"), folder.config.get("num_hidden_layers")
    if not isinstance(blocks, list):
        return Verdict(["block_configs is missing or not a list"])
    if len(blocks) != layers:
        return Verdict([f"{len(blocks)} block_configs entries for num_hidden_layers {layers}"])
    return Verdict(summary=f"{layers} entries for {layers} layers")


NAS_FIELDS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "rms_norm_eps",
              "max_position_embeddings", "tie_word_embeddings", "hidden_act", "rope_theta")


def _config_fields(folder: Folder) -> Verdict:
    config = folder.config
    problems = [f"{key} is missing" if key not in config else f"{key} is null"
                for key in NAS_FIELDS if config.get(key) is None]
    if config.get("hidden_act") not in (None, "silu"):
        problems.append(f"hidden_act is {config['hidden_act']!r}, not 'silu'")
    if config.get("tie_word_embeddings") not in (None, True, False):
        problems.append(f"tie_word_embeddings is {config['tie_word_embeddings']!r}, not a boolean")
    return Verdict(problems, "all present")


def _head_dim(folder: Folder) -> Verdict:
    config = folder.config
    head_dim, derived = config.get("head_dim"), _derived_head_dim(config)
    if head_dim is None:
        return Verdict(summary="absent")
    if head_dim != derived:
        return Verdict([f"head_dim {head_dim} differs from hidden_size // num_attention_heads = {derived}"])
    return Verdict(summary=f"{head_dim} = hidden_size // num_attention_heads")


def _bias(folder: Folder) -> Verdict:
    config = folder.config
    problems = [f"{key} is {config[key]!r}" for key in ("attention_bias", "mlp_bias", "bias", "qkv_bias")
                if config.get(key) not in (None, False)]
    biases = sorted(name for name in folder.tensors or {} if name.endswith(".bias"))
    if biases:
        problems.append(f"{len(biases)} bias tensor(s): {shown(biases)}")
    return Verdict(problems, "no bias")


ATTENTION_KEYS = ("no_op", "replace_with_linear", "n_heads_in_group")
FFN_KEYS = ("no_op", "replace_with_linear", "ffn_mult")


def _block_keys(folder: Folder) -> Verdict:
    problems = []
    for i, block in _entries(folder.config):
        if not isinstance(block, dict):
            problems.append(f"block {i} is not an object")
            continue
        for part, keys in (("attention", ATTENTION_KEYS), ("ffn", FFN_KEYS)):
            section = block.get(part)
            if not isinstance(section, dict):
                problems.append(f"block {i} has no {part} object")
                continue
            missing = [key for key in keys if key not in section]
            if missing:
                problems.append(f"block {i} {part} lacks {', '.join(missing)}")
            problems += [f"block {i} {part}.{key} is {section[key]!r}, not a boolean"
                         for key in ("no_op", "replace_with_linear") if key in section
                         and not isinstance(section[key], bool)]
    return Verdict(problems, "every block has them")


def _linear_replacement(folder: Folder) -> Verdict:
    problems = [f"block {i} {part}.replace_with_linear is true" for i, part, section in _sections(folder.config)
                if section.get("replace_with_linear")]
    return Verdict(problems, "none")


def _attention_groups(folder: Folder) -> Verdict:
    heads, problems, groups = folder.config.get("num_attention_heads"), [], set()
    for i, part, section in _sections(folder.config):
        if part != "attention":
            continue
        group = section.get("n_heads_in_group")
        if section.get("no_op"):
            if group is not None:
                problems.append(f"block {i}: a no-op attention with n_heads_in_group {group!r}, not null")
        elif type(group) is not int:
            problems.append(f"block {i}: n_heads_in_group {group!r} is not an integer")
        elif group <= 0 or not isinstance(heads, int) or heads % group:
            problems.append(f"block {i}: n_heads_in_group {group} does not divide num_attention_heads {heads}")
        else:
            groups.add(group)
    if len(groups) > 1:
        problems.append(f"the attentions' n_heads_in_group differ: {sorted(groups)}")
    return Verdict(problems, f"n_heads_in_group {', '.join(map(str, sorted(groups))) or 'none'} everywhere")


def _ffn_widths(folder: Folder) -> Verdict:
    hidden, problems, widths = folder.config.get("hidden_size"), [], []
    for i, part, section in _sections(folder.config):
        if part != "ffn":
            continue
        mult, given = section.get("ffn_mult"), section.get("intermediate_size")
        if section.get("no_op"):
            if mult is not None:
                problems.append(f"block {i}: a no-op FFN with ffn_mult {mult!r}, not null")
            continue
        if type(mult) is not float:
            problems.append(f"block {i}: ffn_mult {mult!r} is not a float (write it with a decimal point)")
            continue
        if not isinstance(hidden, int):
            problems.append("hidden_size is not an integer")
            break
        width = schema_width(mult, hidden)
        widths.append(width)
        if width < FFN_MULTIPLE:
            problems.append(f"block {i}: ffn_mult {mult} gives width {width}, under {FFN_MULTIPLE}")
        if given is not None and given % FFN_MULTIPLE:
            problems.append(f"block {i}: intermediate_size {given} is not a multiple of {FFN_MULTIPLE}")
        if given is not None and given != width:
            problems.append(f"block {i}: intermediate_size {given} differs from the width {width} the engines "
                            f"derive from ffn_mult {mult}")
    return Verdict(problems, f"widths {', '.join(map(str, sorted(set(widths)))) or 'none'}")


def _first_attention(folder: Folder) -> Verdict:
    entries = _entries(folder.config)
    if not entries:
        return Verdict(["no block 0 to read"])
    attention = entries[0][1].get("attention") if isinstance(entries[0][1], dict) else None
    if not isinstance(attention, dict) or attention.get("no_op"):
        return Verdict(["block 0's attention is a no-op"])
    return Verdict(summary="block 0 has an attention")


def _attention_without_ffn(folder: Folder) -> Verdict:
    blocks = parse_blocks(folder.config)
    if blocks is None:
        return Verdict(info=True, summary="not checked: block_configs cannot be read (see block-keys)")
    return Verdict([f"block {i} has an attention and a no-op FFN" for i, b in enumerate(blocks)
                    if b.attention and b.width is None], "every block with attention has an FFN")


def _nas_tensors(folder: Folder) -> Verdict:
    blocks = parse_blocks(folder.config)
    if blocks is None or folder.tensors is None:
        what = "block_configs" if blocks is None else "the weights"
        return Verdict([f"not checked: {what} cannot be read (see the other rules)"])
    expected = outer_tensors(folder.config)
    if expected is None:
        return Verdict(["not checked: hidden_size, num_attention_heads or vocab_size is missing"])
    hidden, heads, head_dim = folder.config["hidden_size"], folder.config["num_attention_heads"], \
        _derived_head_dim(folder.config)
    for i, block in enumerate(blocks):
        expected |= llama_block(f"model.layers.{i}", hidden, heads if block.attention else 0,
                                block.kv_heads or 0, head_dim, block.width or 0)
    return _compare(expected, folder.tensors, _ignored(folder.config))


def _entries(config: dict[str, Any]) -> list[tuple[int, Any]]:
    blocks = config.get("block_configs")
    return list(enumerate(blocks)) if isinstance(blocks, list) else []


def _sections(config: dict[str, Any]) -> list[tuple[int, str, dict[str, Any]]]:
    """(block, "attention" or "ffn", its object) for every well-formed section."""
    return [(i, part, block[part]) for i, block in _entries(config) if isinstance(block, dict)
            for part in ("attention", "ffn") if isinstance(block.get(part), dict)]


@dataclass(frozen=True)
class Block:
    """One block as the engines build it: an attention with ``kv_heads`` or none, an FFN of
    ``width`` neurons (the engines' width, from ``ffn_mult``) or none."""

    attention: bool
    kv_heads: int | None
    width: int | None


def parse_blocks(config: dict[str, Any]) -> list[Block] | None:
    """The blocks of a Nemotron-NAS config, or None where an entry cannot be read as the engines
    would (the other rules say why)."""
    heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
    entries = _entries(config)
    if not entries or not isinstance(heads, int) or not isinstance(hidden, int):
        return None
    blocks = []
    for _, block in entries:
        try:
            attention, ffn = block["attention"], block["ffn"]
            active = not attention["no_op"]
            group = attention["n_heads_in_group"] if active else None
            mult = None if ffn["no_op"] else ffn["ffn_mult"]
            width = schema_width(float(mult), hidden) if mult is not None else None
            blocks.append(Block(active, heads // int(group) if active else None, width))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
    return blocks


def schema_width(ffn_mult: float, hidden: int) -> int:
    """The FFN width vLLM, SGLang and llama.cpp give ``ffn_mult``: ``int(2 * ffn_mult * hidden / 3)``
    rounded up to a multiple of ``FFN_MULTIPLE``."""
    width = int(2 * ffn_mult * hidden / 3)
    return -(-width // FFN_MULTIPLE) * FFN_MULTIPLE


#: the rules of every exported folder, whatever its schema: its weight files, dtype and tokenizer
FOLDER_RULES: tuple[Rule, ...] = (
    Rule("weight-files", (*SERVING, TRANSFORMERS), "the loaders read the files the index names, each tensor "
         "once", _weight_files),
    Rule("dtype", SERVING, "without it vLLM and SGLang guess from the tensors or take float32, served as "
         "float16", _dtype, WARNING),
    Rule("tokenizer", (*ALL_ENGINES, TRANSFORMERS), "a folder may be saved without one, but every engine "
         "needs one to serve it", _tokenizer, WARNING),
)


NAS_RULES: tuple[Rule, ...] = (
    Rule("architecture", (*ALL_ENGINES, TRANSFORMERS), "the engines pick their DeciLM model by the architecture; "
         "with trust_remote_code they build the config from auto_map's files", _nas_architecture),
    Rule("block-count", ALL_ENGINES, "the engines read block_configs[i] for every layer i; llama.cpp's converter "
         "asserts the counts agree", _block_count),
    Rule("config-fields", ALL_ENGINES, "read as top-level keys; SGLang takes rope_theta there, and the DeciLM "
         "blocks are SiLU-gated", _config_fields),
    Rule("head-dim", (LLAMA_CPP,), "llama.cpp's converter writes the key length as hidden_size // "
         "num_attention_heads, the RoPE size as head_dim", _head_dim),
    Rule("bias", SERVING, "the DeciLM blocks take biases from the config flags and skip .bias weights they "
         "have no parameter for, silently", _bias),
    Rule("block-keys", (LLAMA_CPP, VLLM), "llama.cpp's converter indexes the raw dicts, vLLM reads the keys "
         "as attributes: a missing one raises", _block_keys),
    Rule("linear-replacement", SERVING, "vLLM and SGLang have no linear stand-in for a block part; it would "
         "be built as a full one", _linear_replacement),
    Rule("attention-groups", ALL_ENGINES, "KV heads = num_attention_heads // n_heads_in_group, an integer; "
         "llama.cpp keys an attention-free block on a null group; SGLang refuses GQA that varies", _attention_groups),
    Rule("ffn-widths", ALL_ENGINES, "the engines derive each width from ffn_mult (llama.cpp's converter asserts "
         "a float), transformers here from intermediate_size: they must agree", _ffn_widths),
    Rule("first-attention", ALL_ENGINES, "vLLM and SGLang start the residual stream in block 0's attention "
         "norm; llama.cpp reads the head layout there", _first_attention),
    Rule("attention-without-ffn", (LLAMA_CPP,), "llama.cpp's DeciLM graph drops an attention's output where "
         "its block has no FFN", _attention_without_ffn),
    Rule("tensors", (*SERVING, TRANSFORMERS), "vLLM: a weight with no parameter raises KeyError, a parameter "
         "with no weight fails the load; SGLang leaves it uninitialised", _nas_tensors),
    *FOLDER_RULES,
)


# ---------------------------------------------------------------------------- stock rules
@dataclass(frozen=True)
class Biases:
    """Which projections of a Llama-layout block carry a bias."""

    qkv: bool = False
    o: bool = False
    mlp: bool = False


def _llama_biases(config: dict[str, Any]) -> Biases:
    attention = bool(config.get("attention_bias"))
    return Biases(qkv=attention, o=attention, mlp=bool(config.get("mlp_bias")))


#: architectures whose blocks are Llama blocks (q/k/v/o, gate/up/down, two RMS norms), with where
#: their biases are; the others (Gemma's four norms, Qwen3's q/k norms, Phi-3's fused projections)
#: are not derived here
LLAMA_LAYOUT: dict[str, Callable[[dict[str, Any]], Biases]] = {
    "LlamaForCausalLM": _llama_biases,
    "MistralForCausalLM": lambda config: Biases(),
    "Qwen2ForCausalLM": lambda config: Biases(qkv=True),
}


def _stock_tensors(folder: Folder) -> Verdict:
    config = folder.config
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in LLAMA_LAYOUT:
        return Verdict(info=True, summary=f"{architecture}: shapes not derived (derived for "
                                          f"{', '.join(LLAMA_LAYOUT)}); the family's loader checks them")
    if folder.tensors is None:
        return Verdict(["not checked: the weights cannot be read (see weight-files)"])
    expected = outer_tensors(config)
    keys = ("num_hidden_layers", "intermediate_size")
    if expected is None or not all(isinstance(config.get(key), int) for key in keys):
        return Verdict(["not checked: the config lacks a size (hidden_size, num_attention_heads, vocab_size, "
                        "num_hidden_layers or intermediate_size)"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or _derived_head_dim(config)
    biases = LLAMA_LAYOUT[architecture](config)
    for i in range(config["num_hidden_layers"]):
        expected |= llama_block(f"model.layers.{i}", config["hidden_size"], heads, kv_heads, head_dim,
                                config["intermediate_size"], biases)
    return _compare(expected, folder.tensors, _ignored(config))


STOCK_RULES: tuple[Rule, ...] = (
    Rule("tensors", (*SERVING, TRANSFORMERS), "vLLM: a weight with no parameter raises KeyError, a parameter "
         "with no weight fails the load; transformers initialises a missing one at random", _stock_tensors),
    *FOLDER_RULES,
)


# ---------------------------------------------------------------------------- expected tensors
def _derived_head_dim(config: dict[str, Any]) -> int | None:
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None


def outer_tensors(config: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """The embedding, final norm and (untied) head, or None where the config lacks their sizes."""
    hidden, vocab = config.get("hidden_size"), config.get("vocab_size")
    if not isinstance(hidden, int) or not isinstance(vocab, int) or _derived_head_dim(config) is None:
        return None
    tensors = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings"):
        tensors["lm_head.weight"] = (vocab, hidden)
    return tensors


def _ignored(config: dict[str, Any]) -> set[str]:
    """Names the engines skip without complaint: a tied head's own copy."""
    return {"lm_head.weight"} if config.get("tie_word_embeddings") else set()


def llama_block(prefix: str, hidden: int, heads: int, kv_heads: int, head_dim: int, width: int,
                biases: Biases = Biases()) -> dict[str, tuple[int, ...]]:
    """The tensors of a Llama block: an attention where ``heads``, an FFN where ``width`` (each with
    its norm), named and shaped as the checkpoints of the Llama family are."""
    tensors: dict[str, tuple[int, ...]] = {}
    if heads:
        q, kv = heads * head_dim, kv_heads * head_dim
        tensors |= {f"{prefix}.input_layernorm.weight": (hidden,),
                    f"{prefix}.self_attn.q_proj.weight": (q, hidden),
                    f"{prefix}.self_attn.k_proj.weight": (kv, hidden),
                    f"{prefix}.self_attn.v_proj.weight": (kv, hidden),
                    f"{prefix}.self_attn.o_proj.weight": (hidden, q)}
        if biases.qkv:
            tensors |= {f"{prefix}.self_attn.{p}_proj.bias": (n,) for p, n in (("q", q), ("k", kv), ("v", kv))}
        if biases.o:
            tensors[f"{prefix}.self_attn.o_proj.bias"] = (hidden,)
    if width:
        tensors |= {f"{prefix}.post_attention_layernorm.weight": (hidden,),
                    f"{prefix}.mlp.gate_proj.weight": (width, hidden),
                    f"{prefix}.mlp.up_proj.weight": (width, hidden),
                    f"{prefix}.mlp.down_proj.weight": (hidden, width)}
        if biases.mlp:
            tensors |= {f"{prefix}.mlp.{p}_proj.bias": (n,) for p, n in (("gate", width), ("up", width),
                                                                          ("down", hidden))}
    return tensors


def _compare(expected: dict[str, tuple[int, ...]], found: dict[str, Tensor], ignored: set[str]) -> Verdict:
    """Missing, unexpected and mis-shaped tensors, a few of each."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - ignored)
    misshaped = sorted(f"{name} {list(found[name].shape)}, expected {list(shape)}"
                       for name, shape in expected.items() if name in found and found[name].shape != shape)
    problems = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            problems.append(f"{len(names)} {what}: {shown(names)}")
    return Verdict([" | ".join(problems)] if problems else [], f"all {len(expected)} expected, shapes match")
