"""Start-up checks of the Criteo files named in `data.path`: a user mistake (a missing file, a
directory, a compressed download) gets one clear sentence before any work, not a parse traceback."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

# leading bytes of the compressed formats Criteo is distributed in (or users tend to produce)
_MAGIC = {b"\x1f\x8b": "gzip (decompress it first: gunzip -k FILE)",
          b"BZh": "bzip2 (decompress it first: bunzip2 -k FILE)",
          b"\xfd7zXZ\x00": "xz (decompress it first: unxz -k FILE)",
          b"\x28\xb5\x2f\xfd": "zstd (decompress it first: unzstd FILE)",
          b"PK\x03\x04": "a zip archive (extract the TSV first: unzip FILE)"}
_SNIFF = 4096
_HASH_SPAN = 1 << 20  # bytes hashed at each end of a file for the cache identity


def check_tsv_file(item: str | os.PathLike) -> str | None:
    """None when `item` looks like a readable Criteo TSV, else a sentence naming the file and the fix."""
    path = Path(item)
    if not path.exists():
        return f"{str(path)!r} does not exist"
    if path.is_dir():
        return f"{str(path)!r} is a directory; name the TSV files in it (e.g. {path}/train.txt)"
    if not path.is_file():
        return f"{str(path)!r} is not a regular file"
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF)
    except OSError as exc:
        return f"{str(path)!r} cannot be read ({exc.strerror})"
    if not head:
        return f"{str(path)!r} is empty"
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return f"{str(path)!r} is {what.replace('FILE', str(path))}"
    if b"\x00" in head:
        return f"{str(path)!r} is a binary file, not a tab-separated Criteo text file"
    return None


def file_identity(path: Path) -> dict:
    """What tells one version of a TSV from another cheaply: size, mtime and sha256 of head and tail.
    (An edit that keeps the size and the mtime and touches only the middle goes unseen; touching
    the file or editing either end forces a rebuild.)"""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(_HASH_SPAN))
        if stat.st_size > 2 * _HASH_SPAN:
            handle.seek(stat.st_size - _HASH_SPAN)
        digest.update(handle.read(_HASH_SPAN))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_tail_sha256": digest.hexdigest()}


def repeated_file(items: list[str | os.PathLike]) -> str | None:
    """None when every file of `items` is a different file with different contents, else a
    sentence naming the pair: a file read twice puts its rows in two splits at once."""
    seen: dict[tuple, Path] = {}
    for item in items:
        path = Path(item)
        stat = path.stat()
        identity = file_identity(path)
        for key, why in (((stat.st_dev, stat.st_ino), "the same file"),
                         ((identity["size"], identity["head_tail_sha256"]), "the same contents")):
            if key in seen:
                return f"{str(path)!r} and {str(seen[key])!r} are {why}; list each file once"
            seen[key] = path
    return None
