"""Persistence helpers: atomic file writes, and configurations as JSON-ready dicts.

Atomic writes: a reader (or an interrupted run) never sees a half-written file.

Everything the library persists — dataset files, checkpoints, results, figures — goes through
:func:`atomic_path`: the content is written to a temporary file in the target folder, flushed to disk,
and moved into place with :func:`os.replace` (atomic on POSIX). On any error the temporary file is
removed and the previous version of the target, if any, is left untouched.

Configurations (frozen dataclasses) are stored as JSON: :func:`config_to_dict` gives the
JSON-ready dict (nested dataclasses as dicts, tuples as lists) and :func:`config_from_dict` builds
the dataclass back from it (nested dataclasses and tuples restored).
"""

from __future__ import annotations

import dataclasses
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


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict: nested dataclasses become dicts, tuples lists
    (round-trips through :func:`config_from_dict`)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, d: dict[str, Any], *, ignore_unknown: bool = False) -> Any:
    """Inverse of :func:`config_to_dict`: the dataclass ``cls`` from ``d``, recursing into fields whose
    default is a dataclass and turning lists back into tuples where the default is a tuple, None or
    missing. A field absent from ``d`` takes the value the class's ``fingerprint_defaults`` declares for
    it (a field added after configurations were stored: the value they were made with), else its default.

    Raises:
        KeyError: ``d`` has a key that is not a field of ``cls`` (unless ``ignore_unknown``).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw = {}
    for name, value in d.items():
        if name not in fields:
            if ignore_unknown:
                continue
            raise KeyError(f"{cls.__name__} has no field {name!r}")
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = config_from_dict(type(default), value)
        elif isinstance(value, list) and (isinstance(default, tuple) or default is dataclasses.MISSING or default is None):
            value = tuple(value)
        kw[name] = value
    for name, value in getattr(cls, "fingerprint_defaults", {}).items():
        if name in fields and name not in d:
            kw[name] = value
    return cls(**kw)
