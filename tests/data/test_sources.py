"""Text sources: local files in every format, the offline Lee split, and the no-hub error."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twossp.data import hub
from twossp.data.sources import load_documents, load_text
from twossp.errors import DataUnavailable
from twossp.spec import FileSource


def test_plain_text_is_one_document_with_carriage_returns_removed(tmp_path):
    path = tmp_path / "wiki.raw"
    path.write_bytes(b" = Title = \r\n Some text .\r\n")
    assert load_documents(FileSource(path=str(path))) == [" = Title = \n Some text .\n"]


def test_jsonl_rows_with_a_chosen_field_and_a_limit(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"doc {i}", "id": i}) for i in range(5)) + "\n\n")
    source = FileSource(path=str(path), text_field="body", max_documents=3)
    assert load_documents(source) == ["doc 0", "doc 1", "doc 2"]
    assert load_text(source) == "doc 0\n\ndoc 1\n\ndoc 2"


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(DataUnavailable, match=r"bad.jsonl:2: no field 'text'"):
        load_documents(FileSource(path=str(path)))
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DataUnavailable, match=r"bad.jsonl:2: not a JSON line"):
        load_documents(FileSource(path=str(path)))


def test_parquet_rows(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["a", "b", None, "c"], "n": [1, 2, 3, 4]}), path)
    assert load_documents(FileSource(path=str(path))) == ["a", "b", "c"]
    with pytest.raises(DataUnavailable, match="no column 'body'"):
        load_documents(FileSource(path=str(path), text_field="body"))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataUnavailable, match="text file not found"):
        load_documents(FileSource(path=str(tmp_path / "nope.txt")))


def test_seed_zero_keeps_file_order_and_other_seeds_shuffle(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(20)))
    source = FileSource(path=str(path))
    assert load_text(source, 0).split("\n\n") == [f"doc {i}" for i in range(20)]
    shuffled = load_text(source, 1).split("\n\n")
    assert sorted(shuffled) == sorted(f"doc {i}" for i in range(20)) and shuffled != load_text(source, 0).split("\n\n")
    assert load_text(source, 1) == load_text(source, 1)


def test_lee_calibration_and_evaluation_are_disjoint_halves_of_the_corpus():
    calibration, evaluation = load_documents("lee-calibration"), load_documents("lee-evaluation")
    assert len(calibration) == 200 and len(evaluation) == 100
    assert not set(calibration) & set(evaluation)
    assert calibration[0].startswith("Hundreds of people have been forced to vacate their homes")


@pytest.fixture
def no_hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("HF_HOME", "/nonexistent-twossp-test-cache")
    hub.unreachable_reason.cache_clear()
    yield
    hub.unreachable_reason.cache_clear()


def test_unreachable_hub_is_one_error_naming_the_file_and_the_way_out(no_hub):
    with pytest.raises(DataUnavailable) as info:
        load_documents("c4-train")
    message = str(info.value)
    assert "en/c4-train.00000-of-01024.json.gz" in message
    assert "cannot connect to 127.0.0.1:9" in message
    assert "{path:" in message and "lee-calibration" in message


def test_offline_flag_is_reported(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-twossp-test-cache")
    hub.unreachable_reason.cache_clear()
    try:
        with pytest.raises(DataUnavailable, match="HF_HUB_OFFLINE is set"):
            load_documents("wikitext2")
    finally:
        hub.unreachable_reason.cache_clear()


def test_unreachable_hub_model_is_one_error(no_hub):
    from twossp.runtime.loading import load_config
    from twossp.spec import ModelSpec

    with pytest.raises(DataUnavailable, match=r"model 'meta-llama/Llama-2-7b-hf'.*give its directory as `path:`"):
        load_config(ModelSpec(hub="meta-llama/Llama-2-7b-hf"))
