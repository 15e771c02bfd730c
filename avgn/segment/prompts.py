"""Point prompts from a localization heatmap (GSAVL's samplers) and the map fusion they start from.

A heatmap ``[H, W]`` (any real values; finite) becomes point prompts ``[N, 2]`` as ``(x, y)``
pixel coordinates (column, row; the convention of Segment Anything), all foreground (label 1):

* ``naive`` — the argmax (the first in row-major order among ties).
* ``grid`` — the argmax plus the best of its 8 neighbours ``offset`` pixels away (the 3 x 3 grid
  around it; GSAVL uses 10 px). Neighbours outside the image are skipped; only neighbours whose
  value is above the map's minimum count (GSAVL's code crashes when none is above 0; here the argmax
  alone is returned).
* ``probabilistic`` — ``k`` points drawn with replacement, with probability proportional to
  ``map - min(map)``, from the top ``top_fraction`` of the pixels (GSAVL: k = 3 from the top 1 %;
  its draw is unseeded, here it takes a ``torch.Generator``). If every candidate has weight 0 the
  draw is uniform over the candidates.

A **flat map** (max == min, all-zero included) has no peak: every sampler returns the single point
at the image centre, and :func:`is_flat` lets the caller count such maps. NaN / inf raise.

:func:`fuse_maps` is GSAVL's fusion ``minmax(alpha * minmax(av) + (1 - alpha) * minmax(prior))``
with ``alpha = 0.4``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from avgn.models.priors import fuse_with_prior, minmax_normalize

__all__ = ["SAMPLERS", "PromptConfig", "GSAVL_ALPHA", "is_flat", "sample_points", "fuse_maps"]

SAMPLERS = ("naive", "grid", "probabilistic")
Sampler = Literal["naive", "grid", "probabilistic"]
#: GSAVL's weight of the audio-visual map in the fusion with the object prior.
GSAVL_ALPHA = 0.4


@dataclass(frozen=True)
class PromptConfig:
    """How to turn a map into point prompts (GSAVL's published settings by default)."""

    sampler: Sampler = "naive"
    offset: int = 10  # grid: distance of the 8 neighbours, in pixels of the map
    k: int = 3  # probabilistic: points drawn (with replacement)
    top_fraction: float = 0.01  # probabilistic: the candidates, a fraction of the pixels

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.offset < 1 or self.k < 1 or not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"need offset >= 1, k >= 1 and 0 < top_fraction <= 1; got {self}")


def _check(heat: Tensor) -> None:
    if heat.dim() != 2:
        raise ValueError(f"a heatmap must be [H, W], got {tuple(heat.shape)}")
    if not bool(torch.isfinite(heat).all()):
        raise ValueError("the heatmap has NaN or inf values")


def is_flat(heat: Tensor) -> bool:
    """Whether ``heat`` ``[H, W]`` is constant (no peak to prompt at)."""
    _check(heat)
    return bool(heat.max() == heat.min())


def _centre(h: int, w: int) -> Tensor:
    return torch.tensor([[w // 2, h // 2]], dtype=torch.long)


def sample_points(heat: Tensor, cfg: PromptConfig = PromptConfig(), generator: torch.Generator | None = None) -> Tensor:
    """Point prompts of one heatmap ``[H, W]``: ``[N, 2]`` long ``(x, y)`` (module docstring).

    ``generator`` seeds the ``probabilistic`` sampler (required for it, so that no draw is unseeded).
    """
    _check(heat)
    h, w = heat.shape
    if is_flat(heat):
        return _centre(h, w)
    flat = heat.detach().flatten().double().cpu()
    if cfg.sampler == "naive" or cfg.sampler == "grid":
        i = int(torch.argmax(flat))  # the first maximum in row-major order
        y, x = divmod(i, w)
        pts = [(x, y)]
        if cfg.sampler == "grid":
            lo = float(flat.min())
            best, best_v = None, lo
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    nx, ny = x + dx * cfg.offset, y + dy * cfg.offset
                    if (dx, dy) == (0, 0) or not (0 <= nx < w and 0 <= ny < h):
                        continue
                    v = float(flat[ny * w + nx])
                    if v > best_v:
                        best, best_v = (nx, ny), v
            if best is not None:
                pts.append(best)
        return torch.tensor(pts, dtype=torch.long)
    if generator is None:
        raise ValueError("the probabilistic sampler needs a torch.Generator (seeded draws only)")
    n_top = max(1, int(round(cfg.top_fraction * flat.numel())))
    order = torch.sort(flat, descending=True, stable=True).indices[:n_top]
    weights = flat[order] - flat.min()
    if float(weights.sum()) <= 0:
        weights = torch.ones_like(weights)
    pick = order[torch.multinomial(weights, cfg.k, replacement=True, generator=generator)]
    return torch.stack([pick % w, pick // w], dim=1).long()


def fuse_maps(av: Tensor, prior: Tensor, alpha: float = GSAVL_ALPHA) -> Tensor:
    """GSAVL's fused map ``minmax(alpha * minmax(av) + (1 - alpha) * minmax(prior))`` over the last
    two axes (``[..., H, W]``, broadcast). ``alpha = 1``: the audio-visual map alone; ``0``: the prior."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return minmax_normalize(fuse_with_prior(av, prior, alpha, norm="minmax"))
