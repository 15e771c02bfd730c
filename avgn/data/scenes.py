"""Scene composition for the embedded benchmark: paste object sprites on a background.

A *frame* is one ``image_size`` x ``image_size`` picture: a background plus objects pasted in a
random order (later objects occlude earlier ones). Each object is a sprite from
:func:`avgn.data.pictures.load_sprite` (RGBA, alpha = object mask), transformed by

* a scale: the sprite's longer side becomes ``scale * image_size`` pixels, ``scale`` uniform in
  :attr:`~avgn.data.config.DataConfig.scale_solo` for the single sounding object of a one-source
  frame and in :attr:`~avgn.data.config.DataConfig.scale_multi` otherwise (x 0.85 with 5+ objects);
* a horizontal flip (p = 0.5) and a rotation uniform in ``+-rotation_deg``;
* a colour jitter: brightness, contrast and saturation factors uniform in ``1 +- color_jitter``;
* a position uniform over the places where the object fits inside the frame.

The stored mask of a *sounding* object is its **visible** part: its alpha >= 128 minus every object
pasted after it. A layout is redrawn when a sounding object keeps less than ``visibility_floor`` of
its pixels (or fewer than :data:`MIN_VISIBLE_PIXELS`); after ``max_layout_tries`` redraws the last
distractor is dropped, and with no distractor left the objects are shrunk by 15 %. Every random
draw comes from the ``numpy.random.Generator`` handed in, in a fixed order, so a frame is a pure
function of its seed.

A ``concat`` image (VGGSound-Duet protocol) is two one-source frames side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "MIN_VISIBLE_PIXELS",
    "FrameObject",
    "FrameResult",
    "transform_sprite",
    "compose_frame",
    "mask_box",
]

#: a sounding object must keep at least this many visible pixels (on top of the visibility floor)
MIN_VISIBLE_PIXELS = 64


@dataclass
class FrameObject:
    """One object to paste: its RGBA sprite and whether (and as which source) it sounds."""

    sprite: np.ndarray  # [h, w, 4] uint8
    source_index: int | None  # index among the frame's sounding sources, None for a distractor


@dataclass
class FrameResult:
    """A rendered frame and the ground truth of its sounding objects (in ``source_index`` order)."""

    image: np.ndarray  # [H, W, 3] uint8
    masks: list[np.ndarray]  # visible mask per sounding source, [H, W] bool
    visibility: list[float]  # visible / full pixels per sounding source
    n_distractors: int  # distractors actually pasted (some may have been dropped)
    tries: int  # layouts drawn


def _jitter(rgb: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Brightness / contrast / saturation jitter of ``[h, w, 3]`` float32 in ``[0, 255]``."""
    b, c, s = (1.0 + rng.uniform(-amount, amount, size=3)).tolist()
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = rgb * b
    mean = float(gray.mean()) * b
    out = (out - mean) * c + mean
    g2 = (out @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    out = g2 + (out - g2) * s
    return np.clip(out, 0.0, 255.0)


def transform_sprite(
    sprite: np.ndarray,
    long_side: int,
    angle: float,
    flip: bool,
    jitter: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Scale (longer side -> ``long_side`` px), flip, colour-jitter and rotate an RGBA sprite.

    Resizing and rotation work on premultiplied alpha (no dark fringes). The result is cropped to
    its non-transparent extent; ``[h, w, 4]`` uint8.
    """
    if sprite.ndim != 3 or sprite.shape[2] != 4:
        raise ValueError(f"a sprite must be [h, w, 4] RGBA, got {sprite.shape}")
    h, w = sprite.shape[:2]
    k = long_side / max(h, w)
    nh, nw = max(1, round(h * k)), max(1, round(w * k))
    rgba = sprite.astype(np.float32)
    if jitter > 0:
        rgba[..., :3] = _jitter(rgba[..., :3], rng, jitter)
    im = Image.fromarray(np.round(rgba).astype(np.uint8), "RGBA").convert("RGBa")
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if angle:
        im = im.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    im = im.convert("RGBA")
    out = np.asarray(im)
    ys, xs = np.nonzero(out[..., 3] >= 128)
    if ys.size == 0:  # degenerate (tiny) sprite: keep as is
        return out.copy()
    return out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy()


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel box ``(x1, y1, x2, y2)`` of a bool mask, ``x2``/``y2`` exclusive (tight extent).

    Raises :class:`ValueError` for an empty mask.
    """
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        raise ValueError("empty mask has no box")
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _scales(objects: list[FrameObject], rng, scale_solo, scale_multi) -> list[float]:
    n_sounding = sum(o.source_index is not None for o in objects)
    shrink = 0.85 if len(objects) >= 5 else 1.0
    out = []
    for o in objects:
        rng_range = scale_solo if (o.source_index is not None and n_sounding == 1) else scale_multi
        out.append(float(rng.uniform(*rng_range)) * shrink)
    return out


def compose_frame(
    background: np.ndarray,
    objects: list[FrameObject],
    rng: np.random.Generator,
    *,
    scale_solo: tuple[float, float] = (0.45, 0.8),
    scale_multi: tuple[float, float] = (0.32, 0.55),
    rotation_deg: float = 15.0,
    color_jitter: float = 0.2,
    visibility_floor: float = 0.3,
    max_layout_tries: int = 40,
) -> FrameResult:
    """Paste ``objects`` on ``background`` (``[H, W, 3]`` uint8); see the module docstring.

    Returns the image and, for every sounding object (``source_index`` 0..S-1), its visible mask
    and visibility. Raises :class:`RuntimeError` if no valid layout is found even with every
    distractor dropped and the objects shrunk three times (it does not happen with sane settings).
    """
    bg = np.asarray(background)
    if bg.ndim != 3 or bg.shape[2] != 3:
        raise ValueError(f"background must be [H, W, 3], got {bg.shape}")
    H, W = bg.shape[:2]
    objs = list(objects)
    n_src = sum(o.source_index is not None for o in objs)
    if sorted(o.source_index for o in objs if o.source_index is not None) != list(range(n_src)):
        raise ValueError("sounding objects must have source_index 0..S-1")
    side = min(H, W)
    tries = 0
    shrink = 1.0
    shrinks = 0
    while True:
        scales = [s * shrink for s in _scales(objs, rng, scale_solo, scale_multi)]
        sprites = []
        for o, s in zip(objs, scales):
            angle = float(rng.uniform(-rotation_deg, rotation_deg))
            flip = bool(rng.random() < 0.5)
            sp = transform_sprite(o.sprite, max(4, round(s * side)), angle, flip, color_jitter, rng)
            if sp.shape[0] > H or sp.shape[1] > W:  # rotation made it too big: fit it in
                k = min(H / sp.shape[0], W / sp.shape[1])
                im = Image.fromarray(sp, "RGBA").convert("RGBa")
                im = im.resize((max(1, int(sp.shape[1] * k)), max(1, int(sp.shape[0] * k))), Image.Resampling.BILINEAR)
                sp = np.asarray(im.convert("RGBA")).copy()
            sprites.append(sp)
        for _ in range(max_layout_tries):
            tries += 1
            order = rng.permutation(len(objs))
            pos = [
                (int(rng.integers(0, H - sp.shape[0] + 1)), int(rng.integers(0, W - sp.shape[1] + 1)))
                for sp in sprites
            ]
            full = []
            for i in order:
                sp = sprites[i]
                y, x = pos[i]
                m = np.zeros((H, W), dtype=bool)
                m[y : y + sp.shape[0], x : x + sp.shape[1]] = sp[..., 3] >= 128
                full.append(m)
            covered = np.zeros((H, W), dtype=bool)
            visible = [None] * len(order)
            for k in range(len(order) - 1, -1, -1):
                visible[k] = full[k] & ~covered
                covered |= full[k]
            ok = True
            vis = {}
            for k, i in enumerate(order):
                si = objs[i].source_index
                if si is None:
                    continue
                n_full = int(full[k].sum())
                n_vis = int(visible[k].sum())
                frac = n_vis / n_full if n_full else 0.0
                if n_vis < MIN_VISIBLE_PIXELS or frac < visibility_floor:
                    ok = False
                    break
                vis[si] = (visible[k], frac)
            if not ok:
                continue
            canvas = bg.astype(np.float32)
            for i in order:
                sp = sprites[i]
                y, x = pos[i]
                a = sp[..., 3:4].astype(np.float32) / 255.0
                region = canvas[y : y + sp.shape[0], x : x + sp.shape[1]]
                region *= 1.0 - a
                region += sp[..., :3].astype(np.float32) * a
            image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
            return FrameResult(
                image=image,
                masks=[vis[s][0] for s in range(n_src)],
                visibility=[float(vis[s][1]) for s in range(n_src)],
                n_distractors=len(objs) - n_src,
                tries=tries,
            )
        # no valid layout with these sprites: drop a distractor, else shrink
        dis = [i for i, o in enumerate(objs) if o.source_index is None]
        if dis:
            objs.pop(dis[-1])
        else:
            shrinks += 1
            shrink *= 0.85
            if shrinks > 3:
                raise RuntimeError(
                    f"no layout keeps every sounding object >= {visibility_floor:.0%} visible after {tries} tries"
                )
