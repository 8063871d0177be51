"""Documents from a text source, and token streams cut into windows (docs/evaluation.md,
Calibration data): documents joined with "\\n\\n", tokenised once without special tokens."""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from twossp.data.hub import unavailable, unreachable_reason
from twossp.data.registry_wheels import LEE_BACKGROUND
from twossp.errors import DataUnavailable
from twossp.spec import FileSource, TextSource

SEPARATOR = "\n\n"


@dataclass(frozen=True)
class HubFile:
    repo: str
    filename: str
    revision: str | None
    max_documents: int | None
    text_field: str = "text"


HUB_SOURCES: dict[str, HubFile] = {
    "wikitext2": HubFile("Salesforce/wikitext", "wikitext-2-raw-v1/test-00000-of-00001.parquet", None, None),
    "c4": HubFile("allenai/c4", "en/c4-validation.00000-of-00008.json.gz", None, 1100),
    "c4-train": HubFile("allenai/c4", "en/c4-train.00000-of-01024.json.gz",
                        "607bd4c8450a42878aa9ddc051a65a055450ef87", 1000),
    "fineweb-edu": HubFile("HuggingFaceFW/fineweb-edu", "sample/10BT/000_00000.parquet", None, 500),
}

#: The Lee corpus split by article: calibration and evaluation never share a document.
LEE_SPLITS = {"lee-calibration": slice(0, 200), "lee-evaluation": slice(200, 300)}


def load_documents(source: TextSource) -> list[str]:
    if isinstance(source, FileSource):
        return _file_documents(source)
    if source in LEE_SPLITS:
        articles = LEE_BACKGROUND.read().decode("utf-8").splitlines()
        return [a for a in articles[LEE_SPLITS[source]] if a.strip()]
    if source in HUB_SOURCES:
        hub = HUB_SOURCES[source]
        return _read_rows(_hub_download(source, hub), "parquet" if hub.filename.endswith(".parquet") else "jsonl",
                          hub.text_field, hub.max_documents)
    raise DataUnavailable(f"unknown text source {source!r}")


def load_text(source: TextSource, seed: int = 0) -> str:
    """The source's documents joined with a blank line; seed 0 keeps file order, others shuffle."""
    docs = load_documents(source)
    if seed:
        random.Random(seed).shuffle(docs)
    return SEPARATOR.join(docs)


def _file_documents(source: FileSource) -> list[str]:
    path = Path(source.path)
    if not path.is_file():
        raise DataUnavailable(f"text file not found: {path}")
    fmt = source.resolved_format
    if fmt == "text":
        # WikiText-style raw files carry CRLF line ends; the protocol strips "\r".
        return [path.read_text(encoding="utf-8").replace("\r", "")]
    return _read_rows(path, fmt, source.text_field, source.max_documents)


def _read_rows(path: Path, fmt: str, field: str, limit: int | None) -> list[str]:
    rows: list[str] = []
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if field not in pf.schema_arrow.names:
            raise DataUnavailable(f"{path}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)})")
        for batch in pf.iter_batches(columns=[field], batch_size=1024):
            rows.extend(str(v) for v in batch.column(0).to_pylist() if v is not None)
            if limit and len(rows) >= limit:
                break
    else:
        for lineno, record in json_lines(path):
            if field not in record:
                raise DataUnavailable(f"{path}:{lineno}: no field {field!r}")
            rows.append(str(record[field]))
            if limit and len(rows) >= limit:
                break
    return rows[:limit] if limit else rows


def json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line of a JSONL file (gzipped when it ends in .gz);
    ``DataUnavailable`` naming the file and line of the first that is not a JSON object."""
    path = Path(path)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataUnavailable(f"{path}:{lineno}: not a JSON line ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise DataUnavailable(f"{path}:{lineno}: a JSON object was expected")
                yield lineno, record
    except (OSError, UnicodeDecodeError) as exc:
        raise DataUnavailable(f"cannot read {path}: {exc}") from None


def _hub_download(name: str, hub: HubFile) -> Path:
    from huggingface_hub import hf_hub_download

    args = dict(repo_id=hub.repo, filename=hub.filename, repo_type="dataset", revision=hub.revision)
    try:
        return Path(hf_hub_download(**args, local_files_only=True))  # already cached
    except Exception:  # noqa: BLE001 - not cached: fetch it below
        pass
    hint = (f"Use a local copy instead, e.g. `{{path: /data/{Path(hub.filename).name}}}` in the sweep, "
            "or the offline sources lee-calibration / lee-evaluation.")
    what = f"text source {name!r} ({hub.repo}/{hub.filename})"
    reason = unreachable_reason()
    if reason:
        raise unavailable(what, reason, hint)
    try:
        return Path(hf_hub_download(**args))
    except Exception as exc:  # noqa: BLE001 - any failure to fetch is one clear, actionable error
        raise unavailable(what, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", hint) from None
