"""The asset layer of the embedded benchmark: rcc reader, asset errors, catalogue, sprites, clips, mixing.

These tests read the real installed assets (Debian packages and ``npm ci --prefix assets``); a missing one
fails with :class:`avgn.data.assets.AssetMissingError`, whose message gives the install command.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from avgn.data import assets as A
from avgn.data.audio import decode_audio, loudness_normalise, mix, read_audio, rms_dbfs, write_audio
from avgn.data.pictures import backgrounds, load_background
from avgn.data.catalog import (
    STYLES,
    AudioSource,
    VisualAsset,
    asset_path,
    audio_sources,
    check_assets,
    coverage_table,
    visual_assets,
)
from avgn.data.clips import render_clips
from avgn.data.classes import CLASS_NAMES, CLASSES, class_index
from avgn.data.rcc import RccError, list_rcc, read_rcc
from avgn.data.pictures import load_sprite


# ------------------------------------------------------------------------------------------------------
# a hand-built Qt resource file
# ------------------------------------------------------------------------------------------------------
def _qt_hash(name: str) -> int:
    h = 0
    for ch in name:
        h = ((h << 4) + ord(ch)) & 0xFFFFFFFF
        h ^= (h & 0xF0000000) >> 23
        h &= 0x0FFFFFFF
    return h


def build_rcc(version: int, files: dict[str, tuple[bytes, bool]]) -> bytes:
    """Bytes of a ``.rcc`` (format ``version``) holding ``{"dir/name": (payload, compress)}``."""
    # directory tree: {name: subtree | (payload, compress)}
    tree: dict = {}
    for path, spec in files.items():
        node = tree
        *dirs, leaf = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = spec

    names = bytearray()
    name_off: dict[str, int] = {}

    def name(n: str) -> int:
        if n not in name_off:
            name_off[n] = len(names)
            enc = n.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(enc) // 2, _qt_hash(n)) + enc)
        return name_off[n]

    data = bytearray()
    entries: list[bytes] = []
    mtime = b"\x00" * 8 if version >= 2 else b""

    # breadth-first layout: children of a directory are contiguous entries
    entries.append(b"")  # root placeholder
    queue = [(0, tree)]
    while queue:
        idx, node = queue.pop(0)
        first = len(entries)
        kids = sorted(node.items(), key=lambda kv: _qt_hash(kv[0]))
        entries.extend(b"" for _ in kids)
        n_off = 0 if idx == 0 else None
        for j, (kname, kval) in enumerate(kids):
            if isinstance(kval, dict):
                queue.append((first + j, kval))
                entries[first + j] = (kname, kval)  # type: ignore[assignment]
            else:
                payload, compress = kval
                off = len(data)
                if compress:
                    body = struct.pack(">I", len(payload)) + zlib.compress(payload)
                else:
                    body = payload
                data.extend(struct.pack(">I", len(body)) + body)
                entries[first + j] = struct.pack(">IHHHI", name(kname), 1 if compress else 0, 0, 0, off) + mtime
        dir_entry = struct.pack(">IHII", n_off if idx == 0 else name(entries[idx][0]), 2, len(kids), first) + mtime
        entries[idx] = dir_entry
    tree_blob = b"".join(entries)
    header_len = 24 if version >= 3 else 20
    data_off = header_len
    names_off = data_off + len(data)
    tree_off = names_off + len(names)
    header = b"qres" + struct.pack(">IIII", version, tree_off, data_off, names_off)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + bytes(data) + bytes(names) + tree_blob


FILES = {
    "plain.txt": (b"hello, resources", False),
    "sub/packed.bin": (bytes(range(256)) * 40, True),
    "sub/deeper/caf\u00e9.svg": (b"<svg/>", True),
    "empty.dat": (b"", False),
}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_reader_on_hand_built_file(tmp_path, version):
    p = tmp_path / f"v{version}.rcc"
    p.write_bytes(build_rcc(version, FILES))
    got = read_rcc(p)
    assert got == {k: v for k, (v, _) in FILES.items()}
    sizes = list_rcc(p)
    assert set(sizes) == set(FILES)
    assert sizes["sub/packed.bin"] < len(FILES["sub/packed.bin"][0])  # stored compressed


def test_rcc_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.rcc"
    bad.write_bytes(b"RIFF" + b"\x00" * 40)
    with pytest.raises(RccError, match="bad.rcc.*magic"):
        read_rcc(bad)
    blob = build_rcc(2, FILES)
    cut = tmp_path / "cut.rcc"
    cut.write_bytes(blob[: len(blob) - 30])
    with pytest.raises(RccError, match="cut.rcc.*truncated"):
        read_rcc(cut)
    short = tmp_path / "short.rcc"
    short.write_bytes(b"qres\x00")
    with pytest.raises(RccError, match="short.rcc"):
        read_rcc(short)
    # a corrupt zlib stream
    blob = bytearray(build_rcc(2, {"z.bin": (b"x" * 1000, True)}))
    i = blob.index(b"\x78")  # zlib header
    blob[i + 2 : i + 6] = b"\xff\xff\xff\xff"
    bad_z = tmp_path / "badz.rcc"
    bad_z.write_bytes(bytes(blob))
    with pytest.raises(RccError, match="badz.rcc.*zlib"):
        read_rcc(bad_z)


def test_rcc_reader_on_real_gcompris_files():
    rcc = A.require_source("gcompris", A.GCOMPRIS_RCC / "instruments.rcc")
    files = read_rcc(rcc)
    base = "gcompris/src/activities/instruments/resource/"
    assert files[base + "violin.ogg"][:4] == b"OggS"
    assert b"<svg" in files[base + "violin.svg"][:2000]
    assert sum(k.endswith(".ogg") for k in files) == 26
    farm = read_rcc(A.GCOMPRIS_RCC / "explore_farm_animals.rcc")
    assert farm["gcompris/src/activities/explore_farm_animals/resource/animals/owl.webp"][8:12] == b"WEBP"


# ------------------------------------------------------------------------------------------------------
# clear errors
# ------------------------------------------------------------------------------------------------------
def test_missing_asset_error_names_package_and_command(tmp_path):
    missing = tmp_path / "stamps" / "dog.png"
    with pytest.raises(A.AssetMissingError) as e:
        A.require_source("tuxpaint", missing)
    msg = str(e.value)
    assert str(missing) in msg and "tuxpaint-stamps-default" in msg
    assert "apt-get install -y tuxpaint-stamps-default" in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(A.AssetMissingError, match=r"npm ci --prefix assets"):
        A.require_source("fluent", tmp_path / "icons.json")


def test_missing_asset_through_the_catalogue(tmp_path, monkeypatch):
    monkeypatch.setattr(A, "TUXPAINT_STAMPS", tmp_path)
    asset = VisualAsset("dog", "photo", "tuxpaint", "animals/mammals/dogs/dog.png")
    with pytest.raises(A.AssetMissingError, match="apt-get install -y tuxpaint-stamps-default"):
        load_sprite(asset, 77)
    src = AudioSource("lion", "recording", "tuxpaint", "animals/mammals/cats/lion.ogg", True)
    with pytest.raises(A.AssetMissingError, match=r"lion\.ogg"):
        render_clips(src, 1, 0, seconds=0.5, sample_rate=8000)


def test_corrupt_audio_error_names_the_file(tmp_path):
    bad = tmp_path / "clip.flac"
    bad.write_bytes(b"fLaC" + b"\x13" * 200)
    with pytest.raises(ValueError, match=r"cannot decode audio .*clip\.flac.*delete it"):
        read_audio(bad, 16000)
    with pytest.raises(FileNotFoundError, match="nothere.flac"):
        read_audio(tmp_path / "nothere.flac")
    with pytest.raises(ValueError, match="entry.ogg"):
        decode_audio(b"OggS garbage", 16000, name="entry.ogg")


def test_write_audio_is_atomic_flac(tmp_path):
    x = (0.5 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    p = write_audio(tmp_path / "a" / "x.flac", x, 8000)
    assert p.read_bytes()[:4] == b"fLaC"
    assert [q.name for q in p.parent.iterdir()] == ["x.flac"]  # no temp file left
    y = read_audio(p, None)
    assert y.shape == x.shape and np.abs(y - x).max() < 1e-3
    y16 = read_audio(p, 16000)
    assert abs(len(y16) - 16000) <= 1


# ------------------------------------------------------------------------------------------------------
# classes and catalogue
# ------------------------------------------------------------------------------------------------------
def test_classes_are_fixed_and_indexed():
    assert len(CLASSES) >= 18 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert CLASS_NAMES[:10] == (
        "accordion", "acoustic_guitar", "cello", "clarinet", "flute",
        "saxophone", "trumpet", "tuba", "violin", "xylophone",
    )
    assert sum(c.group == "animal" for c in CLASSES) >= 8
    for i, c in enumerate(CLASSES):
        assert class_index(c.name) == i
        if c.group == "instrument":
            assert c.gm_programs and c.pitch_range and c.pitch_range[0] < c.pitch_range[1]
    with pytest.raises(KeyError, match="valid classes"):
        class_index("erhu")


def test_catalogue_invariants():
    auds, vis = audio_sources(), visual_assets()
    assert auds == audio_sources() and vis == visual_assets()  # deterministic
    assert len({a.id for a in auds}) == len(auds) and len({v.id for v in vis}) == len(vis)
    for name in CLASS_NAMES:
        a = [x for x in auds if x.cls == name]
        v = [x for x in vis if x.cls == name]
        assert a, f"{name}: no audio source"
        assert len({x.style for x in v}) >= 2, f"{name}: fewer than 2 visual styles"
        assert all(x.real == (x.kind == "recording") for x in a)
    assert {v.style for v in vis} <= set(STYLES)
    assert audio_sources(["violin"]) == [a for a in auds if a.cls == "violin"]
    assert check_assets() == []  # every file, rcc entry and icon exists
    for it in [*auds, *vis]:
        assert asset_path(it).is_file()


def test_coverage_table():
    df = coverage_table()
    assert list(df.index) == list(CLASS_NAMES)
    assert (df["n_styles"] >= 2).all()
    assert ((df["audio_synthetic"] + df["audio_real"]) >= 1).all()
    assert (df.loc[df.group == "instrument", "audio_synthetic"] == 3).all()
    assert "only 1 real recording" in df.loc["lion", "notes"]


# ------------------------------------------------------------------------------------------------------
# sprites and backgrounds
# ------------------------------------------------------------------------------------------------------
def _one_per_source() -> list[VisualAsset]:
    seen, out = set(), []
    for v in visual_assets():
        if (v.source, v.style) not in seen:
            seen.add((v.source, v.style))
            out.append(v)
    return out


@pytest.mark.parametrize("asset", _one_per_source(), ids=lambda v: f"{v.source}-{v.style}-{v.cls}")
def test_sprite_shape_and_alpha(asset):
    s = load_sprite(asset, max_size=128)
    assert s.dtype == np.uint8 and s.ndim == 3 and s.shape[2] == 4
    assert max(s.shape[:2]) <= 128 and min(s.shape[:2]) >= 8
    alpha = s[..., 3] > 8
    # cropped to the alpha bounding box, and a real mask (neither empty nor a full rectangle)
    assert alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any()
    assert 0.05 < alpha.mean() < 0.97
    assert load_sprite(asset, max_size=128) is s  # cached
    assert not s.flags.writeable


def test_every_photo_has_a_cut_out_mask():
    for v in visual_assets():
        if v.style == "photo":
            a = load_sprite(v)[..., 3]
            assert 0.2 < (a > 8).mean() < 0.95, v.id


def test_backgrounds():
    keys = backgrounds()
    assert any(k.startswith("proc:") for k in keys) and any(not k.startswith("proc:") for k in keys)
    for k in keys:
        a = load_background(k, 64, np.random.default_rng(3))
        b = load_background(k, 64, np.random.default_rng(3))
        assert a.shape == (64, 64, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b), k
        assert a.std() > 1.0, k


# ------------------------------------------------------------------------------------------------------
# audio clips
# ------------------------------------------------------------------------------------------------------
def _src(cls: str, source: str) -> AudioSource:
    return next(a for a in audio_sources([cls]) if a.source == source)


@pytest.mark.parametrize(
    "cls,source", [("violin", "timgm6mb"), ("xylophone", "timgm6mb"), ("dog", "tuxpaint"), ("cello", "gcompris")]
)
def test_render_clips_deterministic_and_normalised(cls, source):
    src = _src(cls, source)
    a = render_clips(src, 3, seed=11)
    assert a.shape == (3, 48000) and a.dtype == np.float32
    # an unrelated render in between must not change anything (the synthesiser is reset per clip)
    render_clips(_src("tuba", "timgm6mb"), 1, seed=5)
    assert np.array_equal(a, render_clips(src, 3, seed=11))
    assert np.array_equal(a[:2], render_clips(src, 2, seed=11))  # clip i depends only on (source, seed, i)
    b = render_clips(src, 3, seed=12)
    assert not np.allclose(a, b)
    assert not np.allclose(a[0], a[1])
    level = rms_dbfs(a)
    peak = np.abs(a).max(axis=1)
    # the loudness rule: RMS at -20 dBFS unless the peak limit (0.99) binds first
    for lv, pk in zip(level, peak):
        assert abs(lv + 20) < 0.05 or (abs(pk - 0.99) < 1e-3 and lv < -20), (lv, pk)
    assert (peak <= 0.99 + 1e-6).all()


def test_render_clips_other_rate_and_length():
    a = render_clips(_src("owl", "gcompris"), 2, seed=0, seconds=1.0, sample_rate=8000)
    assert a.shape == (2, 8000)
    assert np.isfinite(a).all()


# ------------------------------------------------------------------------------------------------------
# loudness and mixing
# ------------------------------------------------------------------------------------------------------
def test_loudness_normalise_rule():
    x = np.full(1000, 0.3, dtype=np.float32)
    assert np.allclose(loudness_normalise(x), 0.1)  # RMS -20 dBFS
    spike = np.zeros(1000, dtype=np.float32)
    spike[10] = 0.5
    y = loudness_normalise(spike)
    assert np.isclose(np.abs(y).max(), 0.99)  # peak protection wins
    assert np.array_equal(loudness_normalise(np.zeros(10)), np.zeros(10))
    batch = loudness_normalise(np.stack([x, 2 * x]))
    assert np.allclose(batch, 0.1)


def test_mix_exact():
    s = np.ones((2, 4), dtype=np.float32) * np.array([[0.2], [0.4]], dtype=np.float32)
    y = mix(s, np.array([0.0, -20 * np.log10(2)]))
    assert np.allclose(y, 0.2 + 0.2)
    y = mix(s, np.array([20 * np.log10(2), 0.0]))
    assert np.allclose(y, 0.8)
    # peak protection: 0.6 + 0.8 = 1.4 -> whole mixture scaled to 0.99, components alike
    y, comps, nz = mix(np.array([[0.6, -0.6], [0.8, 0.8]]), np.zeros(2), return_components=True)
    assert np.allclose(y, [0.99, 0.99 * 0.2 / 1.4])
    assert np.allclose(comps.sum(0), y) and nz is None
    # noise at a given SNR
    sig = np.array([[1.0, -1.0, 1.0, -1.0]]) * 0.1
    noise = np.array([1.0, 1.0, -1.0, -1.0])
    y, comps, nz = mix(sig, np.zeros(1), noise=noise, snr_db=20.0, return_components=True)
    assert np.isclose(10 * np.log10(np.mean(comps[0] ** 2) / np.mean(nz**2)), 20.0)
    assert np.allclose(y, comps[0] + nz)
    with pytest.raises(ValueError):
        mix(np.ones((2, 4)), np.zeros(3))
