"""Atomic file writes: a reader (or an interrupted run) never sees a half-written file.

Everything the library persists — dataset files, checkpoints, results, figures — goes through
:func:`atomic_path`: the content is written to a temporary file in the target folder, flushed to disk,
and moved into place with :func:`os.replace` (atomic on POSIX). On any error the temporary file is
removed and the previous version of the target, if any, is left untouched.
"""

from __future__ import annotations

import hashlib

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers can infer the format);
    on a clean exit it is fsynced, given ``mode`` and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, **kwargs: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **kwargs) + "\n")


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
