"""``twossp export``: a completed run's pruned model rebuilt from the dense weights and the layer
masks stored in the database alone, then saved as a Hugging Face checkpoint (``serve.hf``: portable
or stock) or as one GGUF file for llama.cpp (``serve.gguf``), with its model card (``serve.card``).
A sweep's ``save_to:`` saves through the same ``save_model``; every export is an ``exports`` row."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from twossp.contracts import LayerMask, RunStatus
from twossp.db import store
from twossp.errors import CheckpointError, ExportUnsupported
from twossp.methods import method_of
from twossp.plan import RunSpec
from twossp.serve.card import Provenance
from twossp.serve.hf import folder_size

#: portable Hugging Face (plain or Nemotron-NAS), stock Hugging Face (zero-filled), GGUF
FORMATS = ("safetensors", "hf-stock", "gguf")


@dataclass(frozen=True)
class StoredRun:
    spec: RunSpec
    masks: list[LayerMask]
    provenance: Provenance


@dataclass(frozen=True)
class SavedGguf:
    directory: Path
    file: Any  # serve.gguf.GgufFile
    scores: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)  # measured in llama.cpp

    @property
    def note(self) -> str:
        f = self.file
        return (f"{f.path.name} ({f.tensor_type}, {f.size / 2**20:,.1f} MiB): llama.cpp architecture {f.architecture}, "
                f"{f.blocks} blocks, {f.attention_blocks} with attention; model card in README.md")


def model_source(model: Any) -> str:
    """Where a model spec's dense weights come from, in words."""
    return str(model.path or model.gguf or model.hub or f"builtin {model.builtin}")


def provenance(spec: RunSpec, key: str, masks: list[LayerMask], achieved: float | None,
               scores: list[tuple[str, str, float]], versions: dict[str, Any] | None,
               recovered: dict[str, Any] | None = None) -> Provenance:
    """What a run's export says of it; ``recovered``: a recovered run's record (``details["recovery"]``)."""
    from twossp.spec import source_label

    model, recovery = spec.model, None
    if spec.recovery:
        recovery = {**spec.recovery.model_dump(exclude={"data"}), "data": source_label(spec.recovery.data),
                    "record": recovered or {}}
    return Provenance(run_key=key, model=model.label, source=model_source(model),
                      method=spec.method.model_dump(), target_sparsity=spec.sparsity, achieved_sparsity=achieved,
                      masks=masks, scores=list(scores), versions=dict(versions or {}), base_model=model.hub,
                      license=base_license(model), recovery=recovery)


def base_license(model: Any) -> str | None:
    """The dense model's license, from the YAML front matter of the model card beside its
    config.json (a local folder or a downloaded hub snapshot), where there is one."""
    import yaml

    from twossp.runtime.loading import config_path

    config = config_path(model)
    card = config.parent / "README.md" if config else None
    if card is None or not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def find_run(db: Any, key: str) -> StoredRun:
    """The completed run whose key is ``key`` or starts with it, its masks and its provenance."""
    with db.session() as session:
        rows = store.runs_with_prefix(session, key, 2)
        if len(rows) != 1:
            raise CheckpointError(f"{'no run' if not rows else 'more than one run'} with a key starting {key!r}")
        run = rows[0]
        if run.status != RunStatus.COMPLETED:
            raise CheckpointError(f"run {run.key} is {run.status}, not completed: nothing to export")
        spec = RunSpec.model_validate(run.spec)
        if spec.weights_changed() or (spec.weights is None and spec.key != run.key):  # other weights now
            raise CheckpointError(
                f"run {run.key} was computed from other weights than {spec.model.label} holds now "
                f"({model_source(spec.model)}): its masks would be applied to weights "
                "they were not chosen for; run the sweep again to prune the current weights")
        if spec.recovery:
            raise CheckpointError(f"run {run.key} is a recovered run: its weights were trained, and the database "
                                  "holds its masks, not its weights; a recovered model is saved while it runs, with "
                                  "`save_to: DIR` in the sweep")
        refusal = method_of(spec.method).export_refusal
        if refusal:
            raise CheckpointError(f"run {run.key} is a {spec.method.name} run: {refusal}")
        masks = [LayerMask(m.layer, m.attention_kept, m.ffn_width, m.ffn_mask) for m in run.layer_masks]
        scores = [(s.dataset, s.metric, s.value) for s in run.scores]
        return StoredRun(spec, masks, provenance(spec, run.key, masks, run.achieved_sparsity, scores, run.versions))


def export_refusal(config: Any, method: Any, save_format: str, masks: list[LayerMask] | None = None) -> str | None:
    """Why a run of ``method`` on a model of ``config`` (a config.json dict or a transformers
    config) cannot be saved as ``save_format``, naming what to use instead; None when it can.
    ``masks`` (a finished run's) say whether its blocks stayed whole; unknown, they may not."""
    from twossp.serve.gguf import refusal as gguf_refusal
    from twossp.serve.hf import refusal as hf_refusal

    entry = method_of(method)
    if save_format == "gguf":
        return entry.gguf_refusal or gguf_refusal(config)
    if save_format == "hf-stock":
        return entry.stock_refusal
    if entry.own_checkpoint or entry.whole_blocks or not entry.prunes:
        return None
    kept = [m for m in masks or [] if not m.removed_block]
    whole = masks is not None and all(m.attention_kept and m.ffn_kept for m in kept) \
        and len({m.ffn_kept for m in kept}) == 1
    return hf_refusal(config, save_format, pruned=not whole)


def gguf_name(p: Provenance, tensor_type: str) -> str:
    """``<model>-<method>-<target>.<type>.gguf``, in characters every file system takes."""
    target = f"-{p.target_sparsity:g}" if p.target_sparsity else ""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{Path(p.model).name}-{p.method_name}{target}").strip("-.")
    return f"{stem}.{tensor_type}.gguf"


def measure_gguf(path: Path, spec: RunSpec, tokenizer: Any) -> list[tuple[str, str, float]]:
    """llama.cpp on ``path``, as the run was evaluated: perplexity on each of its datasets' windows
    (from its evaluation settings), then prompt processing of its first window and generation of its
    speed settings' new tokens (the defaults when it measured no speed)."""
    from twossp.data.tokens import token_stream
    from twossp.evaluate.perplexity import make_windows
    from twossp.serve.engine import Engine
    from twossp.spec import SpeedSpec, source_label

    evaluation = spec.evaluation
    seq_len = evaluation.seq_len or 2048
    scores, first = [], None
    with Engine(path, seq_len) as engine:  # loaded once for every dataset
        for source in evaluation.perplexity:
            windows = make_windows(token_stream(tokenizer, source), seq_len, evaluation.max_windows)
            if windows.shape[0] == 0:
                continue
            first = windows[0] if first is None else first
            scores.append((source_label(source), "perplexity", engine.perplexity(windows.numpy()).perplexity))
    if first is not None:
        speed = evaluation.speed or SpeedSpec()
        with Engine(path, seq_len + speed.new_tokens, all_logits=False) as engine:
            measured = engine.speed(first.tolist(), speed.new_tokens, repeats=speed.repeats, warmup=speed.warmup)
        scores += [("speed", "prompt_tokens_per_second", measured.prompt_tokens_per_second),
                   ("speed", "generation_tokens_per_second", measured.generation_tokens_per_second),
                   ("speed", "threads", float(measured.threads))]
    return scores


def save_model(model: Any, tokenizer: Any, directory: Path, save_format: str, tensor_type: str,
               origin: Provenance, measure: Callable[[Path], list[tuple[str, str, float]]] | None = None) -> Any:
    """Save ``model`` to ``directory`` (atomically: written beside it, then renamed) as a Hugging
    Face checkpoint (``safetensors``: portable; ``hf-stock``) or as one GGUF file, with its model
    card. ``measure(file)`` (GGUF only) gives the engine's figures for the card."""
    from twossp.checkpoint import save_pruned, written_atomically
    from twossp.serve.card import render_card

    if save_format not in FORMATS:
        raise CheckpointError(f"unknown export format {save_format!r}; formats: {', '.join(FORMATS)}")
    if save_format != "gguf":
        def write_checkpoint(folder: Path) -> Any:
            saved = save_pruned(model, tokenizer, folder, save_format)
            (folder / "README.md").write_text(render_card(origin, saved), encoding="utf-8")
            return dataclasses.replace(saved, size=folder_size(folder))

        saved = written_atomically(directory, write_checkpoint)
        return dataclasses.replace(saved, directory=directory)
    from twossp.serve.card import metadata
    from twossp.serve.gguf import layout_for, write_gguf

    layout_for(model.config)  # refused before anything is written
    name = gguf_name(origin, tensor_type)

    scores: list[tuple[str, str, float]] = []

    def write(folder: Path) -> Any:
        written = write_gguf(model, tokenizer, folder / name, tensor_type, metadata(origin))
        if measure:
            scores.extend(measure(written.path))
        figures = {f"{m} ({d})" if d != "speed" else m.replace("_", " "): v for d, m, v in scores}
        (folder / "README.md").write_text(render_card(origin, written, figures or None), encoding="utf-8")
        return written

    written = written_atomically(directory, write)
    return SavedGguf(directory, dataclasses.replace(written, path=directory / name), scores)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_row(saved: Any, evaluated: bool = False) -> dict[str, Any]:
    """The ``exports`` row of what ``save_model`` wrote (without the run), as ``store.add_export``
    takes it: the format, where, how big, and what the file holds."""
    if isinstance(saved, SavedGguf):
        f = saved.file
        engine = None
        if evaluated:
            from twossp.serve.engine import engine_version

            engine = f"llama-cpp-python {engine_version()}"
        return dict(save_format="gguf", path=str(f.path), size_bytes=f.size, tensor_type=f.tensor_type,
                    architecture=f.architecture, sha256=_sha256(f.path), engine=engine,
                    details={"blocks": f.blocks, "attention_blocks": f.attention_blocks,
                             "ffn_widths": f.ffn_widths, "rewrites": f.rewrites, "tensor_types": f.types},
                    scores=saved.scores)
    return dict(save_format="hf-stock" if saved.layout == "stock" else "safetensors", path=str(saved.directory),
                size_bytes=saved.size, architecture=saved.architecture,
                details={"layout": saved.layout, "stock": saved.stock, "blocks": saved.blocks,
                         "attention_blocks": saved.attention_blocks, "ffn_widths": saved.ffn_widths,
                         "rewrites": saved.rewrites})


def record_export(db: Any, key: str, saved: Any, evaluated: bool) -> None:
    """The export's row (and the engine's figures) in the database."""
    row = export_row(saved, evaluated)
    with db.session() as session:
        store.add_export(session, key, row.pop("save_format"), **row)


def export_run(db: Any, key: str, directory: str | Path, device: str = "cpu", overwrite: bool = False,
               save_format: str = "safetensors", tensor_type: str = "f16", evaluate: bool = False) -> Any:
    """Rebuild a completed run's pruned model from the dense weights and its stored masks and save
    it to ``directory`` (``serve.hf.HfCheckpoint`` or ``SavedGguf``). ``key`` may be a unique
    prefix. The export is recorded in the database (``exports``); ``evaluate`` (GGUF) also
    measures it in llama.cpp (``measure_gguf``) and stores the figures (``export_scores``).

    ``directory`` must be new or empty unless ``overwrite``: files of an earlier export (an old
    shard index beside new weights) would otherwise be mistaken for part of this one. The model is
    written to a sibling folder and renamed into place, so a failed export leaves nothing behind."""
    import torch

    from twossp.device import torch_dtype
    from twossp.families import adapter_for
    from twossp.prune.masks import apply_masks
    from twossp.runtime.loading import load_model

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise CheckpointError(f"{directory} is not empty; export into a new or empty directory, or pass "
                              "--overwrite to replace what it holds")
    if evaluate and save_format != "gguf":
        raise CheckpointError("--evaluate measures a GGUF file in llama.cpp: it needs --format gguf")
    run = find_run(db, key)
    if evaluate:
        from twossp.serve.engine import engine_version

        engine_version()  # llama-cpp-python installed, before any work
    if save_format not in FORMATS:
        raise CheckpointError(f"unknown export format {save_format!r}; formats: {', '.join(FORMATS)}")
    from twossp.runtime.loading import load_config

    reason = export_refusal(load_config(run.spec.model), run.spec.method, save_format, run.masks)
    if reason:  # before the weights are loaded
        raise ExportUnsupported(f"cannot export run {run.provenance.run_key}: {reason}")
    model, tokenizer = load_model(run.spec.model, torch_dtype(run.spec.runtime.dtype), torch.device(device))
    apply_masks(model, adapter_for(model.config), run.masks)
    measure = (lambda path: measure_gguf(path, run.spec, tokenizer)) if evaluate else None
    saved = save_model(model, tokenizer, directory, save_format, tensor_type, run.provenance, measure)
    record_export(db, run.provenance.run_key, saved, evaluate)
    return saved
