"""Synthetic localization maps with controlled quality, for illustrating and testing the protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from avgn.boxes import boxes_to_masks

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def random_box_masks(n: int, size: tuple[int, int] = (224, 224), *, min_side: float = 0.15, max_side: float = 0.6,
                     generator: torch.Generator | None = None) -> Tensor:
    """``n`` bool masks ``[n, H, W]``, each one random axis-aligned box with sides in [min_side, max_side]."""
    wh = min_side + (max_side - min_side) * torch.rand(n, 2, generator=generator)
    xy = (1 - wh) * torch.rand(n, 2, generator=generator)
    return boxes_to_masks(torch.cat([xy, xy + wh], dim=1), size)


def noisy_maps(masks: Tensor, noise: float, *, grid: int = 7, generator: torch.Generator | None = None) -> Tensor:
    """Maps ``[n, grid, grid]`` like a model's: the mask pooled to ``grid`` x ``grid`` plus Gaussian noise.

    ``noise`` is the noise standard deviation relative to the signal range (0 = an ideal low-resolution
    map; large values = a map unrelated to the object).
    """
    if masks.dtype != torch.bool or masks.dim() != 3:
        raise ValueError(f"masks must be bool [n, H, W], got {masks.dtype} {tuple(masks.shape)}")
    pooled = F.adaptive_avg_pool2d(masks.float()[:, None], grid)[:, 0]
    return pooled + noise * torch.randn(pooled.shape, generator=generator)


def protocol_sweep(noises: list[float], n: int, rules: dict[str, tuple[str, float]], *, seed: int = 0,
                   size: tuple[int, int] = (224, 224)) -> "pd.DataFrame":
    """Evaluate synthetic maps of increasing noise with the single-source protocol.

    Args:
        noises: noise levels passed to :func:`noisy_maps`.
        n: samples per level.
        rules: ``{label: (rule, value)}`` binarisation rules to compare for cIoU.
        seed: random seed (the same masks are used at every noise level).

    Returns:
        A long DataFrame with columns ``noise, rule, metric, value``.
    """
    import pandas as pd

    from avgn.metrics import evaluate_single_source

    gen = torch.Generator().manual_seed(seed)
    masks = random_box_masks(n, size, generator=gen)
    rows = []
    for noise in noises:
        maps = noisy_maps(masks, noise, generator=gen)
        for label, (rule, value) in rules.items():
            summary = evaluate_single_source(maps if rule != "relative_max" else maps.clamp_min(0), masks,
                                             rule=rule, value=value).summary()
            for metric in ("ap", "iou@0.5", "auc"):
                rows.append({"noise": noise, "rule": label, "metric": metric, "value": summary[metric]})
    return pd.DataFrame(rows)


def perfect_map_ciou_vs_area(areas: list[float], rules: dict[str, tuple[str, float]],
                             size: tuple[int, int] = (224, 224)) -> "pd.DataFrame":
    """cIoU of a *perfect* map (the mask itself, lightly smoothed) as a function of the object's area.

    Shows what each binarisation rule can reach at best: ``top_fraction`` keeps a fixed share of
    the frame, so its cIoU is capped by the object's size.
    """
    import pandas as pd

    from avgn.metrics import ciou, binarize

    rows = []
    h, w = size
    for area in areas:
        side = area ** 0.5
        x0 = (1 - side) / 2
        mask = boxes_to_masks(torch.tensor([[x0, x0, x0 + side, x0 + side]]), size)
        # a perfect-ranking map: inside the object higher than outside, with a smooth peak
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        perfect = mask.float() + 0.01 * (1 - (xx**2 + yy**2)).unsqueeze(0)
        for label, (rule, value) in rules.items():
            iou = ciou(binarize(perfect, rule, value), mask).item()
            rows.append({"area": float(mask.float().mean()), "rule": label, "ciou": iou})
    return pd.DataFrame(rows)
