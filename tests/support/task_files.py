"""Small task files in each format their authors publish (ARC, PIQA, WinoGrande, HellaSwag, MMLU),
written by the tests themselves: a few deterministic questions per task, in a folder laid out as
``evaluation.task_data`` expects (one sub-folder per task)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

NOUNS = ["river", "teacher", "city", "garden", "engine", "market", "letter", "window", "farmer", "storm"]
VERBS = ["opened", "watched", "carried", "found", "painted", "followed", "built", "crossed"]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _lines(path: Path, values: list) -> None:
    path.write_text("".join(f"{v}\n" for v in values), encoding="utf-8")


def write_task_files(root: Path, n: int = 8, seed: int = 0) -> Path:
    rng = random.Random(seed)
    pick = lambda words: rng.choice(words)  # noqa: E731
    arc = []
    for i in range(n):
        numeric = i % 3 == 0  # some ARC questions use 1-4 instead of A-D
        labels = ["1", "2", "3", "4"] if numeric else ["A", "B", "C", "D"]
        arc.append({"id": f"Q{i}", "question": {"stem": f"Which {pick(NOUNS)} {pick(VERBS)} the {pick(NOUNS)}?",
                                                "choices": [{"text": f"the {pick(NOUNS)}", "label": k} for k in labels]},
                    "answerKey": labels[i % 4]})
    _jsonl(root / "arc_easy" / "ARC-Easy-Test.jsonl", arc)
    _jsonl(root / "arc_easy" / "ARC-Easy-Train.jsonl", arc[::-1])
    _jsonl(root / "arc_challenge" / "ARC-Challenge-Test.jsonl", arc[::2])
    piqa = [{"id": f"p{i}", "goal": f"How to paint a {pick(NOUNS)}?", "sol1": f"Use the {pick(NOUNS)}.",
             "sol2": f"Use a {pick(NOUNS)} {pick(VERBS)}."} for i in range(n)]
    _jsonl(root / "piqa" / "valid.jsonl", piqa)
    _lines(root / "piqa" / "valid-labels.lst", [i % 2 for i in range(n)])
    wino = [{"qID": f"w{i}", "sentence": f"The {pick(NOUNS)} {pick(VERBS)} the {pick(NOUNS)} because _ was old.",
             "option1": pick(NOUNS), "option2": pick(NOUNS), "answer": str(1 + i % 2)} for i in range(n)]
    _jsonl(root / "winogrande" / "dev.jsonl", wino)
    _lines(root / "winogrande" / "dev-labels.lst", [1 + i % 2 for i in range(n)])
    swag = [{"ind": i, "activity_label": pick(NOUNS).title(), "ctx_a": f"A {pick(NOUNS)} {pick(VERBS)} a {pick(NOUNS)}.",
             "ctx_b": f"then the {pick(NOUNS)}", "ctx": "", "endings": [f"{pick(VERBS)} the {pick(NOUNS)}." for _ in range(4)],
             "source_id": "test", "split": "val", "split_type": "indomain", "label": i % 4} for i in range(n)]
    _jsonl(root / "hellaswag" / "hellaswag_val.jsonl", swag)
    for subject, header in (("anatomy", False), ("astronomy", True)):
        for split in ("test", "dev"):
            path = root / "mmlu" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                if header:  # a header row and 0-3 answers, the other subject as published (letters)
                    writer.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
                for i in range(n if split == "test" else 5):
                    answer = i % 4 if header else "ABCD"[i % 4]
                    writer.writerow([f"What {pick(VERBS)} the {pick(NOUNS)}, {subject}?",
                                     *[f"the {pick(NOUNS)}" for _ in range(4)], answer])
    return root
