"""Reader for Qt binary resource files (``.rcc``).

GCompris ships its pictures and recordings inside Qt resource containers
(``/usr/share/gcompris-qt/rcc/*.rcc``). The format is small and documented by Qt's
``rcc`` tool (``src/tools/rcc/rcc.cpp``), all integers big-endian:

* **header** -- ``b"qres"``, ``version`` (u32), ``tree_offset`` (u32), ``data_offset`` (u32),
  ``names_offset`` (u32), and for version >= 3 an ``overall_flags`` word (u32).
* **tree** -- fixed-size entries addressed by index; entry 0 is the root directory.
  Every entry starts with ``name_offset`` (u32) and ``flags`` (u16):

  - directory (``flags & 2``): ``child_count`` (u32), ``first_child`` (u32, an entry index);
  - file: ``territory`` (u16), ``language`` (u16), ``data_offset`` (u32, relative to the data block);

  and, for version >= 2, an 8-byte modification time (ms since epoch). So an entry is 14 bytes
  (version 1) or 22 bytes (versions 2 and 3).
* **names** -- at ``names_offset + name_offset``: ``length`` (u16, in UTF-16 code units),
  ``hash`` (u32, ``qt_hash`` of the name), then the name in UTF-16BE.
* **data** -- at ``data_offset + entry.data_offset``: ``size`` (u32) then ``size`` bytes. With
  the ``Compressed`` flag (1) the payload is ``qCompress`` output: a u32 uncompressed size followed by
  a zlib stream. The ``CompressedZstd`` flag (4) marks a zstd payload (not produced by the Debian
  GCompris files; decoded when the optional :mod:`zstandard` module is importable).

:func:`read_rcc` returns every file as ``{"dir/sub/name.ext": bytes}``.
"""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path

__all__ = ["RccError", "read_rcc", "list_rcc", "FLAG_COMPRESSED", "FLAG_DIRECTORY", "FLAG_ZSTD"]

FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_ZSTD = 0x04
MAGIC = b"qres"


class RccError(ValueError):
    """A ``.rcc`` file is not a Qt resource file or is damaged; the message names the file."""


class _Reader:
    def __init__(self, blob: bytes, path: str):
        self.blob = blob
        self.path = path

    def fail(self, what: str) -> RccError:
        return RccError(
            f"{self.path}: not a readable Qt resource file ({what}); "
            "re-install the package that provides it (e.g. `apt-get install --reinstall -y gcompris-qt-data`)"
        )

    def u16(self, off: int) -> int:
        if off < 0 or off + 2 > len(self.blob):
            raise self.fail(f"truncated: u16 at offset {off} beyond {len(self.blob)} bytes")
        return struct.unpack_from(">H", self.blob, off)[0]

    def u32(self, off: int) -> int:
        if off < 0 or off + 4 > len(self.blob):
            raise self.fail(f"truncated: u32 at offset {off} beyond {len(self.blob)} bytes")
        return struct.unpack_from(">I", self.blob, off)[0]

    def bytes_(self, off: int, n: int) -> bytes:
        if off < 0 or off + n > len(self.blob):
            raise self.fail(f"truncated: {n} bytes at offset {off} beyond {len(self.blob)} bytes")
        return self.blob[off : off + n]


def _parse(blob: bytes, path: str, *, decode: bool) -> dict[str, bytes | int]:
    r = _Reader(blob, path)
    if len(blob) < 20:
        raise r.fail(f"truncated: {len(blob)} bytes, shorter than the 20-byte header")
    if blob[:4] != MAGIC:
        raise r.fail(f"bad magic {blob[:4]!r}, expected {MAGIC!r}")
    version = r.u32(4)
    if version not in (1, 2, 3):
        raise r.fail(f"unsupported format version {version}")
    tree_off, data_off, names_off = r.u32(8), r.u32(12), r.u32(16)
    entry_size = 14 if version == 1 else 22

    def name_at(name_off: int) -> str:
        off = names_off + name_off
        n = r.u16(off)
        raw = r.bytes_(off + 6, 2 * n)
        return raw.decode("utf-16-be")

    out: dict[str, bytes | int] = {}
    seen: set[int] = set()

    def walk(index: int, prefix: str, depth: int) -> None:
        if depth > 64:
            raise r.fail("directory tree deeper than 64 levels (corrupt tree)")
        if index in seen:
            raise r.fail(f"tree entry {index} visited twice (corrupt tree)")
        seen.add(index)
        e = tree_off + index * entry_size
        flags = r.u16(e + 4)
        if flags & FLAG_DIRECTORY:
            count, first = r.u32(e + 6), r.u32(e + 10)
            if count > len(blob) // entry_size:
                raise r.fail(f"directory entry {index} claims {count} children")
            for child in range(first, first + count):
                ce = tree_off + child * entry_size
                cname = name_at(r.u32(ce))
                walk(child, f"{prefix}{cname}/" if r.u16(ce + 4) & FLAG_DIRECTORY else prefix + cname, depth + 1)
            return
        doff = data_off + r.u32(e + 10)
        size = r.u32(doff)
        if not decode:
            out[prefix] = size
            return
        payload = r.bytes_(doff + 4, size)
        if flags & FLAG_COMPRESSED:
            if size < 4:
                raise r.fail(f"compressed entry {prefix!r} shorter than its size prefix")
            expected = struct.unpack_from(">I", payload, 0)[0]
            try:
                payload = zlib.decompress(payload[4:])
            except zlib.error as exc:
                raise r.fail(f"entry {prefix!r}: zlib stream is corrupt ({exc})") from exc
            if len(payload) != expected:
                raise r.fail(f"entry {prefix!r}: inflated to {len(payload)} bytes, header says {expected}")
        elif flags & FLAG_ZSTD:
            try:
                import zstandard  # type: ignore[import-not-found]
            except ImportError as exc:  # pragma: no cover - not used by the Debian files
                raise r.fail(f"entry {prefix!r} is zstd-compressed; `pip install zstandard` to read it") from exc
            payload = zstandard.ZstdDecompressor().decompress(payload, max_output_size=1 << 31)
        out[prefix] = payload

    root_flags = r.u16(tree_off + 4)
    if not root_flags & FLAG_DIRECTORY:
        raise r.fail("root tree entry is not a directory")
    walk(0, "", 0)
    return out


def read_rcc(path: str | Path) -> dict[str, bytes]:
    """All files of a Qt ``.rcc`` resource file, keyed by their full resource path (no leading ``/``).

    Raises :class:`FileNotFoundError` when ``path`` does not exist and :class:`RccError`
    (a :class:`ValueError`) naming the file on a bad magic, an unknown version or truncated/corrupt data.
    """
    path = Path(path)
    blob = path.read_bytes()
    return _parse(blob, str(path), decode=True)  # type: ignore[return-value]


def list_rcc(path: str | Path) -> dict[str, int]:
    """``{resource path: stored (possibly compressed) size}`` without decompressing anything."""
    path = Path(path)
    return _parse(path.read_bytes(), str(path), decode=False)  # type: ignore[return-value]


@functools.lru_cache(maxsize=8)
def cached_rcc(path: str) -> dict[str, bytes]:
    """:func:`read_rcc` memoised per path (the GCompris files are a few MB each)."""
    return read_rcc(path)


def rcc_entry(path: str | Path, entry: str) -> bytes:
    """One file of an ``.rcc``; :class:`KeyError` naming the file and the entry when it is absent."""
    files = cached_rcc(str(path))
    try:
        return files[entry]
    except KeyError:
        raise KeyError(f"{path}: no resource {entry!r} (it holds {len(files)} files)") from None
