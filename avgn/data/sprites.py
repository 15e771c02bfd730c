"""Turn the installed pictures into RGBA sprites: raster cut-outs, SVG drawings, icon sets and colour emoji.

Every sprite is an ``H x W x 4`` uint8 array, cropped to the bounding box of its alpha mask
(alpha > :data:`ALPHA_THRESHOLD`) and shrunk (never enlarged) so that its longer side is at most
``max_size``. Resizing is done by Pillow in premultiplied alpha (no dark fringes).

Renderers:

* raster (PNG / WebP, e.g. Tux Paint photo cut-outs): decoded with Pillow;
* SVG (GCompris, OpenClipart, Twemoji): :func:`cairosvg.svg2png`, rendered at twice ``max_size``;
* Iconify JSON icon sets (``@iconify-json/*``): the icon ``body`` wrapped in an ``<svg>`` with the set's
  view box, then as SVG; single-colour sets (``currentColor``) are filled with :data:`ICON_COLOUR`;
* Noto Color Emoji: drawn with Pillow at font size **109** (the only size of the bitmap strike),
  ``embedded_color=True``.
"""

from __future__ import annotations

import functools
import io
import json
import re
from pathlib import Path

import numpy as np

__all__ = [
    "ALPHA_THRESHOLD",
    "ICON_COLOUR",
    "crop_to_alpha",
    "fit_max_size",
    "decode_raster",
    "render_svg",
    "iconify_svg",
    "render_noto_emoji",
    "alpha_coverage",
]

ALPHA_THRESHOLD = 8
ICON_COLOUR = "#2b2b2b"
NOTO_SIZE = 109


def crop_to_alpha(rgba: np.ndarray, threshold: int = ALPHA_THRESHOLD, name: str = "sprite") -> np.ndarray:
    """Crop an RGBA image to the bounding box of ``alpha > threshold``; ``ValueError`` if it is empty."""
    a = rgba[..., 3] > threshold
    rows, cols = np.flatnonzero(a.any(axis=1)), np.flatnonzero(a.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"{name}: alpha mask is empty (fully transparent image)")
    return np.ascontiguousarray(rgba[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


def fit_max_size(rgba: np.ndarray, max_size: int) -> np.ndarray:
    """Shrink (never enlarge) so that the longer side is at most ``max_size`` (Lanczos, premultiplied)."""
    from PIL import Image

    h, w = rgba.shape[:2]
    if max(h, w) <= max_size:
        return rgba
    s = max_size / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    im = Image.fromarray(rgba, "RGBA").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def decode_raster(data: bytes, name: str = "<image>") -> np.ndarray:
    """Decode PNG/WebP/... bytes to RGBA uint8 (an image without alpha gets an opaque alpha)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGBA"), dtype=np.uint8)
    except Exception as exc:
        raise ValueError(f"cannot decode image {name}: {exc}") from exc


def render_svg(svg: bytes | str, size: int, name: str = "<svg>") -> np.ndarray:
    """Rasterise an SVG with cairosvg so that its longer side is ``size`` pixels; RGBA uint8."""
    import cairosvg

    if isinstance(svg, str):
        svg = svg.encode("utf-8")
    svg = expand_internal_entities(svg)
    try:
        # cairosvg keeps the aspect ratio when only one output side is given: fit the width first and
        # re-render by height when the picture turns out taller than wide
        png = cairosvg.svg2png(bytestring=svg, output_width=size)
        w, h = _png_size(png)
        if h > size:
            png = cairosvg.svg2png(bytestring=svg, output_height=size)
    except Exception as exc:
        raise ValueError(f"cannot render SVG {name}: {exc}") from exc
    return decode_raster(png, name)


_ENTITY = re.compile(rb'<!ENTITY\s+([\w.-]+)\s+(?:"([^"]*)"|\'([^\']*)\')\s*>')
_DOCTYPE = re.compile(rb"<!DOCTYPE[^\[>]*(\[.*?\])?\s*>", re.S)


def expand_internal_entities(svg: bytes) -> bytes:
    """Inline the internal ``<!ENTITY name "value">`` declarations that Illustrator-made SVGs carry
    (``&ns_svg;`` ...) and drop the DOCTYPE, so cairosvg's safe XML parser accepts the file.
    External entities are never resolved."""
    m = _DOCTYPE.search(svg)
    if not m:
        return svg
    ents = {e.group(1): e.group(2) if e.group(2) is not None else e.group(3) for e in _ENTITY.finditer(m.group(0))}
    out = svg[: m.start()] + svg[m.end() :]
    for _ in range(3):  # entities may refer to each other
        for k, v in ents.items():
            out = out.replace(b"&" + k + b";", v)
    return out


def _png_size(png: bytes) -> tuple[int, int]:
    # IHDR: width, height big-endian at bytes 16..24
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


@functools.lru_cache(maxsize=4)
def _iconify_set(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def iconify_svg(icons_json: str | Path, name: str, colour: str = ICON_COLOUR) -> str:
    """The SVG document of icon ``name`` in an Iconify JSON set (``.../@iconify-json/<set>/icons.json``).

    Aliases are followed (with their own size/transform fields ignored except the parent's view box).
    """
    data = _iconify_set(str(icons_json))
    icons, aliases = data["icons"], data.get("aliases", {})
    seen = set()
    key = name
    while key not in icons:
        if key in seen or key not in aliases:
            raise KeyError(f"{icons_json}: no icon {name!r}")
        seen.add(key)
        key = aliases[key]["parent"]
    icon = icons[key]
    left, top = icon.get("left", data.get("left", 0)), icon.get("top", data.get("top", 0))
    width, height = icon.get("width", data.get("width", 16)), icon.get("height", data.get("height", 16))
    body = icon["body"].replace("currentColor", colour)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'viewBox="{left} {top} {width} {height}" width="{width}" height="{height}">{body}</svg>'
    )


@functools.lru_cache(maxsize=2)
def _noto_font(path: str):
    from PIL import ImageFont

    return ImageFont.truetype(path, NOTO_SIZE)


def render_noto_emoji(text: str, font_path: str | Path) -> np.ndarray:
    """Draw an emoji sequence with the Noto Color Emoji bitmap font (size 109); RGBA uint8, uncropped."""
    from PIL import Image, ImageDraw

    font = _noto_font(str(font_path))
    canvas = Image.new("RGBA", (NOTO_SIZE * 2, NOTO_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((NOTO_SIZE // 4, NOTO_SIZE // 4), text, font=font, embedded_color=True)
    return np.asarray(canvas, dtype=np.uint8)


def alpha_coverage(rgba: np.ndarray, threshold: int = ALPHA_THRESHOLD) -> float:
    """Fraction of the sprite's pixels that are (partly) opaque: 1.0 means "no real mask"."""
    return float((rgba[..., 3] > threshold).mean())
