"""The embedded-benchmark builder: determinism, ground truth, splits, resuming and clear errors.

Most tests run against :class:`FakeProvider` (synthetic sprites, tones and backgrounds), so they do
not need the Debian asset packages; ``test_real_smoke_build`` builds the real ``smoke`` profile and
is skipped when the assets are not installed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from avgn.data.build import (
    SPLITS,
    BuildConfigMismatchError,
    build_dataset,
    collect_universe,
    plan_scenes,
)
from avgn.data.config import DATA_PROFILES, DataConfig
from avgn.data.manifest import MANIFEST_COLUMNS, load_build_info, load_clip_table, load_manifest

# --------------------------------------------------------------------------------------------------
# a small synthetic asset provider (same interface as avgn.data.build.CatalogProvider)
# --------------------------------------------------------------------------------------------------

FAKE_CLASSES = ("accordion", "cello", "flute", "violin", "dog", "cat", "cow")
FAKE_HELDOUT = ("cow", "flute")


@dataclass(frozen=True)
class FakeAudioSource:
    cls: str
    kind: str
    source: str
    key: str
    real: bool


@dataclass(frozen=True)
class FakeVisualAsset:
    cls: str
    style: str
    source: str
    key: str


class FakeProvider:
    """Synthetic assets: coloured shapes, tones, flat/noisy backgrounds."""

    def class_names(self):
        return FAKE_CLASSES

    def audio_sources(self, classes=None):
        out = []
        for c in classes or FAKE_CLASSES:
            if c in ("dog", "cat", "cow"):
                out.append(FakeAudioSource(c, "recording", "gcompris", f"gcompris/{c}.ogg", True))
            else:
                out.append(FakeAudioSource(c, "soundfont", "fluidr3", f"fluidr3/{c}", False))
                out.append(FakeAudioSource(c, "soundfont", "musescore", f"musescore/{c}", False))
                if c == "violin":
                    out.append(FakeAudioSource(c, "recording", "gcompris", f"gcompris/{c}.ogg", True))
        return out

    def visual_assets(self, classes=None):
        out = []
        for c in classes or FAKE_CLASSES:
            out.append(FakeVisualAsset(c, "photo", "tuxpaint", f"tuxpaint/{c}.png"))
            out.append(FakeVisualAsset(c, "emoji", "noto", f"noto/{c}"))
            if c != "dog":
                out.append(FakeVisualAsset(c, "emoji", "twemoji", f"twemoji/{c}.svg"))
        return out

    def backgrounds(self):
        return ["flat", "noise"]

    def load_background(self, key, size, rng):
        if key == "flat":
            return np.full((size, size, 3), 120, np.uint8)
        return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)

    def load_sprite(self, asset, max_size=256):
        i = FAKE_CLASSES.index(asset.cls)
        h, w = 60 + 10 * i, 100 - 5 * i
        yy, xx = np.mgrid[:h, :w]
        inside = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 < 1
        if asset.style == "photo":
            inside = np.ones((h, w), bool)
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., 0] = 30 * i
        rgba[..., 1] = 255 - 30 * i
        rgba[..., 2] = 80 if asset.source == "twemoji" else 200
        rgba[..., 3] = inside * 255
        return rgba

    def render_clips(self, source, n, seed, seconds=3.0, sample_rate=16000):
        rng = np.random.default_rng(seed)
        t = np.arange(int(round(seconds * sample_rate))) / sample_rate
        f0 = 110.0 * (1 + FAKE_CLASSES.index(source.cls))
        out = []
        for _ in range(n):
            f = f0 * rng.uniform(0.9, 1.1)
            x = np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(t.shape)
            out.append(0.1 * x / np.sqrt(np.mean(x * x)))
        return np.asarray(out, np.float32)


SMALL = DataConfig(
    clips_per_source=3,
    train_solo_per_class=2,
    train_duets=4,
    val_solo_per_class=1,
    val_duets=2,
    test_solo_per_class=1,
    test_multi=2,
    shift_solo_per_class=1,
    shift_duets=2,
    heldout_classes=FAKE_HELDOUT,
    heldout_visual_source="twemoji",
    heldout_audio_source="musescore",
    chunk_size=8,
)


def build_fake(out: Path, config: DataConfig = SMALL, seed: int = 0, workers: int = 1) -> Path:
    return build_dataset("smoke", seed, out, progress=False, config=config, workers=workers, provider=FakeProvider())


@pytest.fixture(scope="module")
def fake_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fake_build")
    build_fake(out)
    return out


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".parts" not in p.parts
    }


# --------------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------------


def test_build_is_byte_identical(tmp_path, fake_build):
    """Same config + seed -> identical manifest, images, masks and FLAC files; worker count is irrelevant."""
    other = tmp_path / "b"
    build_fake(other, workers=2)
    a, b = _tree_digest(fake_build), _tree_digest(other)
    assert a.keys() == b.keys()
    assert a == b
    assert "manifest.parquet" in a and any(k.endswith(".png") for k in a) and any(k.endswith(".flac") for k in a)


def test_other_seed_differs(tmp_path, fake_build):
    out = tmp_path / "s1"
    build_fake(out, seed=1)
    assert (out / "manifest.parquet").read_bytes() != (fake_build / "manifest.parquet").read_bytes()


# --------------------------------------------------------------------------------------------------
# manifest and ground truth
# --------------------------------------------------------------------------------------------------


def test_manifest_schema_and_files(fake_build):
    df = load_manifest(fake_build)
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    assert df["scene_id"].is_unique
    info = load_build_info(fake_build)
    assert info["seed"] == 0 and info["config"]["heldout_classes"] == list(FAKE_HELDOUT)
    for r in df.itertuples():
        assert (fake_build / r.image_path).is_file()
        assert len(r.mask_paths) == len(r.classes) == len(r.boxes) == len(r.clip_paths) == r.n_sources
        assert all((fake_build / p).is_file() for p in r.mask_paths + r.clip_paths)
        assert (r.mixture_path is None) == (r.split == "train")
        assert r.width == (448 if r.layout == "concat" else 224) and r.height == 224
        assert len(set(r.classes)) == r.n_sources  # sources of a scene have different classes
        assert not set(r.distractor_classes) & set(r.classes)  # distractors are silent other classes
    # every task / layout asked for is there
    got = set(zip(df["split"], df["task"], df["layout"]))
    for t in ("solo", "duet", "trio", "quartet"):
        assert ("test", t, "scene") in got
    for s in ("val", "test", "test_style", "test_audio", "test_zeroshot", "test_real"):
        assert (s, "duet", "concat") in got
    assert set(df["split"]) == set(SPLITS)


def test_boxes_are_mask_extents(fake_build):
    """Every stored box is the tight extent of the stored mask (and agrees with avgn.boxes.mask_to_box)."""
    import torch
    from PIL import Image

    from avgn.boxes import mask_to_box

    df = load_manifest(fake_build)
    for r in df.itertuples():
        for mp, box, box_px in zip(r.mask_paths, r.boxes, r.boxes_px):
            m = np.array(Image.open(fake_build / mp)).astype(bool)
            assert m.shape == (r.height, r.width)
            ys, xs = np.nonzero(m)
            assert box_px == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            ref = mask_to_box(torch.from_numpy(m)).tolist()
            np.testing.assert_allclose(box, ref, atol=1e-12)


def test_visibility_floor_and_concat_halves(fake_build):
    df = load_manifest(fake_build)
    floor = SMALL.visibility_floor
    assert min(v for vs in df["visibility"] for v in vs) >= floor
    from PIL import Image

    for r in df[df["layout"] == "concat"].itertuples():
        for k, mp in enumerate(r.mask_paths):  # source k lives in half k
            m = np.array(Image.open(fake_build / mp)).astype(bool)
            assert m[:, k * 224 : (k + 1) * 224].sum() == m.sum() > 0


def test_visibility_floor_enforced_in_crowded_frames():
    """Large objects in a crowded frame: every sounding object keeps >= the floor of its pixels."""
    from avgn.data.scenes import FrameObject, compose_frame

    rect = np.full((100, 100, 4), 255, np.uint8)
    for seed in range(20):
        objs = [FrameObject(rect, k) for k in range(3)] + [FrameObject(rect, None) for _ in range(3)]
        res = compose_frame(np.zeros((224, 224, 3), np.uint8), objs, np.random.default_rng(seed),
                            scale_multi=(0.5, 0.6), visibility_floor=0.6, rotation_deg=0)
        assert min(res.visibility) >= 0.6
        for m, v in zip(res.masks, res.visibility):
            assert m.sum() > 0


def test_stored_mixture_is_gain_weighted_sum(fake_build):
    """A val/test mixture is sum_k 10**(g_k/20) clip_k (+ noise), peak-protected, up to 16-bit rounding."""
    from avgn.data.audio import read_audio

    df = load_manifest(fake_build)
    rows = df[(df["split"] == "test") & df["snr_db"].isna() & (df["n_sources"] >= 2)]
    assert len(rows) > 0
    for r in rows.itertuples():
        clips = np.stack([read_audio(fake_build / p, 16000) for p in r.clip_paths])
        expect = (10 ** (np.array(r.gains_db) / 20))[:, None] * clips
        expect = expect.sum(0)
        expect *= min(1.0, 0.99 / np.abs(expect).max())
        got = read_audio(fake_build / r.mixture_path, 16000)
        assert np.abs(got - expect).max() < 3e-4


# --------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------


def test_splits_disjoint(fake_build):
    df = load_manifest(fake_build)
    clips = load_clip_table(fake_build)
    part = dict(zip(clips["clip_id"], clips["part"]))
    seen = df[df["split"].isin(["train", "val"])]
    # held-out classes: never in train / val, not even as distractors
    for col in ("classes", "distractor_classes"):
        assert not {c for v in seen[col] for c in v} & set(FAKE_HELDOUT)
    zs = df[df["split"] == "test_zeroshot"]
    assert len(zs) and all(set(v) <= set(FAKE_HELDOUT) for v in zs["classes"])
    # held-out style and audio source only in their test split
    for r in df.itertuples():
        if r.split != "test_style":
            assert "twemoji" not in r.visual_sources
            assert not any(k.startswith("twemoji") for k in r.distractor_keys)
        else:
            assert set(r.visual_sources) == {"twemoji"}
        if r.split != "test_audio":
            assert "musescore" not in r.audio_sources
        else:
            assert set(r.audio_sources) == {"musescore"}
        if r.split == "test_real":
            assert all(r.audio_real)
        # clip pool entries are reserved for one split
        want = r.split if r.split in ("train", "val") else "test"
        assert {part[c] for c in r.clip_ids} == {want}
    # every (class, source) pool is cut into disjoint parts
    for _, g in clips.groupby(["class", "audio_key"]):
        assert g["clip_id"].is_unique


def test_every_seen_class_in_every_solo_split(fake_build):
    df = load_manifest(fake_build)
    solo = df[(df["task"] == "solo")]
    seen = set(FAKE_CLASSES) - set(FAKE_HELDOUT)
    for split in ("train", "val", "test"):
        assert {v[0] for v in solo[solo["split"] == split]["classes"]} == seen


def test_plan_is_deterministic():
    u = collect_universe(SMALL, FakeProvider())
    a, _ = plan_scenes(u, 3)
    b, _ = plan_scenes(collect_universe(SMALL, FakeProvider()), 3)
    strip = lambda p: json.dumps({k: [{**s, "sources": [{**x, "visual": x["visual"].key} for x in s["sources"]],
                                        "distractors": [[(c, a.key) for c, a in f] for f in s["distractors"]]}
                                       for s in v] for k, v in p.items()}, sort_keys=True)
    assert strip(a) == strip(b)


# --------------------------------------------------------------------------------------------------
# resuming and errors
# --------------------------------------------------------------------------------------------------


def test_resume_skips_finished_work(tmp_path, fake_build):
    out = tmp_path / "r"
    build_fake(out)
    before = _tree_digest(out)
    # simulate an interrupted build: drop the manifest and a few finished units
    (out / "manifest.parquet").unlink()
    parts = sorted((out / ".parts" / "scenes").glob("*.json"))
    for p in parts[:2]:
        p.unlink()
    kept = json.loads(parts[-1].read_text())[0]["image_path"]  # a finished unit: must not be redone
    mtime = (out / kept).stat().st_mtime_ns
    build_fake(out)
    assert _tree_digest(out) == before
    assert (out / kept).stat().st_mtime_ns == mtime
    # an intact build returns immediately
    assert build_fake(out) == out / "manifest.parquet"


def test_config_mismatch_on_resume(tmp_path):
    out = tmp_path / "m"
    build_fake(out, config=SMALL.with_overrides(train_duets=2, test_multi=1, shift_duets=1))
    with pytest.raises(BuildConfigMismatchError, match="another --out|delete"):
        build_fake(out, config=SMALL.with_overrides(train_duets=3, test_multi=1, shift_duets=1))
    with pytest.raises(BuildConfigMismatchError, match="seed"):
        build_fake(out, config=SMALL.with_overrides(train_duets=2, test_multi=1, shift_duets=1), seed=5)


def test_missing_asset_propagates(tmp_path):
    from avgn.data.assets import AssetMissingError

    class Broken(FakeProvider):
        def render_clips(self, source, n, seed, seconds=3.0, sample_rate=16000):
            raise AssetMissingError("/usr/share/sounds/sf2/FluidR3_GM.sf2", "fluid-soundfont-gm",
                                    "apt-get install -y fluid-soundfont-gm")

    with pytest.raises(AssetMissingError, match="apt-get install"):
        build_dataset("smoke", 0, tmp_path / "x", progress=False, config=SMALL, workers=1, provider=Broken())
    assert not (tmp_path / "x" / "manifest.parquet").exists()


def test_profiles_are_sane():
    for name, cfg in DATA_PROFILES.items():
        assert cfg.image_size == 224 and cfg.sample_rate == 16000 and cfg.clip_seconds == 3.0
        assert len(cfg.heldout_classes) == 3, name
    assert DATA_PROFILES["gpu"].train_solo_per_class * 20 + DATA_PROFILES["gpu"].train_duets >= 20000
    # JSON round trip of the config (what build_config.json stores)
    cfg = DATA_PROFILES["cpu"]
    assert DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --------------------------------------------------------------------------------------------------
# the real assets (integration)
# --------------------------------------------------------------------------------------------------


def _real_assets_available() -> bool:
    try:
        from avgn.data import catalog

        items = [*catalog.audio_sources(), *catalog.visual_assets()]
        return bool(items) and all(catalog.asset_path(x).is_file() for x in items)
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _real_assets_available(), reason="asset packages (Debian/npm) not installed")
def test_real_smoke_build(tmp_path):
    """The real ``smoke`` profile builds, covers every usable class, and passes the ground-truth checks."""
    out = tmp_path / "smoke"
    manifest = build_dataset("smoke", 0, out, progress=False, workers=2)
    df = load_manifest(manifest)
    info = load_build_info(out)
    usable = [c for c in info["classes"] if c not in info["excluded_classes"]]
    seen = set(usable) - set(info["heldout_classes"])
    train_classes = {c for v in df[df["split"] == "train"]["classes"] for c in v}
    assert train_classes == seen
    assert {c for v in df[df["split"] == "test_zeroshot"]["classes"] for c in v} <= set(info["heldout_classes"])
    assert min(v for vs in df["visibility"] for v in vs) >= DATA_PROFILES["smoke"].visibility_floor
    # real-asset determinism: redo some audio pools and scene chunks (serially) -> identical bytes
    before = _tree_digest(out)
    (out / "manifest.parquet").unlink()
    for rec in sorted((out / ".parts" / "scenes").glob("*.json"))[::4] + sorted((out / ".parts" / "clips").glob("*.json"))[::8]:
        rec.unlink()
    build_dataset("smoke", 0, out, progress=False, workers=1)
    assert _tree_digest(out) == before
