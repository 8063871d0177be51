"""The result database: a public interface (documented in the README), managed by Alembic.

sweeps 1-n runs; each run has scores, timings, one layer_masks row per decoder layer and its
qualitative generations (one row per prompt, in prompt order); each file ``twossp export`` wrote
from a run is an exports row, with what the serving engine measured on it in export_scores. Work
several runs share (a shared step) is a shared_steps row, its result kept for later sweeps; a run
that took one names its key in ``runs.shared_step``. What a run measured of its memory (the peak per
phase and device, and the plan's estimate) is in run_memory, where its blocks lived in ``runs.placement``.
A recovered run (healed after pruning, starting from its pruning run's model) names its recovery's
label in ``runs.recovery`` (NULL: not recovered) and keeps its loss curve in recovery_steps.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Enum, Float, ForeignKey, Integer, LargeBinary, MetaData
from sqlalchemy import String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from twossp.contracts import RunStatus


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


#: ``runs.status``: the lowercase values of ``RunStatus`` in a VARCHAR(20), held to them by the CHECK
#: constraint ``ck_runs_status`` on every backend (migration 0003). Rows load as ``RunStatus`` members
#: (a ``str`` enum, so ``row.status == "completed"`` holds); a value outside it is refused in Python
#: (``validate_strings``) and, written around the ORM, by the database.
RUN_STATUS = Enum(RunStatus, native_enum=False, create_constraint=True, length=20, name="status",
                  values_callable=lambda members: [m.value for m in members], validate_strings=True)


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[Optional[str]] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    cancel_requested_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))  # sweep cancel
    planned_keys: Mapped[Optional[list[str]]] = mapped_column(JSON)  # its runs' keys, shared cells included (0005)

    runs: Mapped[list["Run"]] = relationship(back_populates="sweep")


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id"), index=True)
    model: Mapped[str] = mapped_column(String(300), index=True)
    method: Mapped[str] = mapped_column(String(50), index=True)
    target_sparsity: Mapped[float] = mapped_column(Float)
    achieved_sparsity: Mapped[Optional[float]] = mapped_column(Float)
    calibration_samples: Mapped[Optional[int]] = mapped_column(Integer)
    seed: Mapped[Optional[int]] = mapped_column(Integer)
    status: Mapped[RunStatus] = mapped_column(RUN_STATUS, index=True)  # pending | running | completed | failed
    error: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    params_dense: Mapped[Optional[int]] = mapped_column(BigInteger)   # P_layers before pruning
    params_pruned: Mapped[Optional[int]] = mapped_column(BigInteger)  # P_layers after pruning
    host: Mapped[Optional[str]] = mapped_column(String(200))
    device: Mapped[Optional[str]] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)             # the resolved run spec
    versions: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)  # package versions, git revision
    details: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)   # method-specific: budget, search trace
    owner: Mapped[Optional[str]] = mapped_column(String(200))          # the driver holding a running run
    heartbeat_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))  # its last sign of life
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # times started
    calibration_sha256: Mapped[Optional[str]] = mapped_column(String(64))  # of the calibration token stream
    evaluation_key: Mapped[Optional[str]] = mapped_column(String(64))  # runs evaluated alike share it
    shared_step: Mapped[Optional[str]] = mapped_column(String(64), index=True)  # the shared step it took (0007)
    placement: Mapped[Optional[str]] = mapped_column(String(100))  # single | split 4x cuda | stream from disk (0008)
    recovery: Mapped[Optional[str]] = mapped_column(String(200), index=True)  # kd-full, ...; NULL: not recovered (0009)

    sweep: Mapped[Sweep] = relationship(back_populates="runs")
    scores: Mapped[list["Score"]] = relationship(back_populates="run", cascade="all, delete-orphan")
    timings: Mapped[list["Timing"]] = relationship(back_populates="run", cascade="all, delete-orphan")
    layer_masks: Mapped[list["LayerMaskRow"]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                             order_by="LayerMaskRow.layer")
    generations: Mapped[list["Generation"]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                           order_by="Generation.position")
    exports: Mapped[list["Export"]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                   order_by="Export.id")
    memory: Mapped[list["RunMemory"]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                     order_by="RunMemory.id")
    recovery_steps: Mapped[list["RecoveryStepRow"]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                                   order_by="RecoveryStepRow.step")


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("run_id", "dataset", "metric"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    dataset: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    tokens_sha256: Mapped[Optional[str]] = mapped_column(String(64))  # of the evaluated token stream

    run: Mapped[Run] = relationship(back_populates="scores")


class Timing(Base):
    __tablename__ = "timings"
    __table_args__ = (UniqueConstraint("run_id", "phase"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    phase: Mapped[str] = mapped_column(String(100))
    seconds: Mapped[float] = mapped_column(Float)

    run: Mapped[Run] = relationship(back_populates="timings")


class RunMemory(Base):
    """A run's peak memory in one phase on one device (schema 0008): ``twossp.device.peak_memory``'s
    metrics, and the plan's estimate of the whole run's peak per device (phase ``plan``,
    ``estimate_bytes``)."""

    __tablename__ = "run_memory"
    __table_args__ = (UniqueConstraint("run_id", "phase", "device", "metric"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    phase: Mapped[str] = mapped_column(String(100))   # load, stage 1, eval <dataset>, ...; plan for the estimate
    device: Mapped[str] = mapped_column(String(50))   # cuda:0, cuda:1, cpu
    metric: Mapped[str] = mapped_column(String(50))   # peak_cuda_allocated_bytes | peak_rss_bytes | ... | estimate_bytes
    bytes: Mapped[int] = mapped_column(BigInteger)

    run: Mapped[Run] = relationship(back_populates="memory")


class RecoveryStepRow(Base):
    """One optimiser step of a recovered run's training (schema 0009; ``contracts.RecoveryStep``):
    its loss curve, read in step order."""

    __tablename__ = "recovery_steps"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)                     # 1, 2, ...
    loss: Mapped[Optional[float]] = mapped_column(Float)           # what the step minimised; NULL: not finite
    kd_loss: Mapped[Optional[float]] = mapped_column(Float)        # its forward-KL part (NULL: not distilling)
    ce_loss: Mapped[Optional[float]] = mapped_column(Float)        # the next-token cross-entropy
    lr: Mapped[float] = mapped_column(Float)
    grad_norm: Mapped[Optional[float]] = mapped_column(Float)      # before clipping
    tokens: Mapped[int] = mapped_column(BigInteger)                # training tokens seen so far
    seconds: Mapped[float] = mapped_column(Float)                  # training wall time so far
    heldout_perplexity: Mapped[Optional[float]] = mapped_column(Float)  # at the evaluation steps

    run: Mapped[Run] = relationship(back_populates="recovery_steps")


class LayerMaskRow(Base):
    __tablename__ = "layer_masks"
    __table_args__ = (UniqueConstraint("run_id", "layer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    layer: Mapped[int] = mapped_column(Integer)
    attention_kept: Mapped[bool] = mapped_column(Boolean)
    ffn_kept: Mapped[int] = mapped_column(Integer)      # neurons kept
    ffn_width: Mapped[int] = mapped_column(Integer)     # dense width: bits in ffn_mask
    ffn_mask: Mapped[bytes] = mapped_column(LargeBinary)  # np.packbits(kept), big-endian bit order

    run: Mapped[Run] = relationship(back_populates="layer_masks")


class Generation(Base):
    __tablename__ = "generations"
    __table_args__ = (UniqueConstraint("run_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # the prompt's place in the run's prompt list
    prompt: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)       # the new tokens only, special tokens skipped
    new_tokens: Mapped[int] = mapped_column(Integer)  # generated, EOS included (fewer than asked when it ended)

    run: Mapped[Run] = relationship(back_populates="generations")


class Export(Base):
    """A model file ``twossp export`` wrote from a completed run (schema 0006)."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    format: Mapped[str] = mapped_column(String(20))                 # safetensors | gguf
    tensor_type: Mapped[Optional[str]] = mapped_column(String(20))   # GGUF: f16, q8_0, q4_k_m, ...
    architecture: Mapped[Optional[str]] = mapped_column(String(50))  # GGUF: the llama.cpp architecture
    path: Mapped[str] = mapped_column(Text)                          # the GGUF file, or the checkpoint folder
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[Optional[str]] = mapped_column(String(64))       # GGUF: of the file
    engine: Mapped[Optional[str]] = mapped_column(String(100))      # what measured it (--evaluate)
    details: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)  # GGUF: rewrites, tensor types

    run: Mapped[Run] = relationship(back_populates="exports")
    scores: Mapped[list["ExportScore"]] = relationship(back_populates="export", cascade="all, delete-orphan")


class ExportScore(Base):
    """What the serving engine measured on an export: perplexity on the run's own windows, speed."""

    __tablename__ = "export_scores"
    __table_args__ = (UniqueConstraint("export_id", "dataset", "metric"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"), index=True)
    dataset: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)

    export: Mapped[Export] = relationship(back_populates="scores")


class SharedStepRow(Base):
    """A shared step's result (schema 0007): computed once for every run of a sweep that needs it, and
    kept so that a later sweep's runs take it too. ``payload`` is the result as ``torch.save`` writes
    it (read back with ``weights_only``)."""

    __tablename__ = "shared_steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(50), index=True)
    label: Mapped[str] = mapped_column(Text)
    identity: Mapped[dict[str, Any]] = mapped_column(JSON)              # what its key hashes
    calibration_sha256: Mapped[Optional[str]] = mapped_column(String(64))  # of the windows it read
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    seconds: Mapped[float] = mapped_column(Float)                       # load, calibration and computation
    timings: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    host: Mapped[Optional[str]] = mapped_column(String(200))
    device: Mapped[Optional[str]] = mapped_column(String(200))
    versions: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
