"""The manifest of a built benchmark: one Parquet row per scene, plus the clip table.

``manifest.parquet`` columns (paths are relative to the build folder; per-source lists are in
source order, length ``n_sources``):

=======================  ======================  ===============================================
column                   type                    meaning
=======================  ======================  ===============================================
scene_id                 string                  ``<split>-<task>-<layout>-<index>``
split                    string                  train, val, test, test_style, test_audio,
                                                 test_zeroshot, test_real
task                     string                  solo, duet, trio, quartet
layout                   string                  ``scene`` (one frame, several objects) or
                                                 ``concat`` (two one-source frames side by side)
n_sources                int64                   sounding sources (1-4)
height, width            int64                   image size (224 x 224, or 224 x 448 for concat)
image_path               string                  the RGB frame (PNG)
mask_paths               list<string>            visible-part mask of each source (1-bit PNG)
classes                  list<string>            class of each source
class_ids                list<int64>             index in :data:`avgn.data.classes.CLASS_NAMES`
boxes                    list<list<double>>      tight box of each mask, normalised
                                                 ``[x1, y1, x2, y2]`` (x by width, y by height)
boxes_px                 list<list<int64>>       the same in pixels, ``x2``/``y2`` exclusive
visibility               list<double>            visible / full pixels of each source
areas                    list<double>            visible pixels / image pixels
gains_db                 list<double>            gain of each clip in the mixture (dB)
clip_ids, clip_paths     list<string>            the clip of each source (``clips.parquet``)
audio_sources            list<string>            audio source name (fluidr3, gcompris, ...)
audio_keys               list<string>            audio source key
audio_real               list<bool>              recorded (True) or synthesised (False)
visual_keys              list<string>            sprite key of each source
visual_sources           list<string>            sprite source (tuxpaint, noto, twemoji, ...)
visual_styles            list<string>            photo, drawing or emoji
distractor_classes       list<string>            silent objects pasted in the frame(s)
distractor_keys          list<string>            their sprite keys
distractor_sources       list<string>            their sprite sources
backgrounds              list<string>            background key per frame
mixture_path             string (null)           stored mixture (val / test); null for train
snr_db                   double (null)           mixture-to-noise ratio; null: no noise
seed                     int64                   the scene's seed
=======================  ======================  ===============================================

``clips.parquet``: ``clip_id, class, audio_source, audio_key, kind, real, index, part, path, seed``
(``part`` is the split the clip is reserved for: train, val or test).

The Parquet files are written with an explicit schema, no index and no timestamps, so the same
rows give the same bytes.
"""

from __future__ import annotations

import functools

import io
import json
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST_COLUMNS",
    "manifest_schema",
    "clip_schema",
    "write_manifest",
    "write_clip_table",
    "load_manifest",
    "load_clip_table",
    "load_build_info",
    "split_summary",
]


def manifest_schema():
    """The :class:`pyarrow.Schema` of ``manifest.parquet``."""
    import pyarrow as pa

    s, i, d, b = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    return pa.schema(
        [
            ("scene_id", s),
            ("split", s),
            ("task", s),
            ("layout", s),
            ("n_sources", i),
            ("height", i),
            ("width", i),
            ("image_path", s),
            ("mask_paths", pa.list_(s)),
            ("classes", pa.list_(s)),
            ("class_ids", pa.list_(i)),
            ("boxes", pa.list_(pa.list_(d))),
            ("boxes_px", pa.list_(pa.list_(i))),
            ("visibility", pa.list_(d)),
            ("areas", pa.list_(d)),
            ("gains_db", pa.list_(d)),
            ("clip_ids", pa.list_(s)),
            ("clip_paths", pa.list_(s)),
            ("audio_sources", pa.list_(s)),
            ("audio_keys", pa.list_(s)),
            ("audio_real", pa.list_(b)),
            ("visual_keys", pa.list_(s)),
            ("visual_sources", pa.list_(s)),
            ("visual_styles", pa.list_(s)),
            ("distractor_classes", pa.list_(s)),
            ("distractor_keys", pa.list_(s)),
            ("distractor_sources", pa.list_(s)),
            ("backgrounds", pa.list_(s)),
            ("mixture_path", s),
            ("snr_db", d),
            ("seed", i),
        ]
    )


MANIFEST_COLUMNS: tuple[str, ...] = (
    "scene_id split task layout n_sources height width image_path mask_paths classes class_ids boxes "
    "boxes_px visibility areas gains_db clip_ids clip_paths audio_sources audio_keys audio_real visual_keys "
    "visual_sources visual_styles distractor_classes distractor_keys distractor_sources backgrounds mixture_path snr_db seed"
).split()


def clip_schema():
    """The :class:`pyarrow.Schema` of ``clips.parquet``."""
    import pyarrow as pa

    return pa.schema(
        [
            ("clip_id", pa.string()),
            ("class", pa.string()),
            ("audio_source", pa.string()),
            ("audio_key", pa.string()),
            ("kind", pa.string()),
            ("real", pa.bool_()),
            ("index", pa.int64()),
            ("part", pa.string()),
            ("path", pa.string()),
            ("seed", pa.int64()),
        ]
    )


def _write_table(path: Path, rows: list[dict[str, Any]], schema) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avgn.io import atomic_write_bytes

    cols = {name: [r[name] for r in rows] for name in schema.names}
    table = pa.Table.from_pydict(cols, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return atomic_write_bytes(Path(path), buf.getvalue())


def write_manifest(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write scene rows (dicts with :data:`MANIFEST_COLUMNS`) as ``manifest.parquet``, atomically."""
    return _write_table(Path(path), rows, manifest_schema())


def write_clip_table(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write clip rows as ``clips.parquet``, atomically."""
    return _write_table(Path(path), rows, clip_schema())


def _resolve(root: str | Path) -> tuple[Path, Path]:
    p = Path(root)
    if p.is_dir():
        return p, p / "manifest.parquet"
    return p.parent, p


def load_manifest(root: str | Path, split: str | None = None):
    """The manifest of a build (folder or ``manifest.parquet`` path) as a :class:`pandas.DataFrame`.

    List columns come back as Python lists. ``split`` keeps the rows of one split.

    Raises:
        FileNotFoundError: no manifest (the build has not finished: run ``avgn data build``).
    """
    folder, path = _resolve(root)
    if not path.is_file():
        raise FileNotFoundError(
            f"no manifest at {path}: build the benchmark first (`avgn data build --out {folder}`)"
        )
    st = path.stat()
    df = _read_manifest(str(path.resolve()), st.st_mtime_ns, st.st_size).copy()  # callers may modify their copy
    if split is not None:
        df = df[df["split"] == split].reset_index(drop=True)
    return df


@functools.lru_cache(maxsize=4)
def _read_manifest(path: str, mtime_ns: int, size: int):
    """Decode a manifest once per process and file version (keyed by path, mtime and size: a
    rebuilt manifest is read again). Decoding the list columns takes ~1 s for the ``cpu`` build and
    every evaluation set opens the manifest."""
    import pyarrow.parquet as pq

    del mtime_ns, size  # part of the cache key only
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise ValueError(f"cannot read manifest {path}: {exc}; rebuild it (delete it and rerun the build)") from exc
    import pandas as pd
    import pyarrow as pa

    cols = {}
    for name in table.column_names:
        col = table.column(name)
        nested = pa.types.is_list(col.type) or pa.types.is_string(col.type)
        cols[name] = pd.Series(col.to_pylist(), dtype=object) if nested else col.to_pandas()
    return pd.DataFrame(cols)


def load_clip_table(root: str | Path):
    """``clips.parquet`` of a build as a :class:`pandas.DataFrame`."""
    import pandas as pd

    folder, _ = _resolve(root)
    path = folder / "clips.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no clip table at {path}: build the benchmark first")
    return pd.read_parquet(path)


def load_build_info(root: str | Path) -> dict[str, Any]:
    """``build.json`` of a build (config, versions, class lists, counts)."""
    folder, _ = _resolve(root)
    path = folder / "build.json"
    if not path.is_file():
        raise FileNotFoundError(f"no build.json at {path}: build the benchmark first")
    return json.loads(path.read_text())


def split_summary(df):
    """Scenes per split / task / layout, with mean objects, mean source area and noise share."""
    import numpy as np
    import pandas as pd

    d = df.assign(
        n_objects=df["n_sources"] + df["distractor_classes"].map(len),
        mean_area=df["areas"].map(lambda a: float(np.mean(a))),
        noisy=df["snr_db"].notna(),
    )
    g = d.groupby(["split", "task", "layout"], sort=False)
    out = pd.DataFrame(
        {
            "scenes": g.size(),
            "classes": g["classes"].agg(lambda s: len({c for v in s for c in v})),
            "objects/scene": g["n_objects"].mean().round(2),
            "source area": g["mean_area"].mean().round(3),
            "noisy": g["noisy"].mean().round(2),
        }
    )
    return out.reset_index()
