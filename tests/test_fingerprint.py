"""Content fingerprints of local checkpoints (twossp.fingerprint), on fake checkpoints built by hand.

The safetensors files are written without torch: an 8-byte little-endian header length, the JSON
header, then raw tensor bytes. Most tests lower ``SMALL_FILE_LIMIT`` to 1 MiB so that files of a
few MB are sampled (16 chunks of 64 KiB) rather than hashed whole, as real shards of GBs are.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twossp import fingerprint as fp
from twossp.errors import DataUnavailable

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """Every test starts with an empty cache and a 1 MiB small-file limit."""
    fp.clear_cache()
    monkeypatch.setattr(fp, "SMALL_FILE_LIMIT", 1 * MB)
    yield
    fp.clear_cache()


def _safetensors(path: Path, tensors: dict[str, bytes], dtype: str = "F32", meta: dict | None = None) -> None:
    header, offset = {}, 0
    for name, data in tensors.items():
        header[name] = {"dtype": dtype, "shape": [len(data) // 4],
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    if meta is not None:
        header["__metadata__"] = meta
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for data in tensors.values():
            f.write(data)


def _checkpoint(root: Path, seed: int = 0, shards: int = 2, shard_mb: int = 4) -> Path:
    """A fake sharded checkpoint: config, tokenizer, index, ``shards`` safetensors of ``shard_mb``
    MB of random bytes, a README and hidden files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (root / "generation_config.json").write_text(json.dumps({"do_sample": False}))
    (root / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
    (root / "README.md").write_text("model card\n")
    weight_map = {}
    rng = _rng(seed)
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        half = shard_mb * MB // 2
        _safetensors(root / name, {f"layers.{i}.a": rng(half), f"layers.{i}.b": rng(half)})
        weight_map.update({f"layers.{i}.a": name, f"layers.{i}.b": name})
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (root / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "x.lock").write_text("lock")
    return root


def _rng(seed: int):
    import random

    gen = random.Random(seed)
    return lambda n: gen.randbytes(n)


def _shard(root: Path, i: int = 1) -> Path:
    return next(p for p in sorted(root.glob("*.safetensors")) if p.name.startswith(f"model-{i:05d}"))


def _data_start(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    _bump_mtime(path)


def _bump_mtime(path: Path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


class _ReadCounter:
    """Counts the bytes twossp.fingerprint reads from files."""

    def __init__(self, monkeypatch):
        self.bytes = self.calls = 0
        real = fp._read_exact

        def counting(f, offset, n, file):
            data = real(f, offset, n, file)
            self.bytes += len(data)
            self.calls += 1
            return data

        monkeypatch.setattr(fp, "_read_exact", counting)


# --- stable where it should be ---------------------------------------------------------------------


def test_fingerprint_is_a_24_char_hex_digest(tmp_path):
    digest = fp.fingerprint_directory(_checkpoint(tmp_path / "m"))
    assert len(digest) == 24 and int(digest, 16) >= 0
    assert fp.fingerprint_directory(str(tmp_path / "m")) == digest  # str or Path


def test_copies_with_other_mtimes_and_paths_give_the_same_fingerprint(tmp_path):
    src = _checkpoint(tmp_path / "src")
    copy = shutil.copytree(src, tmp_path / "elsewhere" / "copy", copy_function=shutil.copy)  # new mtimes
    for p in copy.rglob("*"):
        if p.is_file():
            os.utime(p, (1_000_000, 1_000_000))
    assert fp.fingerprint_directory(src) == fp.fingerprint_directory(copy)


def test_linked_files_like_a_hub_cache_snapshot_give_the_same_fingerprint(tmp_path):
    src = _checkpoint(tmp_path / "src")
    snap, blobs = tmp_path / "snapshots" / "abc", tmp_path / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for p in src.iterdir():
        if p.is_file():
            shutil.copy(p, blobs / p.name)
            (snap / p.name).symlink_to(os.path.relpath(blobs / p.name, snap))
    assert fp.fingerprint_directory(snap) == fp.fingerprint_directory(src)
    (tmp_path / "link").symlink_to(src)  # a link to the folder itself
    assert fp.fingerprint_directory(tmp_path / "link") == fp.fingerprint_directory(src)


def test_hidden_files_and_folders_and_documentation_are_ignored(tmp_path):
    root = _checkpoint(tmp_path / "m")
    before = fp.fingerprint_directory(root)
    (root / ".gitattributes").write_text("changed")
    (root / ".cache" / "huggingface" / "new.lock").write_text("new")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (root / "sub" / ".hidden").mkdir(parents=True)
    (root / "sub" / ".hidden" / "w.safetensors").write_bytes(b"x" * 100)
    (root / "sub" / ".w.bin").write_bytes(b"x" * 100)
    (root / "README.md").write_text("a new model card\n")
    (root / "LICENSE").write_text("Apache-2.0")
    fp.clear_cache()
    assert fp.fingerprint_directory(root) == before


# --- changes that are detected ---------------------------------------------------------------------


def test_one_byte_changed_at_a_sampled_offset_is_detected(tmp_path):
    root = _checkpoint(tmp_path / "m")
    shard = _shard(root)
    before = fp.fingerprint_directory(root)
    start, size = _data_start(shard), shard.stat().st_size
    offsets = fp._sample_offsets(start, size)
    assert len(offsets) == 16 and offsets[0] == start and offsets[-1] + fp.SAMPLE_CHUNK_SIZE == size
    middle = offsets[8] + 1234  # inside the 9th sampled chunk, in the middle of the file
    assert size // 3 < middle < 2 * size // 3
    _flip(shard, middle)
    assert fp.fingerprint_directory(root) != before
    for at in (start, size - 1):  # the first and the last byte of the tensor data are sampled too
        prev = fp.fingerprint_directory(root)
        _flip(shard, at)
        assert fp.fingerprint_directory(root) != prev


def test_known_limit_a_change_between_samples_of_a_large_file_is_not_detected(tmp_path):
    """The documented blind spot: in a file larger than SMALL_FILE_LIMIT, bytes between the sampled
    chunks are not read, so an in-place edit confined to them (same size) keeps the fingerprint.
    Saving a model rewrites every tensor, which the samples catch (next test)."""
    root = _checkpoint(tmp_path / "m")
    shard = _shard(root)
    before = fp.fingerprint_directory(root)
    offsets = fp._sample_offsets(_data_start(shard), shard.stat().st_size)
    gap = offsets[8] + fp.SAMPLE_CHUNK_SIZE + 10
    assert gap < offsets[9]
    _flip(shard, gap)
    assert fp.fingerprint_directory(root) == before


def test_rewriting_the_weights_with_new_values_of_the_same_shapes_is_detected(tmp_path):
    a = _checkpoint(tmp_path / "a", seed=0)
    b = _checkpoint(tmp_path / "b", seed=1)  # a "fine-tune": same names, shapes, sizes, headers
    assert [p.stat().st_size for p in sorted(a.iterdir()) if p.is_file()] == [
        p.stat().st_size for p in sorted(b.iterdir()) if p.is_file()
    ]
    head_a, head_b = (_shard(x).read_bytes()[: _data_start(_shard(x))] for x in (a, b))
    assert head_a == head_b
    assert fp.fingerprint_directory(a) != fp.fingerprint_directory(b)
    # ... also when only one of several shards is rewritten, in the same folder
    root = _checkpoint(tmp_path / "m", seed=0)
    before = fp.fingerprint_directory(root)
    shutil.copy(_shard(b, 2), _shard(root, 2))
    assert fp.fingerprint_directory(root) != before


def test_a_changed_safetensors_header_is_detected(tmp_path):
    root = _checkpoint(tmp_path / "m")
    shard = _shard(root)
    before = fp.fingerprint_directory(root)
    raw = shard.read_bytes()
    start = _data_start(shard)
    header = raw[8:start].replace(b'"F32"', b'"I32"')  # same length, same data, another dtype
    assert len(header) == start - 8 and header != raw[8:start]
    shard.write_bytes(raw[:8] + header + raw[start:])
    assert fp.fingerprint_directory(root) != before


def test_an_added_removed_or_renamed_shard_is_detected(tmp_path):
    root = _checkpoint(tmp_path / "m")
    base = fp.fingerprint_directory(root)
    extra = root / "model-00003-of-00003.safetensors"
    shutil.copy(_shard(root, 2), extra)
    added = fp.fingerprint_directory(root)
    assert added != base
    extra.unlink()
    assert fp.fingerprint_directory(root) == base
    _shard(root, 2).rename(root / "model-00002-of-00002.renamed.safetensors")
    assert fp.fingerprint_directory(root) != base
    (root / "model-00002-of-00002.renamed.safetensors").unlink()
    assert fp.fingerprint_directory(root) not in (base, added)


def test_a_changed_config_or_tokenizer_is_detected(tmp_path):
    root = _checkpoint(tmp_path / "m")
    base = fp.fingerprint_directory(root)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 65}))
    changed = fp.fingerprint_directory(root)
    assert changed != base
    (root / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"b": 0}}}))
    assert fp.fingerprint_directory(root) not in (base, changed)
    (root / "sub").mkdir()
    (root / "sub" / "preprocessor_config.json").write_text("{}")  # files in (non-hidden) subfolders count
    assert len({base, changed, fp.fingerprint_directory(root)}) == 3


def test_a_changed_size_is_detected(tmp_path):
    root = _checkpoint(tmp_path / "m")
    shard = _shard(root)
    before = fp.fingerprint_directory(root)
    with open(shard, "ab") as f:
        f.write(b"\0" * 8)
    assert fp.fingerprint_directory(root) != before


def test_files_that_are_not_safetensors_are_sampled_over_the_whole_file(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text("{}")
    data = bytearray(_rng(3)(3 * MB))
    (root / "pytorch_model.bin").write_bytes(bytes(data))
    (root / "broken.safetensors").write_bytes(b"\xff" * 8 + bytes(data))  # a header length > file size
    before = fp.fingerprint_directory(root)
    for name in ("pytorch_model.bin", "broken.safetensors"):
        _flip(root / name, (root / name).stat().st_size - 1)
        now = fp.fingerprint_directory(root)
        assert now != before
        before = now


def test_a_file_under_the_small_file_limit_is_hashed_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(fp, "SMALL_FILE_LIMIT", 16 * MB)
    root = tmp_path / "m"
    root.mkdir()
    _safetensors(root / "model.safetensors", {"w": _rng(0)(4 * MB)})  # a tiny model: under the limit
    before = fp.fingerprint_directory(root)
    model = root / "model.safetensors"
    offsets = fp._sample_offsets(_data_start(model), model.stat().st_size)
    gap = offsets[8] + fp.SAMPLE_CHUNK_SIZE + 10  # between samples, which a large file would miss
    assert gap < offsets[9]
    _flip(root / "model.safetensors", gap)
    assert fp.fingerprint_directory(root) != before


def test_fingerprint_file_of_a_gguf(tmp_path):
    gguf = tmp_path / "model.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF" + _rng(5)(4 * MB))
    before = fp.fingerprint_file(gguf)
    assert len(before) == 24
    renamed = tmp_path / "other" / "renamed.gguf"
    renamed.parent.mkdir()
    shutil.copy(gguf, renamed)
    assert fp.fingerprint_file(renamed) == before  # the name is not part of a file's fingerprint
    gguf.write_bytes(b"GGUF" + _rng(6)(4 * MB))  # re-quantised: same size, new values
    assert fp.fingerprint_file(gguf) != before
    small = tmp_path / "tiny.gguf"
    small.write_bytes(b"GGUF" + bytes(100))
    assert fp.fingerprint_file(small) != fp.fingerprint_file(gguf)


# --- the cache ---------------------------------------------------------------------------------------


def test_repeated_calls_are_served_from_the_cache(tmp_path, monkeypatch):
    root = _checkpoint(tmp_path / "m")
    counter = _ReadCounter(monkeypatch)
    first = fp.fingerprint_directory(root)
    assert counter.bytes > 0
    counter.bytes = 0
    assert fp.fingerprint_directory(root) == first
    assert fp.fingerprint_directory(tmp_path / "m" / ".." / "m") == first  # the same folder, resolved
    assert counter.bytes == 0


def test_the_cache_is_not_stale_after_a_change_of_size_or_mtime(tmp_path):
    root = _checkpoint(tmp_path / "m")
    shard = _shard(root)
    base = fp.fingerprint_directory(root)
    # same size, new content, new mtime
    raw = bytearray(shard.read_bytes())
    start = _data_start(shard)
    raw[start : start + 100] = bytes(100)
    shard.write_bytes(bytes(raw))
    _bump_mtime(shard)
    same_size = fp.fingerprint_directory(root)
    assert same_size != base
    # new size
    with open(shard, "ab") as f:
        f.write(b"\0" * 8)
    assert fp.fingerprint_directory(root) not in (base, same_size)
    # a single file
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"a" * 1000)
    one = fp.fingerprint_file(gguf)
    gguf.write_bytes(b"b" * 1000)
    _bump_mtime(gguf)
    assert fp.fingerprint_file(gguf) != one


def test_a_file_replaced_with_the_same_size_and_mtime_is_read_again(tmp_path):
    """The cache key also holds the inode and change time: a file replaced by another one (rsync's
    rename into place) with its mtime restored is not served from the cache."""
    root = _checkpoint(tmp_path / "m")
    shard = _shard(root)
    base = fp.fingerprint_directory(root)
    st = shard.stat()
    new = root / "tmp.partial"
    _safetensors(new, {"layers.0.a": _rng(9)(2 * MB), "layers.0.b": _rng(10)(2 * MB)})
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, shard)
    assert shard.stat().st_size == st.st_size and shard.stat().st_mtime_ns == st.st_mtime_ns
    assert fp.fingerprint_directory(root) != base


# --- errors --------------------------------------------------------------------------------------------


def test_missing_or_wrong_paths_raise_data_unavailable(tmp_path):
    with pytest.raises(DataUnavailable, match="no such file"):
        fp.fingerprint_directory(tmp_path / "nope")
    with pytest.raises(DataUnavailable, match="no such file"):
        fp.fingerprint_file(tmp_path / "nope.gguf")
    (tmp_path / "f.gguf").write_bytes(b"GGUF")
    with pytest.raises(DataUnavailable, match="not a folder"):
        fp.fingerprint_directory(tmp_path / "f.gguf")
    with pytest.raises(DataUnavailable, match="not a regular file"):
        fp.fingerprint_file(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("only a card")
    with pytest.raises(DataUnavailable, match="no model file"):
        fp.fingerprint_directory(tmp_path / "empty")


def test_a_broken_link_in_a_folder_raises_data_unavailable(tmp_path):
    root = _checkpoint(tmp_path / "m")
    (root / "model-00003-of-00003.safetensors").symlink_to(tmp_path / "blobs" / "gone")
    with pytest.raises(DataUnavailable, match="broken link"):
        fp.fingerprint_directory(root)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_raises_data_unavailable(tmp_path):
    root = _checkpoint(tmp_path / "m")
    shard = _shard(root)
    shard.chmod(0)
    try:
        with pytest.raises(DataUnavailable, match="permission denied"):
            fp.fingerprint_directory(root)
    finally:
        shard.chmod(0o644)


def test_an_os_error_while_reading_becomes_data_unavailable(tmp_path, monkeypatch):
    """Also checked where the tests run as root (for whom a file's mode does not stop reading)."""
    root = _checkpoint(tmp_path / "m")

    def failing_open(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fp, "open", failing_open, raising=False)
    with pytest.raises(DataUnavailable, match="permission denied") as info:
        fp.fingerprint_directory(root)
    assert not isinstance(info.value, OSError)
    with pytest.raises(DataUnavailable, match="permission denied"):
        fp.fingerprint_file(_shard(root))


def test_a_file_that_shrinks_while_being_read_raises_data_unavailable(tmp_path, monkeypatch):
    root = _checkpoint(tmp_path / "m")
    shard = _shard(root)
    real = fp._read_exact

    def shrinking(f, offset, n, file):
        if Path(file) == shard and offset > 0:
            os.truncate(shard, 100)
        return real(f, offset, n, file)

    monkeypatch.setattr(fp, "_read_exact", shrinking)
    with pytest.raises(DataUnavailable, match="changed while being read"):
        fp.fingerprint_directory(root)


def test_a_folder_that_keeps_changing_raises_data_unavailable(tmp_path, monkeypatch):
    root = _checkpoint(tmp_path / "m")
    real = fp._hash

    def hash_then_touch(target, listing, named):
        digest = real(target, listing, named)
        _bump_mtime(root / "config.json")
        return digest

    monkeypatch.setattr(fp, "_hash", hash_then_touch)
    with pytest.raises(DataUnavailable, match="kept changing"):
        fp.fingerprint_directory(root)


# --- layering and cost ---------------------------------------------------------------------------------


def test_the_module_imports_only_the_standard_library_and_twossp_errors():
    code = (
        "import sys; import twossp.fingerprint; "
        "print(sorted(m for m in sys.modules if m.startswith('twossp') or m in ('torch', 'numpy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["twossp", "twossp.errors", "twossp.fingerprint"])


def test_cost_of_a_200_mb_sparse_weight_file(tmp_path, monkeypatch, capsys):
    """Printed, not asserted on time: a 200 MB file (over the real 16 MiB limit) is read in 16
    chunks of 64 KiB plus its safetensors header, ~1 MiB, whatever its size."""
    monkeypatch.setattr(fp, "SMALL_FILE_LIMIT", 16 * MB)
    root = tmp_path / "big"
    root.mkdir()
    (root / "config.json").write_text("{}")
    shard = root / "model.safetensors"
    _safetensors(shard, {"w": b""})
    with open(shard, "r+b") as f:
        f.truncate(200 * 1000 * 1000)  # sparse: reads cost no disk time, only what is asked for
    counter = _ReadCounter(monkeypatch)
    t0 = time.perf_counter()
    fp.fingerprint_directory(root)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    fp.fingerprint_directory(root)
    cached = time.perf_counter() - t0
    with capsys.disabled():
        print(
            f"\n[fingerprint cost] 200 MB sparse safetensors: read {counter.bytes / MB:.3f} MiB in "
            f"{counter.calls} reads, {cold * 1000:.1f} ms; cached call {cached * 1000:.2f} ms"
        )
    assert counter.bytes < 2 * MB
