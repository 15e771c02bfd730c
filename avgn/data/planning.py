"""What a build is made of, decided before anything is rendered (:func:`avgn.data.build.build_dataset`
runs it): the asset provider (:class:`CatalogProvider`, the catalog; tests give a fake one), the
groups of scenes per split (:func:`plan_groups`), the audio and visual pools and the whole asset
universe (:func:`collect_universe`, :func:`catalog_fingerprint`), and every scene's plan — classes,
assets, clips, gains, noise — as a pure function of ``(seed, split, task, layout, index)``
(:func:`plan_scenes`)."""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from avgn.data.config import TASK_SOURCES, DataConfig

__all__ = ["SPLITS", "SHIFT_SPLITS", "CatalogProvider", "Group", "plan_groups", "Pool", "Universe", "collect_universe",
           "catalog_fingerprint", "plan_scenes"]


SPLITS = ("train", "val", "test", "test_style", "test_audio", "test_zeroshot", "test_real")
SHIFT_SPLITS = ("test_style", "test_audio", "test_zeroshot", "test_real")


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
