"""Published task files -> the records the harness's built-in tasks read from the hub.

Each converter takes one split's files as their authors publish them (``twossp.tasks`` says which)
and returns the rows of the hub dataset the built-in task config reads, with the same field names
and types, so the harness's own prompts, choices and targets apply unchanged. A malformed file is
one ``DataUnavailable`` naming the file and line.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from twossp.data.sources import json_lines
from twossp.errors import DataUnavailable

#: Part of the name of every converted file kept in the cache: raise it when a converter's output
#: changes, so no run reads records converted by an older one.
CONVERSION_VERSION = 1


def _labels(path: str | None, records: int, records_path: str) -> list[str]:
    try:
        labels = [line.strip() for line in Path(str(path)).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataUnavailable(f"cannot read {path}: {exc}") from None
    if len(labels) != records:
        raise DataUnavailable(f"{path} has {len(labels)} labels but {records_path} has {records} records")
    return labels


def _field(row: dict[str, Any], name: str, path: str, number: int) -> Any:
    if name not in row:
        raise DataUnavailable(f"{path}:{number}: no {name!r} field")
    return row[name]


def arc(records: str, labels: str | None = None, subject: str = "") -> list[dict[str, Any]]:
    """AI2's ARC JSONL (``question.stem``, ``question.choices[{text, label}]``, ``answerKey``; the
    labels are A-E or, for some questions, 1-5) -> ``allenai/ai2_arc`` rows."""
    out = []
    for number, row in json_lines(records):
        question = _field(row, "question", records, number)
        if not isinstance(question, dict) or not isinstance(question.get("choices"), list):
            raise DataUnavailable(f"{records}:{number}: `question` needs `stem` and `choices` (AI2's ARC format)")
        choices = question["choices"]
        answer = str(_field(row, "answerKey", records, number))
        keys = [str(c.get("label")) for c in choices if isinstance(c, dict)]
        if answer not in keys:
            raise DataUnavailable(f"{records}:{number}: answerKey {answer!r} is none of the choice labels {keys}")
        out.append({"id": str(row.get("id", number)), "question": str(question.get("stem", "")),
                    "choices": {"text": [str(c.get("text", "")) for c in choices], "label": keys},
                    "answerKey": answer})
    return out


def piqa(records: str, labels: str | None = None, subject: str = "") -> list[dict[str, Any]]:
    """PIQA's JSONL (``goal``, ``sol1``, ``sol2``) and label file (0 or 1 per line) -> ``baber/piqa`` rows."""
    rows = list(json_lines(records))
    answers = _labels(labels, len(rows), records)
    out = []
    for (number, row), label in zip(rows, answers):
        if label not in ("0", "1"):
            raise DataUnavailable(f"{labels}:{number}: label {label!r} is not 0 or 1")
        out.append({"goal": str(_field(row, "goal", records, number)), "sol1": str(_field(row, "sol1", records, number)),
                    "sol2": str(_field(row, "sol2", records, number)), "label": int(label)})
    return out


def winogrande(records: str, labels: str | None = None, subject: str = "") -> list[dict[str, Any]]:
    """WinoGrande's JSONL (``sentence`` with one ``_``, ``option1``, ``option2``) and label file (1 or
    2 per line) -> ``allenai/winogrande`` rows (``answer`` the string "1" or "2")."""
    rows = list(json_lines(records))
    answers = _labels(labels, len(rows), records)
    out = []
    for (number, row), label in zip(rows, answers):
        sentence = str(_field(row, "sentence", records, number))
        if label not in ("1", "2"):
            raise DataUnavailable(f"{labels}:{number}: label {label!r} is not 1 or 2")
        if "_" not in sentence:
            raise DataUnavailable(f"{records}:{number}: the sentence has no blank (_)")
        out.append({"sentence": sentence, "option1": str(_field(row, "option1", records, number)),
                    "option2": str(_field(row, "option2", records, number)), "answer": label})
    return out


def hellaswag(records: str, labels: str | None = None, subject: str = "") -> list[dict[str, Any]]:
    """HellaSwag's JSONL (``ctx_a``, ``ctx_b``, ``activity_label``, ``endings``, ``label`` an integer)
    -> ``Rowan/hellaswag`` rows (``label`` a string, as the hub has it)."""
    out = []
    for number, row in json_lines(records):
        endings = _field(row, "endings", records, number)
        label = _field(row, "label", records, number)
        if not isinstance(endings, list) or str(label) not in {str(i) for i in range(len(endings))}:
            raise DataUnavailable(f"{records}:{number}: `label` must index `endings`")
        out.append({"ind": row.get("ind", number), "activity_label": str(_field(row, "activity_label", records, number)),
                    "ctx_a": str(_field(row, "ctx_a", records, number)), "ctx_b": str(_field(row, "ctx_b", records, number)),
                    "ctx": str(row.get("ctx", "")), "endings": [str(e) for e in endings],
                    "source_id": str(row.get("source_id", "")), "split": str(row.get("split", "")),
                    "split_type": str(row.get("split_type", "")), "label": str(label)})
    return out


_LETTERS = {"A": 0, "B": 1, "C": 2, "D": 3}


def mmlu(records: str, labels: str | None = None, subject: str = "") -> list[dict[str, Any]]:
    """One MMLU subject's CSV: question, four choices, answer (a letter A-D as Hendrycks et al.
    publish it, or 0-3), with or without a header row -> ``cais/mmlu`` rows."""
    try:
        with open(records, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataUnavailable(f"cannot read {records}: {exc}") from None
    if rows and [c.strip().lower() for c in rows[0][:1]] == ["question"]:
        rows, first = rows[1:], 2
    else:
        first = 1
    out = []
    for number, row in enumerate(rows, first):
        if not row:
            continue
        if len(row) != 6:
            raise DataUnavailable(f"{records}:{number}: {len(row)} columns; MMLU rows are question, four "
                                  "choices, answer")
        answer = row[5].strip()
        index = _LETTERS.get(answer.upper(), int(answer) if answer in ("0", "1", "2", "3") else None)
        if index is None:
            raise DataUnavailable(f"{records}:{number}: answer {answer!r} is not A-D or 0-3")
        out.append({"question": row[0], "subject": subject, "choices": row[1:5], "answer": index})
    return out
