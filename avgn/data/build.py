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

import hashlib
import json
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from avgn.io import atomic_write_bytes, atomic_write_text
from avgn.data.audio import pink_noise
from avgn.data.config import DATA_PROFILES, TASK_SOURCES, DataConfig

__all__ = [
    "SPLITS",
    "SHIFT_SPLITS",
    "FORMAT_VERSION",
    "BuildConfigMismatchError",
    "CatalogProvider",
    "build_dataset",
    "dataset_dir",
    "plan_groups",
    "atomic_write_bytes",
    "atomic_write_text",
]

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test", "test_style", "test_audio", "test_zeroshot", "test_real")
SHIFT_SPLITS = ("test_style", "test_audio", "test_zeroshot", "test_real")


class BuildConfigMismatchError(ValueError):
    """The output folder holds (part of) a build made with different settings."""


# --------------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------------


def _json_dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF


def _slug(text: str) -> str:
    """A file-name-safe, collision-resistant short name for an asset key."""
    keep = "".join(ch if (ch.isalnum() or ch in "-_") else "-" for ch in Path(text).stem)[:40].strip("-")
    return f"{keep or 'x'}-{_crc(text):08x}"


def _seed_of(*parts: int) -> int:
    """A 32-bit seed derived from integers (stable across processes and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------------
# the asset provider (the catalog, or a fake one in tests)
# --------------------------------------------------------------------------------------------------


class CatalogProvider:
    """The real assets, through :mod:`avgn.data.catalog` and its loaders (imported lazily; picklable)."""

    def class_names(self) -> tuple[str, ...]:
        from avgn.data.classes import CLASS_NAMES

        return tuple(CLASS_NAMES)

    def audio_sources(self, classes: Sequence[str] | None = None) -> list:
        from avgn.data import catalog

        return list(catalog.audio_sources(classes))

    def visual_assets(self, classes: Sequence[str] | None = None) -> list:
        from avgn.data import catalog

        return list(catalog.visual_assets(classes))

    def backgrounds(self) -> list[str]:
        from avgn.data import pictures

        return list(pictures.backgrounds())

    def load_background(self, key: str, size: int, rng: np.random.Generator) -> np.ndarray:
        from avgn.data.pictures import load_background

        return load_background(key, size, rng)

    def load_sprite(self, asset, max_size: int = 256) -> np.ndarray:
        from avgn.data.pictures import load_sprite

        return load_sprite(asset, max_size=max_size)

    def render_clips(self, source, n: int, seed: int, seconds: float, sample_rate: int) -> np.ndarray:
        from avgn.data.clips import render_clips

        return render_clips(source, n, seed, seconds=seconds, sample_rate=sample_rate)


# --------------------------------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """A set of scenes of one split / task / layout."""

    split: str
    task: str
    layout: str
    count: int  # scenes (per class when per_class)
    per_class: bool = False

    @property
    def name(self) -> str:
        return f"{self.split}-{self.task}-{self.layout}"

    @property
    def n_sources(self) -> int:
        return TASK_SOURCES[self.task]


def plan_groups(cfg: DataConfig) -> list[Group]:
    """The scene groups a config asks for, in build order."""
    g = [
        Group("train", "solo", "scene", cfg.train_solo_per_class, True),
        Group("train", "duet", "scene", cfg.train_duets),
        Group("val", "solo", "scene", cfg.val_solo_per_class, True),
        Group("val", "duet", "scene", cfg.val_duets),
        Group("val", "duet", "concat", cfg.val_duets),
        Group("test", "solo", "scene", cfg.test_solo_per_class, True),
        Group("test", "duet", "scene", cfg.test_multi),
        Group("test", "duet", "concat", cfg.test_multi),
        Group("test", "trio", "scene", cfg.test_multi),
        Group("test", "quartet", "scene", cfg.test_multi),
    ]
    for s in SHIFT_SPLITS:
        g += [
            Group(s, "solo", "scene", cfg.shift_solo_per_class, True),
            Group(s, "duet", "scene", cfg.shift_duets),
            Group(s, "duet", "concat", cfg.shift_duets),
        ]
    return [x for x in g if x.count > 0]


@dataclass
class Pool:
    """The clips of one (class, audio source) pair."""

    pool_id: str
    cls: str
    source: Any  # AudioSource
    parts: list[str]  # partition ("train" | "val" | "test") of each clip index

    def clip_id(self, i: int) -> str:
        return f"{self.pool_id}.{i:02d}"

    def clip_path(self, i: int) -> str:
        return f"audio/clips/{self.cls}/{self.pool_id.split('.', 1)[1]}_{i:02d}.flac"


@dataclass
class Universe:
    """Everything the planner needs from the catalog, filtered and ordered deterministically."""

    cfg: DataConfig
    class_names: tuple[str, ...]
    pools: list[Pool]
    visuals: dict[str, list]  # class -> VisualAsset list (sorted by key)
    backgrounds: list[str]
    heldout: tuple[str, ...]
    excluded: dict[str, str] = field(default_factory=dict)  # class -> why it is not used
    all_visuals: dict[str, list] = field(default_factory=dict)  # before ``sprites_per_class``

    # -- eligibility -----------------------------------------------------------------------------
    def split_classes(self, split: str) -> list[str]:
        """Classes that can sound in ``split`` (have both an allowed clip and an allowed sprite)."""
        base = self.heldout if split == "test_zeroshot" else [c for c in self.class_names if c not in self.heldout]
        return [c for c in base if c not in self.excluded and self.clips(split, c) and self.sprites(split, c)]

    def distractor_classes(self, split: str) -> list[str]:
        base = self.class_names if split == "test_zeroshot" else [c for c in self.class_names if c not in self.heldout]
        return [c for c in base if self.sprites(split, c)]

    def sprites(self, split: str, cls: str) -> list:
        hv = self.cfg.heldout_visual_source
        out = self.visuals.get(cls, [])
        if split == "test_style":
            return [a for a in out if a.source == hv]
        return [a for a in out if a.source != hv]

    def clips(self, split: str, cls: str) -> list[tuple[Pool, int]]:
        """Allowed (pool, clip index) pairs of a class in a split, grouped by pool order."""
        cfg = self.cfg
        part = split if split in ("train", "val") else "test"
        out = []
        for p in self.pools:
            if p.cls != cls:
                continue
            src = p.source
            held_audio = src.source == cfg.heldout_audio_source
            if split == "test_audio":
                if not held_audio:
                    continue
            elif held_audio:
                continue
            if split == "test_real" and not src.real:
                continue
            if split in ("train", "val") and src.real and not cfg.real_audio_in_train:
                continue
            out += [(p, i) for i, pt in enumerate(p.parts) if pt == part]
        return out


def _pool_parts(cfg: DataConfig, cls: str, source, heldout: Sequence[str]) -> list[str]:
    k = cfg.clips_per_source
    test_only = (
        cls in heldout
        or source.source == cfg.heldout_audio_source
        or (source.real and not cfg.real_audio_in_train)
    )
    if test_only:
        return ["test"] * k
    f_tr, f_va, _ = cfg.clip_split
    n_tr = int(np.floor(k * f_tr))
    n_va = int(np.floor(k * f_va))
    if k >= 3:
        n_tr, n_va = max(1, n_tr), max(1, n_va)
        if n_tr + n_va >= k:
            n_tr = k - n_va - 1
    return ["train"] * n_tr + ["val"] * n_va + ["test"] * (k - n_tr - n_va)


def _limit_sprites(assets: list, n: int, heldout_source: str) -> list:
    """At most ``n`` assets outside the held-out source, round-robin over sources (sorted); keep held-out ones."""
    by_src: dict[str, list] = {}
    for a in assets:
        if a.source != heldout_source:
            by_src.setdefault(a.source, []).append(a)
    picked: list = []
    depth = 0
    while len(picked) < n and any(len(v) > depth for v in by_src.values()):
        for src in sorted(by_src):
            if len(picked) < n and len(by_src[src]) > depth:
                picked.append(by_src[src][depth])
        depth += 1
    keep = {id(a) for a in picked}
    return [a for a in assets if id(a) in keep or a.source == heldout_source]


def collect_universe(cfg: DataConfig, provider) -> Universe:
    """Query the catalog and derive pools, eligible classes and held-outs (deterministic order)."""
    names = tuple(provider.class_names())
    unknown = [c for c in cfg.heldout_classes if c not in names]
    if unknown:
        raise ValueError(f"heldout_classes {unknown} are not classes; valid: {', '.join(names)}")
    if cfg.image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {cfg.image_format!r}")
    sources = sorted(provider.audio_sources(list(names)), key=lambda s: (names.index(s.cls), s.source, s.key))
    visuals: dict[str, list] = {}
    for a in sorted(provider.visual_assets(list(names)), key=lambda a: (a.cls, a.source, a.key)):
        visuals.setdefault(a.cls, []).append(a)
    all_visuals = visuals
    if cfg.sprites_per_class > 0:
        visuals = {c: _limit_sprites(v, cfg.sprites_per_class, cfg.heldout_visual_source) for c, v in visuals.items()}
    pools = []
    seen = set()
    for s in sources:
        if s.cls not in names:
            continue
        pid = f"{s.cls}.{_slug(s.key)}"
        if pid in seen:
            raise ValueError(f"two audio sources of class {s.cls} share the key {s.key!r}")
        seen.add(pid)
        pools.append(Pool(pid, s.cls, s, _pool_parts(cfg, s.cls, s, cfg.heldout_classes)))
    bgs = sorted(provider.backgrounds())
    if not bgs:
        raise ValueError("the catalog offers no backgrounds")
    uni = Universe(cfg, names, pools, visuals, bgs, tuple(cfg.heldout_classes), all_visuals=all_visuals)
    for c in names:
        if not any(p.cls == c for p in pools):
            uni.excluded[c] = "no audio source"
        elif not any(a.source != cfg.heldout_visual_source for a in visuals.get(c, [])):
            uni.excluded[c] = "no visual asset outside the held-out style"
    return uni


def catalog_fingerprint(uni: Universe) -> str:
    """SHA-256 of the assets a build depends on (changes when the installed assets change)."""
    doc = {
        "audio": [[p.cls, p.source.source, p.source.key, bool(p.source.real)] for p in uni.pools],
        "visual": [[a.cls, a.source, a.style, a.key] for c in sorted(uni.all_visuals) for a in uni.all_visuals[c]],
        "backgrounds": list(uni.backgrounds),
        "classes": list(uni.class_names),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _pick_sprite(rng: np.random.Generator, assets: list):
    """Uniform over visual sources, then over that source's assets (balances styles)."""
    by_src: dict[str, list] = {}
    for a in assets:
        by_src.setdefault(a.source, []).append(a)
    srcs = sorted(by_src)
    lst = by_src[srcs[int(rng.integers(len(srcs)))]]
    return lst[int(rng.integers(len(lst)))]


def _pick_clip(rng: np.random.Generator, clips: list[tuple[Pool, int]]) -> tuple[Pool, int]:
    """Uniform over audio pools, then over the pool's allowed clips (balances audio sources)."""
    by_pool: dict[str, list] = {}
    for p, i in clips:
        by_pool.setdefault(p.pool_id, []).append((p, i))
    keys = sorted(by_pool)
    lst = by_pool[keys[int(rng.integers(len(keys)))]]
    return lst[int(rng.integers(len(lst)))]


def plan_scenes(uni: Universe, seed: int) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Plan every scene: ``{group name: [scene spec dict, ...]}`` and the groups that were skipped.

    A spec holds every random choice except the geometry (classes, sprites, clips, gains, noise,
    backgrounds, distractors), plus the ``render_seed`` of its geometry.
    """
    cfg = uni.cfg
    out: dict[str, list[dict]] = {}
    skipped: dict[str, str] = {}
    for g in plan_groups(cfg):
        classes = uni.split_classes(g.split)
        if len(classes) < g.n_sources:
            skipped[g.name] = f"{len(classes)} eligible classes for {g.n_sources} sources"
            continue
        distract_pool = uni.distractor_classes(g.split)
        n = g.count * len(classes) if g.per_class else g.count
        n_frames = 2 if g.layout == "concat" else 1
        specs = []
        gcode = _crc(g.name)
        for i in range(n):
            rng = np.random.default_rng([seed & 0xFFFFFFFF, gcode, i, 0])
            if g.per_class:
                sounding = [classes[i // g.count]]
            else:
                sounding = [classes[j] for j in rng.choice(len(classes), size=g.n_sources, replace=False)]
            sources = []
            for c in sounding:
                asset = _pick_sprite(rng, uni.sprites(g.split, c))
                pool, ci = _pick_clip(rng, uni.clips(g.split, c))
                gain = 0.0 if g.n_sources == 1 else round(float(rng.uniform(*cfg.gain_db_range)), 3)
                sources.append(
                    {
                        "cls": c,
                        "visual": asset,
                        "clip_id": pool.clip_id(ci),
                        "clip_path": pool.clip_path(ci),
                        "audio_source": pool.source.source,
                        "audio_key": pool.source.key,
                        "audio_real": bool(pool.source.real),
                        "gain_db": gain,
                    }
                )
            others = [c for c in distract_pool if c not in sounding]
            frames_distractors = []
            for _ in range(n_frames):
                lo, hi = cfg.distractors
                k = min(int(rng.integers(lo, hi + 1)), len(others))
                cls_d = [others[j] for j in rng.choice(len(others), size=k, replace=False)] if k else []
                frames_distractors.append([(c, _pick_sprite(rng, uni.sprites(g.split, c))) for c in cls_d])
            backgrounds = [uni.backgrounds[int(rng.integers(len(uni.backgrounds)))] for _ in range(n_frames)]
            snr = None
            if g.split != "train" and rng.random() < cfg.noise_prob:
                snr = round(float(rng.uniform(*cfg.noise_snr_db)), 2)
            specs.append(
                {
                    "scene_id": f"{g.name}-{i:05d}",
                    "split": g.split,
                    "task": g.task,
                    "layout": g.layout,
                    "sources": sources,
                    "distractors": frames_distractors,
                    "backgrounds": backgrounds,
                    "snr_db": snr,
                    "seed": _seed_of(seed, gcode, i),
                    "render_seed": _seed_of(seed, gcode, i, 1),
                }
            )
        out[g.name] = specs
    return out, skipped


# --------------------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------------------

_PROVIDER = None
_SPRITES: dict[tuple, np.ndarray] = {}


def _init_worker(provider, sprites: dict | None = None) -> None:
    global _PROVIDER
    _PROVIDER = provider
    if sprites:
        _SPRITES.update(sprites)


def _sprite_key(asset) -> tuple:
    return (asset.cls, asset.source, asset.key)


def _load_sprites(assets: list) -> list[np.ndarray]:
    return [_sprite(a) for a in assets]


def _sprite(asset) -> np.ndarray:
    sk = _sprite_key(asset)
    sp = _SPRITES.get(sk)
    if sp is None:
        sp = np.asarray(_PROVIDER.load_sprite(asset, max_size=256))
        if sp.ndim != 3 or sp.shape[2] != 4:
            raise ValueError(f"load_sprite({asset.key!r}) returned shape {sp.shape}, expected [h, w, 4]")
        _SPRITES[sk] = sp
    return sp


def _render_pools(task: tuple) -> list[list[dict]]:
    """Render and store the audio pools of one unit (pools of one source: one font load); clip rows per pool."""
    out, pools, cfg, seeds = task
    return [_render_pool(out, p, cfg, sd) for p, sd in zip(pools, seeds)]


def _render_pool(out: str, pool: Pool, cfg: DataConfig, seed: int) -> list[dict]:
    from avgn.data.audio import write_audio

    clips = np.asarray(
        _PROVIDER.render_clips(pool.source, cfg.clips_per_source, seed, cfg.clip_seconds, cfg.sample_rate),
        dtype=np.float32,
    )
    T = int(round(cfg.clip_seconds * cfg.sample_rate))
    if clips.shape != (cfg.clips_per_source, T):
        raise ValueError(
            f"render_clips({pool.source.key!r}) returned shape {clips.shape}, expected {(cfg.clips_per_source, T)}"
        )
    rows = []
    for i in range(cfg.clips_per_source):
        write_audio(Path(out) / pool.clip_path(i), clips[i], cfg.sample_rate)
        rows.append(
            {
                "clip_id": pool.clip_id(i),
                "class": pool.cls,
                "audio_source": pool.source.source,
                "audio_key": pool.source.key,
                "kind": getattr(pool.source, "kind", ""),
                "real": bool(pool.source.real),
                "index": i,
                "part": pool.parts[i],
                "path": pool.clip_path(i),
                "seed": seed,
            }
        )
    return rows


def _save_image(path: Path, img: np.ndarray, fmt: str) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    else:
        Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling=0)
    atomic_write_bytes(path, buf.getvalue())


def _save_mask(path: Path, mask: np.ndarray) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _render_scene(spec: dict, out: Path, cfg: DataConfig, clip_cache: dict) -> dict:
    from avgn.data.audio import mix, read_audio, write_audio
    from avgn.data.scenes import FrameObject, compose_frame, mask_box

    S = cfg.image_size
    rng = np.random.default_rng(spec["render_seed"])
    srcs = spec["sources"]
    concat = spec["layout"] == "concat"
    frames, frame_masks, frame_vis, kept_d = [], [], [], []
    for f, bg_key in enumerate(spec["backgrounds"]):
        bg = np.asarray(_PROVIDER.load_background(bg_key, S, rng))
        if bg.shape != (S, S, 3):
            raise ValueError(f"load_background({bg_key!r}) returned shape {bg.shape}, expected {(S, S, 3)}")
        src_idx = [f] if concat else list(range(len(srcs)))
        objs = [FrameObject(_sprite(srcs[k]["visual"]), j) for j, k in enumerate(src_idx)]
        objs += [FrameObject(_sprite(a), None) for _, a in spec["distractors"][f]]
        res = compose_frame(
            bg,
            objs,
            rng,
            scale_solo=cfg.scale_solo,
            scale_multi=cfg.scale_multi,
            rotation_deg=cfg.rotation_deg,
            color_jitter=cfg.color_jitter,
            visibility_floor=cfg.visibility_floor,
            max_layout_tries=cfg.max_layout_tries,
        )
        frames.append(res.image)
        frame_masks.append(res.masks)
        frame_vis.append(res.visibility)
        kept_d.append(spec["distractors"][f][: res.n_distractors])
    image = np.concatenate(frames, axis=1)
    H, W = image.shape[:2]
    masks, vis = [], []
    for k in range(len(srcs)):
        if concat:
            m = np.zeros((H, W), dtype=bool)
            m[:, k * S : (k + 1) * S] = frame_masks[k][0]
            masks.append(m)
            vis.append(frame_vis[k][0])
        else:
            masks.append(frame_masks[0][k])
            vis.append(frame_vis[0][k])
    split, sid = spec["split"], spec["scene_id"]
    ext = "png" if cfg.image_format == "png" else "jpg"
    image_path = f"images/{split}/{sid}.{ext}"
    _save_image(out / image_path, image, cfg.image_format)
    mask_paths, boxes, boxes_px, areas = [], [], [], []
    for k, m in enumerate(masks):
        p = f"masks/{split}/{sid}_s{k}.png"
        _save_mask(out / p, m)
        mask_paths.append(p)
        x1, y1, x2, y2 = mask_box(m)
        boxes_px.append([x1, y1, x2, y2])
        boxes.append([x1 / W, y1 / H, x2 / W, y2 / H])
        areas.append(float(m.sum()) / (H * W))
    mixture_path = None
    if split != "train":
        T = int(round(cfg.clip_seconds * cfg.sample_rate))
        waves = []
        for s in srcs:
            w = clip_cache.get(s["clip_id"])
            if w is None:
                w = read_audio(out / s["clip_path"], cfg.sample_rate)
                if w.shape[0] != T:
                    raise ValueError(f"clip {out / s['clip_path']} has {w.shape[0]} samples, expected {T}")
                clip_cache[s["clip_id"]] = w
            waves.append(w)
        noise = None
        if spec["snr_db"] is not None:
            noise = pink_noise(T, np.random.default_rng([spec["seed"], 2]))
        y = mix(np.stack(waves), np.array([s["gain_db"] for s in srcs]), noise=noise, snr_db=spec["snr_db"])
        mixture_path = f"audio/mixtures/{split}/{sid}.flac"
        write_audio(out / mixture_path, y, cfg.sample_rate)
    d_all = [x for fr in kept_d for x in fr]
    return {
        "scene_id": sid,
        "split": split,
        "task": spec["task"],
        "layout": spec["layout"],
        "n_sources": len(srcs),
        "height": H,
        "width": W,
        "image_path": image_path,
        "mask_paths": mask_paths,
        "classes": [s["cls"] for s in srcs],
        "class_ids": [_class_id(s["cls"]) for s in srcs],
        "boxes": boxes,
        "boxes_px": boxes_px,
        "visibility": [round(v, 6) for v in vis],
        "areas": [round(a, 6) for a in areas],
        "gains_db": [s["gain_db"] for s in srcs],
        "clip_ids": [s["clip_id"] for s in srcs],
        "clip_paths": [s["clip_path"] for s in srcs],
        "audio_sources": [s["audio_source"] for s in srcs],
        "audio_keys": [s["audio_key"] for s in srcs],
        "audio_real": [s["audio_real"] for s in srcs],
        "visual_keys": [s["visual"].key for s in srcs],
        "visual_sources": [s["visual"].source for s in srcs],
        "visual_styles": [s["visual"].style for s in srcs],
        "distractor_classes": [c for c, _ in d_all],
        "distractor_keys": [a.key for _, a in d_all],
        "distractor_sources": [a.source for _, a in d_all],
        "backgrounds": list(spec["backgrounds"]),
        "mixture_path": mixture_path,
        "snr_db": spec["snr_db"],
        "seed": spec["seed"],
    }


_CLASS_IDS: dict[str, int] = {}


def _class_id(name: str) -> int:
    return _CLASS_IDS[name]


def _render_chunk(task: tuple) -> list[dict]:
    out, specs, cfg, class_ids = task
    _CLASS_IDS.clear()
    _CLASS_IDS.update(class_ids)
    cache: dict = {}
    return [_render_scene(s, Path(out), cfg, cache) for s in specs]


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


def _map(fn, tasks: list, workers: int, provider, progress_cb, sprites: dict | None = None) -> Iterable:
    """``map`` in order, serially or over a process pool (results identical either way)."""
    if workers <= 1 or len(tasks) <= 1:
        _init_worker(provider, sprites)
        for t in tasks:
            r = fn(t)
            progress_cb(t, r)
            yield r
        return
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(provider, sprites)) as pool:
        for t, r in zip(tasks, pool.imap(fn, tasks, chunksize=1)):
            progress_cb(t, r)
            yield r


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
    from tqdm import tqdm  # text bars: they also read well in an executed, rendered notebook

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
    # ---- audio pools -----------------------------------------------------------------------------
    pool_rows: dict[str, list[dict]] = {}
    units: dict[str, list[Pool]] = {}
    for p in uni.pools:
        rec = parts / "clips" / f"{p.pool_id}.json"
        if rec.exists():
            pool_rows[p.pool_id] = json.loads(rec.read_text())
        else:  # one unit per audio source: a soundfont is loaded once per unit
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

    # ---- scenes ----------------------------------------------------------------------------------
    plans, skipped = plan_scenes(uni, seed)
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
    # sprites: decoded once (in parallel) and shared with the rendering workers
    sprites: dict[tuple, np.ndarray] = {}
    if todo:
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
    with tqdm(total=n_total, initial=n_done, desc="scenes", unit="scene", disable=not progress) as bar:

        def _chunk_done(task, rows):
            gname, k = task[4], task[5]
            atomic_write_text(parts / "scenes" / f"{gname}-{k:04d}.json", _json_dumps(rows))
            chunk_rows[(gname, k)] = rows
            bar.update(len(rows))

        for _ in _map(_render_chunk_task, todo, workers, provider, _chunk_done, sprites):
            pass

    # ---- manifest (last) -------------------------------------------------------------------------
    from avgn.data.manifest import write_clip_table, write_manifest

    rows = [r for gname, k, _ in chunks for r in chunk_rows[(gname, k)]]
    clip_rows = [r for p in uni.pools for r in pool_rows[p.pool_id]]
    write_clip_table(out / "clips.parquet", clip_rows)
    stats = _stats(rows)
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
        "counts": stats,
    }
    atomic_write_text(out / "build.json", _json_dumps(info))
    write_manifest(manifest_path, rows)
    return manifest_path


def _render_chunk_task(task: tuple) -> list[dict]:
    return _render_chunk(task[:4])


def _stats(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        key = f"{r['split']}/{r['task']}/{r['layout']}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
