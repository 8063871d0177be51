"""Where an exported model came from: a model card (``README.md`` in every export, with the YAML
front matter the Hugging Face hub reads) and, in a GGUF file, ``general.*`` and ``twossp.*``
metadata, so that a shared model still says which run of which model it is, what was removed, what
that cost, and how to load and serve it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twossp.contracts import LayerMask


def twossp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("twossp")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Provenance:
    """One run, as the card and the metadata tell it."""

    run_key: str
    model: str                              # the sweep's label
    source: str                             # path, hub id or GGUF the dense weights came from
    method: dict[str, Any]                  # the method spec (name and options)
    target_sparsity: float | None
    achieved_sparsity: float | None
    masks: list[LayerMask]                  # one per dense block
    scores: list[tuple[str, str, float]] = field(default_factory=list)  # (dataset, metric, value)
    versions: dict[str, Any] = field(default_factory=dict)             # of the run
    base_model: str | None = None           # the dense model's hub id, where it came from the hub
    license: str | None = None              # the dense model's license, where its card says
    #: how the pruned model was healed (``RecoverySpec`` settings and the run's record); None: it was not
    recovery: dict[str, Any] | None = None

    @property
    def method_name(self) -> str:
        return str(self.method.get("name", "?"))

    @property
    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.method.items() if k != "name"}

    @property
    def title(self) -> str:
        target = f" at sparsity {self.target_sparsity:g}" if self.target_sparsity else ""
        return f"{self.model}, pruned with {self.method_name}{target}"

    def removed_blocks(self) -> list[int]:
        return [m.layer for m in self.masks if m.removed_block]

    def removed_attention(self) -> list[int]:
        return [m.layer for m in self.masks if not m.attention_kept and not m.removed_block]

    def removed_ffn(self) -> list[int]:
        return [m.layer for m in self.masks if m.ffn_kept == 0 and not m.removed_block]

    def ffn_kept(self) -> list[int]:
        return [m.ffn_kept for m in self.masks]


def metadata(provenance: Provenance) -> dict[str, Any]:
    """GGUF keys for ``provenance`` (``general.*`` as llama.cpp's tools show them, ``twossp.*``)."""
    p = provenance
    keys: dict[str, Any] = {
        "general.name": p.title,
        "general.description": f"{p.title}; exported by twossp from run {p.run_key}",
        "general.source.url": p.source,
        "twossp.version": twossp_version(),
        "twossp.run_key": p.run_key,
        "twossp.method": json.dumps(p.method, sort_keys=True),
        "twossp.dense_blocks": len(p.masks),
        "twossp.removed_blocks": p.removed_blocks(),
        "twossp.removed_attention": p.removed_attention(),
        "twossp.removed_ffn": p.removed_ffn(),
        "twossp.ffn_kept": p.ffn_kept(),
        "twossp.scores": json.dumps([list(s) for s in p.scores]),
    }
    if p.recovery:
        keys["twossp.recovery"] = json.dumps(p.recovery, sort_keys=True)
    if p.target_sparsity is not None:
        keys["twossp.target_sparsity"] = float(p.target_sparsity)
    if p.achieved_sparsity is not None:
        keys["twossp.achieved_sparsity"] = float(p.achieved_sparsity)
    return keys


def _blocks(indices: list[int]) -> str:
    return ", ".join(map(str, indices)) if indices else "none"


def _widths(provenance: Provenance) -> str:
    kept = [m.ffn_kept for m in provenance.masks if not m.removed_block and m.ffn_kept]
    dense = provenance.masks[0].ffn_width if provenance.masks else 0
    if not kept:
        return "no FFN left"
    if len(set(kept)) == 1:
        return f"{kept[0]:,} of {dense:,} neurons in every block that has one"
    return f"{min(kept):,} to {max(kept):,} of {dense:,} neurons (per block: {', '.join(map(str, kept))})"


def render_card(provenance: Provenance, written: Any, engine: dict[str, Any] | None = None) -> str:
    """The model card (Markdown with YAML front matter) of ``written``: a ``serve.gguf.GgufFile`` or a
    ``serve.hf.HfCheckpoint``. ``engine`` adds the figures llama.cpp measured on a GGUF file
    (``twossp export --evaluate``)."""
    from twossp.serve.hf import HfCheckpoint

    p = provenance
    hf = isinstance(written, HfCheckpoint)
    introduction, how_written, use_it = (_hf_introduction, _hf_how_written, _hf_use_it) if hf else \
        (_introduction, _how_written, _use_it)
    lines = [*front_matter(p, written), *introduction(p, written), *_pruned(p, written), *_recovered(p), *_scores(p),
             *_engine_figures(engine)]
    if p.removed_blocks() and written.rewrites:
        lines += ["Below, blocks are numbered as in the pruned model, whose whole blocks removed are gone.", ""]
    lines += [*how_written(written), *use_it(p, written), *_provenance(p, written)]
    return "\n".join(lines)


def front_matter(p: Provenance, written: Any) -> list[str]:
    """The YAML block the hub reads: base model, library, license, task and tags."""
    from twossp.serve.hf import HfCheckpoint

    layout = getattr(written, "layout", None)
    tags = ["twossp", "pruned", "structured-pruning", p.method_name]
    tags += ["nemotron-nas"] if layout == "nas" else ["gguf"] if not isinstance(written, HfCheckpoint) else []
    lines = ["---"]
    if p.base_model:
        lines.append(f"base_model: {json.dumps(p.base_model)}")
    if isinstance(written, HfCheckpoint):
        lines.append("library_name: transformers")
    if p.license:
        lines.append(f"license: {json.dumps(p.license)}")
    lines += ["pipeline_tag: text-generation", "tags:", *[f"- {json.dumps(t)}" for t in tags], "---", ""]
    return lines


def _hf_introduction(p: Provenance, written: Any) -> list[str]:
    size = written.size / 2**20
    note = written.note
    return [f"# {p.title}", "", f"A Hugging Face checkpoint ({size:,.1f} MiB) written by twossp {twossp_version()} "
            f"from run `{p.run_key}`. {note[0].upper()}{note[1:]}.", ""]


def _hf_how_written(written: Any) -> list[str]:
    """The layout, the architecture declared and every exact rewrite the checkpoint took."""
    layout = {
        "plain": "The family's own architecture: every block in the checkpoint has its attention and its FFN, all "
                 "of one width.",
        "nas": "NVIDIA's Nemotron-NAS schema (`DeciLMForCausalLM`, `model_type: nemotron-nas`): one `block_configs` "
               "entry per block says whether it has an attention and an FFN and how wide the FFN is; the tensors "
               "have Llama names and a removed part has none. `configuration_twossp_nas.py` and "
               "`modeling_twossp_nas.py` (named by `auto_map`) build it in transformers.",
        "stock": "The family's own architecture with every removed attention present as zeros and every FFN "
                 "widened with zero neurons to the widest one, for tools that accept only stock checkpoints. "
                 "It keeps the FFN and whole-block savings and gives up the attention's: a zero attention still "
                 "computes and keeps a KV cache. The default export (`--format safetensors`) removes them.",
        "sliced": "twossp's own SliceGPT layout: rotated weights, a narrowed residual stream and a shortcut matrix "
                  "on every residual connection, which no stock or portable architecture expresses.",
    }[written.layout]
    return ["## How the checkpoint is written", "", layout, "",
            f"- Architecture `{written.architecture}`, {written.blocks} blocks, {written.attention_blocks} with "
            "attention.", *[f"- {r[0].upper()}{r[1:]}." for r in written.rewrites], ""]


def _hf_use_it(p: Provenance, written: Any) -> list[str]:
    """How to load and serve the checkpoint, by layout."""
    if written.layout == "sliced":
        return ["## Use it", "", "```python", "import twossp", "model = twossp.load_pruned(\"DIR\")", "```", ""]
    remote = written.layout == "nas"
    trust = ", trust_remote_code=True" if remote else ""
    flag = " --trust-remote-code" if remote else ""
    lines = ["## Use it", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f"model = AutoModelForCausalLM.from_pretrained(\"DIR\"{trust})",
             "tokenizer = AutoTokenizer.from_pretrained(\"DIR\")", "```", "",
             "Serving (GPU):", "", "```sh", f"vllm serve DIR{flag}",
             f"python -m sglang.launch_server --model-path DIR{flag}", "```", ""]
    if remote:
        lines += ["The modelling files import only torch and transformers (5.x). The remote code only builds the "
                  "configuration in vLLM and SGLang (their own model code runs it); without `trust_remote_code`, "
                  "transformers refuses the folder instead of loading it with random weights.", ""]
    lines += [f"llama.cpp: `twossp export {p.run_key} DIR --format gguf` writes a GGUF file with the removed parts absent "
              "(llama.cpp's own `convert_hf_to_gguf.py` also reads this folder).", "",
              "`twossp.load_pruned(\"DIR\")` loads it back into the pruned model twossp computed, exactly.", ""]
    return lines


def _introduction(p: Provenance, written: Any) -> list[str]:
    """The title and what the file is: its format, size and where the removed parts went."""
    size = written.size / 2**20
    return [
        f"# {p.title}",
        "",
        f"`{written.path.name}`: one GGUF file ({written.tensor_type}, {size:,.1f} MiB) for llama.cpp and the tools "
        f"built on it, written by twossp {twossp_version()} from run `{p.run_key}`. The removed parts are absent from "
        "the file: a removed attention has no weights, and no KV cache when llama.cpp runs with flash attention "
        "(`-fa on`; without it llama.cpp pads every block's V cache to one size).",
        "",
    ]


def _pruned(p: Provenance, written: Any) -> list[str]:
    """"What was pruned": the dense model, the method, the sparsities and what each block lost."""
    options = f" ({', '.join(f'{k} {v}' for k, v in p.options.items())})" if p.options else ""
    return [
        "## What was pruned",
        "",
        "| | |",
        "|---|---|",
        f"| dense model | {p.model} (`{p.source}`) |",
        f"| method | {p.method_name}{options} |",
        f"| sparsity target | {p.target_sparsity:g} |" if p.target_sparsity is not None else "| sparsity target | - |",
        f"| sparsity achieved | {p.achieved_sparsity:.4f} of the decoder-layer parameters |"
        if p.achieved_sparsity is not None else "| sparsity achieved | - |",
        f"| blocks | {len(p.masks)} dense, {written.blocks} in the file |",
        f"| whole blocks removed | {_blocks(p.removed_blocks())} |",
        f"| attention removed | {_blocks(p.removed_attention())} ({len(p.removed_attention())} of {len(p.masks)}) |",
        f"| FFN removed | {_blocks(p.removed_ffn())} |",
        f"| FFN width | {_widths(p)} |",
        "",
        "Blocks are numbered as in the dense model.",
        "",
    ]


def _recovered(p: Provenance) -> list[str]:
    """"How it was recovered": the training after pruning, whose weights the file holds."""
    r = p.recovery
    if not r:
        return []
    objective = (f"distillation from the dense model (forward KL at temperature {r['temperature']:g}"
                 + (f", mixed with the next-token loss at weight {r['ce_weight']:g}" if r.get("ce_weight") else "")
                 + ")") if r["loss"] == "kd" else "the next-token loss"
    lora = r.get("lora") or {}
    tuned = (f"LoRA adapters (rank {lora.get('rank', 8)}, alpha {lora.get('alpha', 16):g}) on the pruned model's "
             "linear layers, merged into their weights" if r["tune"] == "lora" else "every weight")
    rows = [("objective", objective), ("trained", tuned), ("text", f"{r['data']} (seed {r['seed']})"),
            ("steps", f"{r['steps']:,} of {r['batch_size']} x {r['accumulation']} windows of {r['seq_len']} tokens"),
            ("optimiser", f"AdamW, lr {r['lr']:g}, {r['warmup']} warm-up steps then {r['schedule']}")]
    done = r.get("record") or {}
    if done.get("tokens"):
        rows.append(("tokens seen", f"{done['tokens']:,} in {done.get('seconds', 0):,.0f} s"))
    if done.get("best_step") is not None:
        rows.append(("weights kept", f"step {done['best_step']} (lowest held-out perplexity)"))
    return ["## How it was recovered", "", "After pruning, the model was trained as follows; the file holds the "
            "trained weights.", "", "| | |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows], ""]


def _scores(p: Provenance) -> list[str]:
    """The scores twossp stored for the run, if any."""
    if not p.scores:
        return []
    return ["## Scores of the run", "", "Measured by twossp on the pruned model (PyTorch, Hugging Face "
            "transformers) when the run was computed.", "", "| dataset | metric | value |", "|---|---|---:|",
            *[f"| {d} | {m} | {v:.6g} |" for d, m, v in sorted(p.scores)], ""]


def _engine_figures(engine: dict[str, Any] | None) -> list[str]:
    """What llama.cpp measured on the file, if it was asked to."""
    if not engine:
        return []
    return ["## Measured in llama.cpp", "", "| figure | value |", "|---|---:|",
            *[f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in engine.items()], ""]


def _how_written(written: Any) -> list[str]:
    """The architecture declared, the tensor types and every exact rewrite the file took."""
    counts = ", ".join(f"{n} {t}" for t, n in sorted(written.types.items()))
    deci = " (its architecture for blocks that differ: per-block head counts and FFN widths)"
    return ["## How the file is written", "",
            f"- llama.cpp architecture `{written.architecture}`" + (deci if written.architecture == "deci" else "")
            + ".",
            f"- Tensors: {counts}.",
            *[f"- {r[0].upper()}{r[1:]}." for r in written.rewrites],
            ""]


def _use_it(p: Provenance, written: Any) -> list[str]:
    """How to run the file: llama.cpp's tools and its Python binding."""
    name = written.path.name
    return ["## Use it", "",
            "```sh", f"llama-server -m {name}", f"llama-cli -m {name} -p 'Hello'", "```",
            "", "```python", "from llama_cpp import Llama", f"llm = Llama(model_path={name!r})", "```", ""]


def _provenance(p: Provenance, written: Any) -> list[str]:
    """Which run and versions computed the model, and the command that writes this file again."""
    git = f" (git {p.versions['git']})" if p.versions.get("git") else ""
    libraries = (f", torch {p.versions['torch']}, transformers {p.versions['transformers']}"
                 if p.versions.get("torch") else "")
    return ["## Provenance", "",
            f"- Run key `{p.run_key}`; twossp {p.versions.get('twossp') or 'unknown'} computed it{git}{libraries}.",
            f"- Exported by twossp {twossp_version()}; `twossp show {p.run_key}` shows the run, "
            f"`twossp export {p.run_key} DIR {_format_flags(written)}` writes this {_what(written)} again.",
            ""]


def _format_flags(written: Any) -> str:
    layout = getattr(written, "layout", None)
    if layout is None:
        return f"--format gguf --type {written.tensor_type}"
    return "--format hf-stock" if layout == "stock" else "--format safetensors"


def _what(written: Any) -> str:
    return "file" if getattr(written, "layout", None) is None else "checkpoint"
