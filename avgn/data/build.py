"""Build the embedded audio-visual mixture benchmark: ``avgn data build --profile P --seed S --out DIR``.

What a build makes (all paths relative to ``out``; the manifest schema is in :mod:`avgn.data.manifest`):

``audio/clips/<class>/<pool>_<i>.flac``
    The audio pools: for every (class, audio source) pair ``clips_per_source`` clips of
    ``clip_seconds`` s, 16 kHz mono, loudness-normalised by :func:`avgn.data.clips.render_clips`.
    Every pool is cut into disjoint train / val / test parts (``clip_split``); pools of held-out
    classes, of the held-out audio source (and of recordings when ``real_audio_in_train`` is off)
    belong to test only. ``clips.parquet`` lists every clip and its part.
``images/<split>/<scene>.png`` and ``masks/<split>/<scene>_s<k>.png``
    The frames (:mod:`avgn.data.scenes`) and the visible mask of every sounding source.
``audio/mixtures/<split>/<scene>.flac``
    The fixed mixtures of every val / test scene: ``sum_k 10**(g_k/20) * clip_k`` with ``g_k``
    uniform in ``gain_db_range`` (0 dB for a single source), plus, with probability
    ``noise_prob``, pink noise at an SNR uniform in ``noise_snr_db``; peak-protected by
    :func:`avgn.data.audio.mix`. Training scenes have no stored mixture: the training datasets
    draw gains (and partners) on the fly.
``manifest.parquet`` (one row per scene), ``build.json`` (config, versions, statistics),
``build_config.json`` (written first; what a resumed build must match).

Splits (the ``split`` column):

* ``train`` / ``val`` / ``test`` -- seen classes, seen visual and audio sources. ``train``: solo
  scenes (``train_solo_per_class`` per class) and pre-built ``scene``-layout duets; ``val``: solo
  and duets (``scene`` + ``concat``); ``test``: solo, duets (both layouts), trios and quartets
  (``scene``).
* ``test_style`` -- every object drawn from the held-out visual source (``heldout_visual_source``).
* ``test_audio`` -- every clip from the held-out audio source (``heldout_audio_source``).
* ``test_zeroshot`` -- sounding objects of the held-out classes only (never in train / val; never
  even as distractors there).
* ``test_real`` -- recorded (not synthesised) audio only.

Every shifted split has solo scenes and duets in both layouts.

Determinism: every scene is a pure function of ``(seed, split, task, layout, index)`` -- its plan
(classes, assets, clips, gains, noise) and its geometry come from two
:class:`numpy.random.Generator` streams seeded from that tuple -- so the output does not depend on
the number of worker processes, and two builds are byte-identical (PNG and FLAC carry no
timestamps; the Parquet writer is fed the same table).

Resuming: work is done in units (one audio pool, one chunk of ``chunk_size`` scenes); a unit's
files are written under temporary names and moved into place, then a small record of the unit goes
to ``.parts/``. A rerun with the same arguments skips finished units; the manifest is written
last, and a build whose manifest exists returns at once. A rerun with other settings (or after the
installed assets changed) raises :class:`BuildConfigMismatchError`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from avgn.io import atomic_write_bytes, atomic_write_text
from avgn.data.config import DATA_PROFILES, DataConfig
from avgn.data.planning import SHIFT_SPLITS, SPLITS, CatalogProvider, Pool, _crc, _seed_of, catalog_fingerprint, collect_universe, plan_groups, plan_scenes
from avgn.data.render import _load_sprites, _map, _render_chunk_task, _render_pools, _sprite_key

__all__ = [
    "SPLITS",
    "SHIFT_SPLITS",
    "FORMAT_VERSION",
    "BuildConfigMismatchError",
    "CatalogProvider",
    "build_dataset",
    "dataset_dir",
    "plan_groups",
    "collect_universe",
    "catalog_fingerprint",
    "plan_scenes",
    "atomic_write_bytes",
    "atomic_write_text",
]


FORMAT_VERSION = 1


class BuildConfigMismatchError(ValueError):
    """The output folder holds (part of) a build made with different settings."""


def _json_dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------------
# the build
# --------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import PIL
    import pyarrow
    import soundfile

    import avgn

    return {
        "avgn": avgn.__version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "soundfile": soundfile.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
        "pyarrow": pyarrow.__version__,
    }


def _check_config(out: Path, build_config: dict) -> None:
    path = out / "build_config.json"
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BuildConfigMismatchError(
                f"{path} is unreadable ({exc}); delete {out} or choose another --out"
            ) from exc
        if stored != build_config:
            diff = sorted(
                k
                for k in set(stored) | set(build_config)
                if k != "config" and stored.get(k) != build_config.get(k)
            )
            sc, nc = stored.get("config", {}), build_config.get("config", {})
            diff += sorted(f"config.{k}" for k in set(sc) | set(nc) if sc.get(k) != nc.get(k))
            raise BuildConfigMismatchError(
                f"{out} already holds a build made with different settings (differs in: {', '.join(diff)}; "
                f"stored profile={stored.get('profile')!r}, seed={stored.get('seed')!r}). "
                f"Choose another --out, or delete {out} to rebuild it."
            )
    else:
        atomic_write_text(path, _json_dumps(build_config))


def dataset_dir(data_dir: str | Path, profile: str, seed: int = 0) -> Path:
    """Where the book keeps the build of a profile: ``data_dir/<profile>`` (``<profile>_seed<S>`` for
    seeds other than 0), so builds of different profiles / seeds never collide. Every chapter finds
    the data with this function."""
    return Path(data_dir) / (profile if int(seed) == 0 else f"{profile}_seed{int(seed)}")


def build_dataset(
    profile: str = "cpu",
    seed: int = 0,
    out: str | Path = "data/embedded",
    progress: bool = True,
    *,
    config: DataConfig | None = None,
    workers: int | None = None,
    provider=None,
) -> Path:
    """Build (or resume, or just return) the embedded benchmark; returns the manifest path.

    Args:
        profile: ``smoke`` | ``cpu`` | ``gpu`` (see :data:`avgn.data.config.DATA_PROFILES`).
        seed: the build seed; the output is a pure function of (config, seed, installed assets).
        out: output folder (created).
        progress: show tqdm progress bars.
        config: use this :class:`DataConfig` instead of the profile's (the profile name is still
            recorded).
        workers: rendering processes (default: ``min(8, cpu count)``); the output does not depend
            on it.
        provider: the asset provider (default :class:`CatalogProvider`; tests pass a fake).

    Raises:
        avgn.data.assets.AssetMissingError: an asset package is not installed (never substituted).
        BuildConfigMismatchError: ``out`` holds a build with other settings.
    """
    if config is None:
        if profile not in DATA_PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(DATA_PROFILES)}")
        config = DATA_PROFILES[profile]
    cfg = config
    provider = provider if provider is not None else CatalogProvider()
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    uni = collect_universe(cfg, provider)
    build_config = {
        "format_version": FORMAT_VERSION,
        "profile": profile,
        "seed": int(seed),
        "config": cfg.to_dict(),
        "catalog_sha256": catalog_fingerprint(uni),
    }
    _check_config(out, build_config)
    manifest_path = out / "manifest.parquet"
    if manifest_path.exists() and (out / "build.json").exists():
        return manifest_path

    parts = out / ".parts"
    pool_rows = _build_pools(uni, cfg, seed, out, parts, workers, provider, progress)
    plans, skipped = plan_scenes(uni, seed)
    chunks, chunk_rows = _build_scenes(uni, plans, cfg, out, parts, workers, provider, progress)
    # ---- manifest (last) -------------------------------------------------------------------------
    from avgn.data.manifest import write_clip_table, write_manifest

    rows = [r for gname, k, _ in chunks for r in chunk_rows[(gname, k)]]
    clip_rows = [r for p in uni.pools for r in pool_rows[p.pool_id]]
    write_clip_table(out / "clips.parquet", clip_rows)
    info = {
        **build_config,
        "versions": _versions(),
        "classes": list(uni.class_names),
        "heldout_classes": list(uni.heldout),
        "excluded_classes": dict(sorted(uni.excluded.items())),
        "split_classes": {s: uni.split_classes(s) for s in SPLITS},
        "skipped_groups": dict(sorted(skipped.items())),
        "n_scenes": len(rows),
        "n_clips": len(clip_rows),
        "counts": _stats(rows),
    }
    atomic_write_text(out / "build.json", _json_dumps(info))
    write_manifest(manifest_path, rows)
    return manifest_path


def _build_pools(uni: Any, cfg: DataConfig, seed: int, out: Path, parts: Path, workers: int, provider: Any,
                 progress: bool) -> dict[str, list[dict]]:
    """Render the audio pools not yet recorded in ``parts/clips`` (one unit per audio source: a
    soundfont is loaded once per unit); returns every pool's clip rows by pool id."""
    from tqdm import tqdm

    pool_rows: dict[str, list[dict]] = {}
    units: dict[str, list[Pool]] = {}
    for p in uni.pools:
        rec = parts / "clips" / f"{p.pool_id}.json"
        if rec.exists():
            pool_rows[p.pool_id] = json.loads(rec.read_text())
        else:
            units.setdefault(p.source.source, []).append(p)
    todo = [
        (str(out), pools, cfg, [_seed_of(seed, _crc(p.pool_id)) for p in pools])
        for _, pools in sorted(units.items(), key=lambda kv: -len(kv[1]))
    ]
    with tqdm(total=len(uni.pools), initial=len(pool_rows), desc="audio pools", unit="pool",
              disable=not progress) as bar:

        def _pools_done(task, rows_per_pool):
            for p, rows in zip(task[1], rows_per_pool):
                atomic_write_text(parts / "clips" / f"{p.pool_id}.json", _json_dumps(rows))
                pool_rows[p.pool_id] = rows
            bar.update(len(task[1]))

        for _ in _map(_render_pools, todo, workers, provider, _pools_done):
            pass
    return pool_rows


def _build_scenes(uni: Any, plans: dict[str, list[dict]], cfg: DataConfig, out: Path, parts: Path, workers: int, provider: Any,
                  progress: bool) -> tuple[list[tuple[str, int, list[dict]]], dict[tuple[str, int], list[dict]]]:
    """Render the planned scenes in chunks of ``cfg.chunk_size`` (those not yet recorded in
    ``parts/scenes``); returns ``(chunks, rows by (group, chunk index))``."""
    from tqdm import tqdm

    class_ids = {c: i for i, c in enumerate(uni.class_names)}
    chunks = []
    for gname, specs in plans.items():
        for ci in range(0, len(specs), cfg.chunk_size):
            chunks.append((gname, ci // cfg.chunk_size, specs[ci : ci + cfg.chunk_size]))
    chunk_rows: dict[tuple[str, int], list[dict]] = {}
    todo = []
    for gname, k, specs in chunks:
        rec = parts / "scenes" / f"{gname}-{k:04d}.json"
        if rec.exists():
            chunk_rows[(gname, k)] = json.loads(rec.read_text())
        else:
            todo.append((str(out), specs, cfg, class_ids, gname, k))
    n_total = sum(len(s) for s in plans.values())
    n_done = sum(len(r) for r in chunk_rows.values())
    sprites = _decode_sprites(todo, workers, provider, progress) if todo else {}
    with tqdm(total=n_total, initial=n_done, desc="scenes", unit="scene", disable=not progress) as bar:

        def _chunk_done(task, rows):
            gname, k = task[4], task[5]
            atomic_write_text(parts / "scenes" / f"{gname}-{k:04d}.json", _json_dumps(rows))
            chunk_rows[(gname, k)] = rows
            bar.update(len(rows))

        for _ in _map(_render_chunk_task, todo, workers, provider, _chunk_done, sprites):
            pass
    return chunks, chunk_rows


def _decode_sprites(todo: list[tuple], workers: int, provider: Any, progress: bool) -> dict[tuple, np.ndarray]:
    """Every sprite the scene chunks ``todo`` paste, decoded once (in parallel) to be shared with the
    rendering workers."""
    from tqdm import tqdm

    sprites: dict[tuple, np.ndarray] = {}
    need: dict[tuple, Any] = {}
    for t in todo:
        for sp in t[1]:
            for x in sp["sources"]:
                need.setdefault(_sprite_key(x["visual"]), x["visual"])
            for fr in sp["distractors"]:
                for _, a in fr:
                    need.setdefault(_sprite_key(a), a)
    assets = [need[k] for k in sorted(need)]
    n_units = max(1, min(len(assets), 4 * workers))
    batches = [assets[i::n_units] for i in range(n_units)]
    with tqdm(total=len(assets), desc="sprites", unit="sprite", disable=not progress) as bar:

        def _sprites_done(batch, arrays):
            for a, arr in zip(batch, arrays):
                sprites[_sprite_key(a)] = arr
            bar.update(len(batch))

        for _ in _map(_load_sprites, batches, workers, provider, _sprites_done):
            pass
    return sprites


def _stats(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        key = f"{r['split']}/{r['task']}/{r['layout']}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
