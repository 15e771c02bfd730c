"""The catalogue's pictures as arrays: object sprites and scene backgrounds.

* :func:`load_sprite`: the RGBA sprite of a :class:`~avgn.data.catalog.VisualAsset`, rendered by
  :mod:`avgn.data.sprites` (raster, SVG, icon set or colour emoji).
* :func:`load_background`: a random crop of a real photo (``skimage:*``, ``gcompris:*``) or a
  procedural texture (``proc:*``) drawn from the scene's random stream; :func:`backgrounds` lists them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from avgn.data import assets as A
from avgn.data import sprites as S
from avgn.data.catalog import _GI, VisualAsset, read_asset_bytes, require_asset

__all__ = ["load_sprite", "backgrounds", "load_background"]


def load_sprite(asset: VisualAsset, max_size: int = 256) -> np.ndarray:
    """RGBA uint8 ``H x W x 4`` sprite, cropped to its alpha bounding box, longer side <= ``max_size``.

    Cached in memory per (asset, max_size); the returned array is read-only (copy it to modify).
    """
    return _load_sprite(asset, int(max_size))


@functools.lru_cache(maxsize=1024)
def _load_sprite(asset: VisualAsset, max_size: int) -> np.ndarray:
    src, key = asset.source, asset.key
    render = 2 * max_size
    if src == "noto":
        font = A.require_source(src, A.NOTO_EMOJI_FONT)
        rgba = S.render_noto_emoji("".join(chr(int(c, 16)) for c in key.split("-")), font)
    elif src in ("fluent", "openmoji", "game-icons"):
        path = require_asset(asset)
        rgba = S.render_svg(S.iconify_svg(path, key), render, f"{path}#{key}")
    elif src == "twemoji":
        path = require_asset(asset)
        rgba = S.render_svg(path.read_bytes(), render, str(path))
    else:
        (name, data), = read_asset_bytes(src, key)
        if name.endswith((".svg", ".svgz")):
            if name.endswith(".svgz"):
                import gzip

                data = gzip.decompress(data)
            rgba = S.render_svg(data, render, name)
        else:
            rgba = S.decode_raster(data, name)
    rgba = S.fit_max_size(S.crop_to_alpha(rgba, name=asset.id), max_size)
    rgba.setflags(write=False)
    return rgba



_CLICK = f"clickgame.rcc!{_GI}clickgame/resource/"
_BG_PHOTOS: dict[str, tuple[str, str]] = {
    # skimage.data photos without a main object (textures, a lunar surface, deep sky)
    "skimage:brick": ("skimage", "brick.png"),
    "skimage:grass": ("skimage", "grass.png"),
    "skimage:gravel": ("skimage", "gravel.png"),
    "skimage:moon": ("skimage", "moon.png"),
    "skimage:hubble_deep_field": ("skimage", "hubble_deep_field.jpg"),
    # GCompris underwater photos (click-on-the-fish game backgrounds) and cardboard textures
    "gcompris:sea1": ("gcompris", _CLICK + "sea1.webp"),
    "gcompris:sea2": ("gcompris", _CLICK + "sea2.webp"),
    "gcompris:sea3": ("gcompris", _CLICK + "sea3.webp"),
    "gcompris:sea4": ("gcompris", _CLICK + "sea4.webp"),
    "gcompris:sea5": ("gcompris", _CLICK + "sea5.webp"),
    "gcompris:texture01": ("gcompris", f"digital_electricity.rcc!{_GI}digital_electricity/resource/texture01.webp"),
    "gcompris:texture02": ("gcompris", f"digital_electricity.rcc!{_GI}digital_electricity/resource/texture02.webp"),
}
_BG_PROCEDURAL = ("proc:gradient", "proc:noise", "proc:stripes", "proc:blobs")


def backgrounds() -> list[str]:
    """Background ids: real photos (``skimage:*``, ``gcompris:*``) then procedural textures (``proc:*``)."""
    return [*_BG_PHOTOS, *_BG_PROCEDURAL]


@functools.lru_cache(maxsize=32)
def _bg_photo(key: str) -> np.ndarray:
    source, ref = _BG_PHOTOS[key]
    if source == "skimage":
        import skimage

        path = A.require_source("skimage", Path(skimage.__file__).parent / "data" / ref)
        rgba = S.decode_raster(path.read_bytes(), str(path))
    else:
        (name, data), = read_asset_bytes(source, ref)
        rgba = S.decode_raster(data, name)
    rgb = np.ascontiguousarray(rgba[..., :3])
    rgb.setflags(write=False)
    return rgb


def _resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img, "RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random ``cells x cells`` grid upsampled bicubically."""
    from PIL import Image

    g = rng.random((cells + 1, cells + 1)).astype(np.float32)
    im = Image.fromarray(g, "F").resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(im), 0, 1)


def _procedural(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    if kind == "gradient":
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * xx + np.sin(ang) * yy)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        t = t + 0.08 * (_smooth_noise(rng, size, 6) - 0.5)
    elif kind == "noise":  # fractal value noise (4 octaves)
        t = sum(_smooth_noise(rng, size, 2 ** (o + 2)) / 2**o for o in range(4)) / 1.875
    elif kind == "stripes":
        ang, freq = rng.uniform(0, np.pi), rng.uniform(3, 12)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(ang) * xx + np.sin(ang) * yy) + rng.uniform(0, 6.3))
        t = 0.7 * t + 0.3 * _smooth_noise(rng, size, 8)
    elif kind == "blobs":
        t = (_smooth_noise(rng, size, 5) > 0.5).astype(np.float32)
        t = 0.75 * t + 0.25 * _smooth_noise(rng, size, 16)
    else:
        raise KeyError(f"unknown procedural background {kind!r}")
    t = np.clip(t, 0, 1)[..., None]
    img = c1 * (1 - t) + c2 * t + rng.normal(0, 4, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def load_background(key: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size x size x 3`` uint8 background: a random square crop (side 40-100 % of the photo's shorter
    side, random position, random horizontal flip) resized to ``size``, or a procedural texture drawn
    with ``rng``. Deterministic given the state of ``rng``."""
    if key.startswith("proc:"):
        return _procedural(key[5:], int(size), rng)
    if key not in _BG_PHOTOS:
        raise KeyError(f"unknown background {key!r}; known: {', '.join(backgrounds())}")
    img = _bg_photo(key)
    h, w = img.shape[:2]
    side = max(8, int(round(min(h, w) * rng.uniform(0.4, 1.0))))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = img[y0 : y0 + side, x0 : x0 + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return _resize_rgb(np.ascontiguousarray(crop), int(size))
