"""Content fingerprints of local checkpoints (a ``path:`` model folder or a ``gguf:`` file).

Why: a run's key holds only the path of a local model, so weights replaced in the same folder (a
fine-tune saved over the previous one, a re-download, a re-quantised GGUF) would leave every run
"done" and let ``twossp export`` apply masks computed on the old weights to the new ones. A
fingerprint of the content, put in the key, makes such runs new runs.

What it reads, per file, in sorted order of the file's path relative to the folder:

* a small file (at most :data:`SMALL_FILE_LIMIT`, 16 MiB: ``config.json``,
  ``generation_config.json``, tokenizer files, ``*.index.json``, custom modelling code, and also a
  weight file of a tiny model): its name, its size and its whole content;
* a larger file (weight shards: ``*.safetensors``, ``*.bin``, ``*.pt``, ``*.gguf``, ...): its name,
  its size, for safetensors its header (the 8-byte little-endian header length and the JSON header
  that names every tensor with its dtype, shape and offsets), and :data:`SAMPLE_CHUNKS` (16) chunks
  of :data:`SAMPLE_CHUNK_SIZE` (64 KiB) at evenly spaced offsets over its data (over the tensor
  bytes after the header for safetensors, over the whole file otherwise), the first chunk at the
  start and the last one ending at the end of the file: 1 MiB plus the header, whatever the size.

So a 7B checkpoint (a few shards of ~5 GB) costs about 3-4 MiB of reads and a 70B one (30 shards)
about 30 MiB, done as 18 small reads per shard. Measured on the build machine (2 shared cores, a
virtual disk): a 200 MB safetensors file reads 1.0 MiB in 18 reads, ~2 ms; 30 shards of 5 GB
(sparse files, so no disk latency) read 30.0 MiB (counted by the kernel) in ~45 ms; a 1 GiB file
of random bytes dropped from the page cache takes ~3 ms (1.2 ms warm); a cached repeat call on the
30 shards takes ~0.25 ms. On a spinning disk or a network file system count one seek per chunk
(~10 ms): ~0.2 s per shard, ~5 s for a 70B checkpoint, once per process (see the cache below).

What it detects: a file that appears, disappears or is renamed; any change of size; any change in
a small file; any change of a safetensors header (a tensor added, removed, renamed, re-shaped or
re-typed); and a rewrite of a weight file with new values of the same shapes (a fine-tune, a
re-quantisation), which changes the sampled chunks with overwhelming probability because every
chunk is 64 KiB of dense weights. What it does NOT detect: a change confined to the bytes between
samples of a file larger than :data:`SMALL_FILE_LIMIT` (a few weights edited in place in the middle
of a shard, keeping its size). Such edits are not what saving a model does; hashing every byte to
catch them would cost minutes per 70B checkpoint.

Not part of a fingerprint: modification times (a copy, ``cp -r`` or ``rsync`` of a folder gives the
same fingerprint), the folder's own path (the run key has it already), hidden files and folders
(any name starting with ``.``: ``.git``, ``.cache``, ``.gitattributes``), documentation (``*.md``,
``*.rst``, images, ``LICENSE*``, ``README*``, ``NOTICE*``, ``COPYING*``, ``USE_POLICY*``) and files
that are not regular files. Symbolic links are followed (a Hugging Face cache snapshot, whose files
link to blobs, gives the same fingerprint as a plain copy).

Results are cached per process, keyed by the resolved path and the list of (name, size,
modification time, inode, change time) of the files read, so a repeated call costs one directory
listing and a changed file (new size, new mtime, or replaced by another file) is read again.

This module is in the package's bottom layer: standard library and :mod:`twossp.errors` only.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import threading
from collections import OrderedDict
from pathlib import Path

from twossp.errors import DataUnavailable

#: Files up to this size are hashed whole; larger ones are sampled.
SMALL_FILE_LIMIT = 16 * 1024 * 1024
#: Number of chunks sampled from a large file (first and last included).
SAMPLE_CHUNKS = 16
#: Size of one sampled chunk.
SAMPLE_CHUNK_SIZE = 64 * 1024
#: Hex characters returned (96 bits of sha256).
DIGEST_CHARS = 24

#: The safetensors format caps its JSON header at 100 MB; a longer "header" means the file is not
#: safetensors (it is then sampled like any other file).
_SAFETENSORS_MAX_HEADER = 100_000_000
_VERSION = b"twossp-fingerprint-v1"
_DOC_SUFFIXES = frozenset({".md", ".rst", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".pdf"})
_DOC_PREFIXES = ("LICENSE", "README", "NOTICE", "COPYING", "USE_POLICY")
_READ_BLOCK = 1024 * 1024
_ATTEMPTS = 3
_CACHE_MAX = 256

_cache: OrderedDict[tuple, str] = OrderedDict()
_cache_lock = threading.Lock()

# (relative name, size, mtime_ns, inode, ctime_ns) of one file; name and size enter the hash, the
# rest only the cache key.
_Entry = tuple[str, int, int, int, int]


def fingerprint_directory(path: str | Path) -> str:
    """Content fingerprint of a local checkpoint folder: the first :data:`DIGEST_CHARS` (24) hex
    characters of a sha256 over the folder's model files, their names and sizes (see the module
    docstring for what is read: at most ~1 MiB per weight file).

    Guards against reusing runs and masks after the weights in a folder changed. Raises
    :class:`~twossp.errors.DataUnavailable` when the path is missing, is not a folder, holds no
    model file, or a file cannot be read."""
    root = _resolve(path)
    if not root.is_dir():
        raise DataUnavailable(f"cannot fingerprint {str(path)!r}: not a folder")
    return _fingerprint(root, lambda: _list_directory(root), named=True)


def fingerprint_file(path: str | Path) -> str:
    """Content fingerprint of one local checkpoint file (a GGUF): the same record as for a file
    of a folder (size, safetensors header, 16 sampled chunks of 64 KiB, or the whole file up to
    16 MiB), without the file's name, so a renamed copy has the same fingerprint.

    Raises :class:`~twossp.errors.DataUnavailable` when the path is missing, is not a regular
    file, or cannot be read."""
    file = _resolve(path)
    if not file.is_file():
        raise DataUnavailable(f"cannot fingerprint {str(path)!r}: not a regular file")
    return _fingerprint(file, lambda: [_stat_entry(file, "")], named=False)


def clear_cache() -> None:
    """Forget every cached fingerprint of this process."""
    with _cache_lock:
        _cache.clear()


def _resolve(path: str | Path) -> Path:
    try:
        resolved = Path(path).expanduser().resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        raise DataUnavailable(f"cannot fingerprint {str(path)!r}: {_reason(exc)}") from exc
    return resolved


def _fingerprint(target: Path, list_files, named: bool) -> str:  # noqa: ANN001 - a callable
    params = (SMALL_FILE_LIMIT, SAMPLE_CHUNKS, SAMPLE_CHUNK_SIZE, DIGEST_CHARS)
    listing = list_files()
    for _ in range(_ATTEMPTS):
        key = (str(target), named, params, tuple(listing))
        with _cache_lock:
            hit = _cache.get(key)
            if hit is not None:
                _cache.move_to_end(key)
                return hit
        digest = _hash(target, listing, named)
        after = list_files()
        if after == listing:  # no file changed while it was read
            with _cache_lock:
                _cache[key] = digest
                while len(_cache) > _CACHE_MAX:
                    _cache.popitem(last=False)
            return digest
        listing = after
    raise DataUnavailable(f"cannot fingerprint {str(target)!r}: its files kept changing while being read")


def _hash(target: Path, listing: list[_Entry], named: bool) -> str:
    top = hashlib.sha256()
    _field(top, _VERSION)
    _field(top, struct.pack("<QQQ", SMALL_FILE_LIMIT, SAMPLE_CHUNKS, SAMPLE_CHUNK_SIZE))
    for name, size, *_ in listing:
        file = target / name if named else target
        _field(top, name.encode("utf-8", "surrogateescape") if named else b"")
        _field(top, struct.pack("<Q", size))
        _field(top, _file_digest(file, size))
    return top.hexdigest()[:DIGEST_CHARS]


def _file_digest(file: Path, size: int) -> bytes:
    h = hashlib.sha256()
    try:
        with open(file, "rb", buffering=0) as f:
            if size <= SMALL_FILE_LIMIT:
                h.update(b"whole")
                done = 0
                while done < size:
                    block = _read_exact(f, done, min(_READ_BLOCK, size - done), file)
                    h.update(block)
                    done += len(block)
                return h.digest()
            start = 0
            if file.suffix.lower() == ".safetensors":
                head = _read_exact(f, 0, 8, file)
                (length,) = struct.unpack("<Q", head)
                if 0 < length <= min(_SAFETENSORS_MAX_HEADER, size - 8):
                    h.update(b"safetensors")
                    _field(h, head + _read_exact(f, 8, length, file))
                    start = 8 + length
            h.update(b"sampled")
            for offset in _sample_offsets(start, size):
                h.update(_read_exact(f, offset, min(SAMPLE_CHUNK_SIZE, size - offset), file))
    except OSError as exc:
        raise DataUnavailable(f"cannot fingerprint {str(file)!r}: {_reason(exc)}") from exc
    return h.digest()


def _sample_offsets(start: int, end: int) -> list[int]:
    """Offsets of the sampled chunks of ``[start, end)``: evenly spaced, the first at ``start``,
    the last ending at ``end``; contiguous chunks covering it all when it is shorter than the
    chunks together."""
    span = end - start
    if span <= SAMPLE_CHUNKS * SAMPLE_CHUNK_SIZE:
        return list(range(start, end, SAMPLE_CHUNK_SIZE))
    last = span - SAMPLE_CHUNK_SIZE
    return [start + (i * last) // (SAMPLE_CHUNKS - 1) for i in range(SAMPLE_CHUNKS)]


def _read_exact(f, offset: int, n: int, file: Path) -> bytes:  # noqa: ANN001 - a raw binary file
    """``n`` bytes at ``offset``; a short read means the file shrank while being read."""
    f.seek(offset)
    parts, got = [], 0
    while got < n:
        part = f.read(n - got)
        if not part:
            raise DataUnavailable(f"cannot fingerprint {str(file)!r}: the file changed while being read")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _field(h, data: bytes) -> None:  # noqa: ANN001 - a hashlib object
    """Length-prefixed, so that no two different sequences of fields hash alike."""
    h.update(struct.pack("<Q", len(data)))
    h.update(data)


def _ignored(name: str) -> bool:
    if name.startswith("."):
        return True
    upper = name.upper()
    return os.path.splitext(name)[1].lower() in _DOC_SUFFIXES or upper.startswith(_DOC_PREFIXES)


def _stat_entry(file: Path, name: str) -> _Entry:
    try:
        st = os.stat(file)  # follows symbolic links
    except OSError as exc:
        raise DataUnavailable(f"cannot fingerprint {str(file)!r}: {_reason(exc)}") from exc
    return (name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def _list_directory(root: Path) -> list[_Entry]:
    """Every model file under ``root`` (following links, skipping hidden and documentation
    names), sorted by relative name."""
    entries: list[_Entry] = []
    seen: set[tuple[int, int]] = set()

    def walk(folder: Path, prefix: str) -> None:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already listed
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise DataUnavailable(f"cannot fingerprint {str(folder)!r}: {_reason(exc)}") from exc
        for child in children:
            if _ignored(child.name):
                continue
            name = prefix + child.name
            try:
                st = child.stat()  # follows symbolic links
            except OSError as exc:
                raise DataUnavailable(f"cannot fingerprint {child.path!r}: {_reason(exc)}") from exc
            if stat.S_ISDIR(st.st_mode):
                walk(Path(child.path), name + "/")
            elif stat.S_ISREG(st.st_mode):
                entries.append((name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))

    walk(root, "")
    if not entries:
        raise DataUnavailable(f"cannot fingerprint {str(root)!r}: the folder holds no model file")
    entries.sort(key=lambda e: e[0])
    return entries


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file or folder (or a broken link)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
