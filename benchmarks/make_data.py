"""Build a small benchmark for a profile, from the real assets or from synthetic stand-ins.

The throughput benchmarks need a build (:func:`avgn.data.build.build_dataset`) of the profile they
train, but not a big one: training items are mixed on the fly from the build's scenes, so a few
scenes per class feed any number of training steps, and samples/s depends on the input shapes
(frame size, clip length, batch), not on what the pictures and sounds show. This script builds the
``smoke`` data sizes (every split and task, a few scenes each; ``--set`` changes any
:class:`avgn.data.config.DataConfig` field) recorded under the profile asked for, so that
``avgn.train.train`` accepts it for that profile.

``--assets real`` reads the installed packages (:mod:`avgn.data.catalog`: Debian soundfonts,
GCompris, Tux Paint, npm emoji sets; ``scripts/setup.sh``). ``--assets synthetic`` (the default)
needs none of them: :class:`SyntheticProvider` draws coloured shapes and renders harmonic tones
for the real class list, with the same sources (held-out style, held-out soundfont, recordings)
so that every split of the build exists. Nothing is downloaded either way; use it on a machine
without the asset packages (a GPU box) or for a quick check.

    python benchmarks/make_data.py --profile gpu --out DIR [--assets synthetic|real|auto]
        [--set train_solo_per_class=8 --set image_size=96 ...] [--seed 0] [--workers N]

Prints one JSON line: ``{"out", "profile", "assets", "config", "seconds", "scenes"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avgn.data.catalog import AudioSource, VisualAsset  # noqa: E402
from avgn.data.classes import CLASSES  # noqa: E402
from avgn.data.config import DATA_PROFILES  # noqa: E402


class SyntheticProvider:
    """Stand-in assets for :func:`avgn.data.build.build_dataset` (the provider interface of
    :class:`avgn.data.build.CatalogProvider`): the real class list; instruments get three
    soundfont sources (``fluidr3``, ``timgm6mb``, ``musescore``: the held-out one), animals two
    recorded sources; every class gets a photo (``tuxpaint``), a drawing (``openclipart``) and two
    emoji styles (``noto``, and ``twemoji``: the held-out style). Pictures are class-coloured
    ellipses / rectangles with a pattern, sounds harmonic tones with a class pitch and noise."""

    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in CLASSES)

    def _group(self, cls: str) -> str:
        return next(c.group for c in CLASSES if c.name == cls)

    def audio_sources(self, classes=None) -> list[AudioSource]:
        out = []
        for c in classes or self.class_names():
            if self._group(c) == "instrument":
                out += [AudioSource(c, "soundfont", s, f"{s}/{c}", False) for s in ("fluidr3", "timgm6mb", "musescore")]
            else:
                out += [AudioSource(c, "recording", s, f"{s}/{c}", True) for s in ("gcompris", "tuxpaint")]
        return out

    def visual_assets(self, classes=None) -> list[VisualAsset]:
        styles = (("photo", "tuxpaint"), ("drawing", "openclipart"), ("emoji", "noto"), ("emoji", "twemoji"))
        return [VisualAsset(c, st, src, f"{src}/{c}") for c in classes or self.class_names() for st, src in styles]

    def backgrounds(self) -> list[str]:
        return ["flat", "noise", "gradient"]

    def load_background(self, key: str, size: int, rng: np.random.Generator) -> np.ndarray:
        if key == "flat":
            return np.full((size, size, 3), rng.integers(60, 200, 3), np.uint8)
        if key == "gradient":
            g = np.linspace(0, 1, size)[:, None, None] * rng.uniform(80, 255, 3)
            return np.broadcast_to(g, (size, size, 3)).astype(np.uint8).copy()
        return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)

    def load_sprite(self, asset: VisualAsset, max_size: int = 256) -> np.ndarray:
        i = self.class_names().index(asset.cls)
        h, w = min(max_size, 120 + 3 * i), min(max_size, 180 - 2 * i)
        yy, xx = np.mgrid[:h, :w]
        if asset.style == "photo":
            inside = np.ones((h, w), bool)
        else:
            inside = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 < 1
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., 0] = (37 * i) % 256
        rgba[..., 1] = (255 - 23 * i) % 256
        rgba[..., 2] = 60 if asset.source == "twemoji" else 200
        stripes = ((xx // (4 + i % 5)) % 2).astype(bool)
        rgba[stripes, :3] //= 2
        rgba[..., 3] = inside * 255
        return rgba

    def render_clips(self, source: AudioSource, n: int, seed: int, seconds: float = 3.0, sample_rate: int = 16000) -> np.ndarray:
        i = self.class_names().index(source.cls)
        rng = np.random.default_rng([seed, i, sum(map(ord, source.source))])
        t = np.arange(int(round(seconds * sample_rate))) / sample_rate
        out = []
        for _ in range(n):
            f0 = 110.0 * 2 ** (i / 8) * rng.uniform(0.95, 1.05)
            x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
            x = x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 3.0) * t)) + 0.05 * rng.standard_normal(t.shape)
            out.append(0.1 * x / np.sqrt(np.mean(x * x)))
        return np.asarray(out, np.float32)


def real_assets_missing() -> list[str]:
    """What the real catalog lacks here (files only; empty when a real build can run)."""
    from avgn.data import catalog

    missing = [f"{it.id}: {catalog.asset_path(it)}" for it in [*catalog.audio_sources(), *catalog.visual_assets()]
               if not catalog.asset_path(it).is_file()]
    for mod in ("tinysoundfont", "cairosvg"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(f"Python package {mod}")
    return missing


def main(argv: list[str] | None = None) -> dict:
    from avgn.cli import _parse_sets
    from avgn.config import PROFILE_NAMES
    from avgn.data.build import build_dataset
    from avgn.data.manifest import load_build_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILE_NAMES, default="gpu", help="the profile the build is recorded for")
    ap.add_argument("--out", required=True)
    ap.add_argument("--assets", choices=["synthetic", "real", "auto"], default="synthetic",
                    help="auto: real when every catalog asset is installed, else synthetic")
    ap.add_argument("--base", choices=list(DATA_PROFILES), default="smoke", help="data sizes to start from (default smoke)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a DataConfig field, e.g. train_solo_per_class=8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)

    assets = args.assets
    if assets != "synthetic":
        missing = real_assets_missing()
        if missing and assets == "real":
            raise SystemExit(f"--assets real: {len(missing)} assets missing, e.g. {missing[:3]} (scripts/setup.sh installs them)")
        assets = "synthetic" if missing else "real"
    cfg = DATA_PROFILES[args.base].with_overrides(**{k: tuple(v) if isinstance(v, list) else v for k, v in _parse_sets(args.set).items()})
    t0 = time.perf_counter()
    build_dataset(args.profile, args.seed, args.out, progress=False, config=cfg, workers=args.workers,
                  provider=SyntheticProvider() if assets == "synthetic" else None)
    info = load_build_info(args.out)
    res = {"out": str(args.out), "profile": args.profile, "assets": assets, "base": args.base, "config": cfg.to_dict(),
           "seconds": round(time.perf_counter() - t0, 2), "scenes": sum(info.get("counts", {}).values()),
           "classes": len(info["classes"])}
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
