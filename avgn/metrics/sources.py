"""Single-source (AP, IoU@t, AUC) and multi-source (CAP, PIAP, CIoU@t, AUC) evaluation of maps against
per-source masks."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from avgn.metrics.pixels import (
    _DEFAULT_CHUNK,
    BINARIZE_RULES,
    Backend,
    BinarizeRule,
    _check_maps,
    _check_masks,
    _in_threads,
    _rows_numpy,
    _use_numpy,
    binarize,
    ciou,
    pixel_average_precision,
    success_auc,
    success_rate,
    upsample_maps,
)


# --------------------------------------------------------------------------------------------------
# single source
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SingleSourceResult:
    """Per-sample single-source metrics. ``summary()`` gives the table row."""

    ap: Tensor  # [N] float64, NaN where the mask is empty
    ciou: Tensor  # [N] float64, NaN where the mask is empty
    iou_threshold: float

    def summary(self) -> dict[str, float]:
        """``{"ap", "iou@t", "auc", "n", "n_empty"}`` with means over the non-empty samples."""
        keep = ~torch.isnan(self.ap)
        return {
            "ap": float(self.ap[keep].mean()) if keep.any() else math.nan,
            f"iou@{self.iou_threshold:g}": success_rate(self.ciou, self.iou_threshold),
            "auc": success_auc(self.ciou),
            "n": int(keep.sum()),
            "n_empty": int((~keep).sum()),
        }


def _evaluate_pairs(
    maps: Tensor, masks: Tensor, rule: BinarizeRule, value: float, chunk_size: int, backend: Backend = "auto"
) -> tuple[Tensor, Tensor]:
    """AP and cIoU of ``maps [P, h, w]`` (any resolution) against bool ``masks [P, H, W]``, in chunks."""
    _check_masks(masks)
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape [N, H, W], got {tuple(masks.shape)}")
    _check_maps(maps)
    if maps.dim() != 3 or maps.shape[0] != masks.shape[0]:
        raise ValueError(f"maps {tuple(maps.shape)} must be [N, h, w] with the same N as masks {tuple(masks.shape)}")
    size = tuple(masks.shape[-2:])
    aps, ious = [], []
    for start in range(0, masks.shape[0], chunk_size):
        m = upsample_maps(maps[start : start + chunk_size].to(masks.device), size)
        g = masks[start : start + chunk_size]
        if _use_numpy(m, backend):
            if rule not in BINARIZE_RULES:
                raise ValueError(f"unknown binarisation rule {rule!r}; choose one of {BINARIZE_RULES}")
            if rule == "top_fraction" and not 0.0 <= value <= 1.0:
                raise ValueError(f"top_fraction value must be in [0, 1], got {value}")
            if rule == "relative_max":
                binarize(m, rule, value)  # raises the documented error for maps with max <= 0
            ap, iou, _ = _rows_numpy(m.reshape(m.shape[0], -1), g.reshape(g.shape[0], -1), rule, value)
        else:
            ap = pixel_average_precision(m, g, empty="nan", chunk_size=chunk_size, backend="torch")
            iou = ciou(binarize(m, rule, value), g, empty="nan")
        aps.append(ap)
        ious.append(iou)
    if not aps:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return torch.cat(aps), torch.cat(ious)


def _raise_on_empty(n_empty: int, allow_empty: bool, where: str) -> None:
    if n_empty and not allow_empty:
        raise ValueError(
            f"{n_empty} empty ground-truth mask(s) in {where}: AP and cIoU are undefined for them. "
            "Fix the annotations, or pass allow_empty=True to exclude them (they are counted in n_empty)."
        )


def evaluate_single_source(
    maps: Tensor,
    masks: Tensor,
    *,
    rule: BinarizeRule = "top_fraction",
    value: float = 0.5,
    iou_threshold: float = 0.5,
    allow_empty: bool = False,
    chunk_size: int = _DEFAULT_CHUNK,
    backend: Backend = "auto",
) -> SingleSourceResult:
    """Single-source protocol: pixel AP, cIoU (IoU@threshold) and AUC.

    Args:
        maps: ``[N, h, w]`` predicted maps at any resolution (upsampled bilinearly to the masks).
        masks: ``[N, H, W]`` bool ground truth.
        rule, value: binarisation for cIoU (see :func:`binarize`).
        iou_threshold: threshold of the success rate reported as ``iou@t`` (0.5 in the paper).
        allow_empty: exclude (and count) empty masks instead of raising.
        backend: see :func:`pixel_average_precision`.
    """
    ap, iou = _evaluate_pairs(maps, masks, rule, value, chunk_size, backend)
    _raise_on_empty(int(torch.isnan(ap).sum()), allow_empty, "evaluate_single_source")
    return SingleSourceResult(ap=ap, ciou=iou, iou_threshold=iou_threshold)


# --------------------------------------------------------------------------------------------------
# multi source
# --------------------------------------------------------------------------------------------------
def class_aware_maps(all_maps: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """Pick, for each ground-truth source, the map of its own class.

    Args:
        all_maps: ``[N, C, h, w]`` one map per class.
        classes: ``[N, S]`` long class index per source, ``-1`` for padding.

    Returns:
        ``(maps [N, S, h, w], valid [N, S] bool)``; padded sources get an all-zero map.
    """
    if all_maps.dim() != 4:
        raise ValueError(f"all_maps must be [N, C, h, w], got {tuple(all_maps.shape)}")
    if classes.dim() != 2 or classes.shape[0] != all_maps.shape[0]:
        raise ValueError(f"classes must be [N, S] with N={all_maps.shape[0]}, got {tuple(classes.shape)}")
    if classes.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"classes must be an integer tensor, got {classes.dtype}")
    num_classes = all_maps.shape[1]
    if bool((classes >= num_classes).any()):
        raise ValueError(f"classes contains an index >= the number of maps ({num_classes})")
    valid = classes >= 0
    idx = classes.clamp_min(0).long()[:, :, None, None].expand(-1, -1, *all_maps.shape[-2:])
    maps = torch.gather(all_maps, 1, idx) * valid[:, :, None, None]
    return maps, valid


def pairwise_ap(pred_maps: Tensor, masks: Tensor, *, chunk_size: int = _DEFAULT_CHUNK, backend: Backend = "auto") -> Tensor:
    """AP of every predicted map against every source mask.

    Args:
        pred_maps: ``[N, K, h, w]`` predicted maps (any resolution).
        masks: ``[N, S, H, W]`` bool.

    Returns:
        ``[N, K, S]`` float64 (NaN where the mask is empty).
    """
    if pred_maps.dim() != 4 or masks.dim() != 4 or pred_maps.shape[0] != masks.shape[0]:
        raise ValueError(f"pred_maps must be [N, K, h, w] and masks [N, S, H, W]; got {tuple(pred_maps.shape)} and {tuple(masks.shape)}")
    n, k = pred_maps.shape[:2]
    s = masks.shape[1]
    size = tuple(masks.shape[-2:])
    out = torch.empty(n, k, s, dtype=torch.float64, device=masks.device)
    step = max(1, chunk_size // max(1, k * s))
    for start in range(0, n, step):
        m = upsample_maps(pred_maps[start : start + step].to(masks.device), size)  # [b, K, H, W]
        g = masks[start : start + step]
        b = m.shape[0]
        if _use_numpy(m, backend):
            out[start : start + b] = _pairwise_numpy(m.reshape(b, k, -1), g.reshape(b, s, -1))
            continue
        mm = m[:, :, None].expand(b, k, s, *size).reshape(b * k * s, *size)
        gg = g[:, None].expand(b, k, s, *size).reshape(b * k * s, *size)
        out[start : start + b] = pixel_average_precision(mm, gg, empty="nan", backend=backend).reshape(b, k, s)
    return out


def _pairwise_numpy(maps: Tensor, masks: Tensor) -> Tensor:
    """:func:`pairwise_ap` on CPU: ``maps [b, K, M]`` against ``masks [b, S, M]`` -> ``[b, K, S]``.

    Each map is sorted once for all ``S`` masks, each mask's pixel indices found once for all ``K``
    maps. For the ``j``-th positive (values sorted ascending) the precision is ``#positives >= p_j /
    #pixels >= p_j``: the first is a search among the (few) sorted positives, the second a search in
    the sorted map. The terms, and the order they are averaged in, are those of :func:`_row_kernel`,
    so every pair is bit-identical to :func:`pixel_average_precision`.
    """
    s_np = maps.detach().contiguous().numpy()
    g_np = masks.contiguous().numpy()
    b, k, m = s_np.shape
    n_src = g_np.shape[1]
    out = np.full((b, k, n_src), np.nan, dtype=np.float64)

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            pos_idx = [np.flatnonzero(g_np[i, t]) for t in range(n_src)]
            for j in range(k):
                ss = np.sort(s_np[i, j])
                for t, idx in enumerate(pos_idx):
                    if idx.size == 0:
                        continue
                    pv = np.sort(s_np[i, j][idx])
                    tp = idx.size - np.searchsorted(pv, pv, "left")
                    out[i, j, t] = float(np.mean(tp / (m - np.searchsorted(ss, pv, "left"))))

    _in_threads(work, b)
    return torch.from_numpy(out)


def best_assignment_mean(scores: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per sample, the best one-to-one assignment of K predictions to S sources of the mean score.

    Args:
        scores: ``[N, K, S]`` (e.g. :func:`pairwise_ap`); NaN entries must be masked by ``valid``.
        valid: ``[N, S]`` bool, which sources are real (default: all).

    Returns:
        ``[N]`` float64: ``max over injective maps sources->predictions of mean over valid sources``.
        With K < S some sources necessarily get no prediction and score 0. Exhaustive over
        permutations when there are at most 5,040 of them, Hungarian (scipy) otherwise.
    """
    n, k, s = scores.shape
    if valid is None:
        valid = torch.ones(n, s, dtype=torch.bool, device=scores.device)
    sc = torch.where(valid[:, None, :], scores, torch.zeros_like(scores))
    if bool(torch.isnan(sc).any()):
        raise ValueError("best_assignment_mean got NaN scores for valid sources (empty masks?)")
    if k < s:  # "no prediction" slots scoring 0
        sc = torch.cat([sc, torch.zeros(n, s - k, s, dtype=sc.dtype, device=sc.device)], dim=1)
        k = s
    n_valid = valid.sum(dim=1).clamp_min(1).to(torch.float64)
    if math.perm(k, s) <= 5040:
        perms = torch.tensor(list(itertools.permutations(range(k), s)), device=sc.device)  # [P, S]
        src = torch.arange(s, device=sc.device)
        totals = sc[:, perms, src].sum(dim=2)  # [N, P]
        return totals.amax(dim=1).to(torch.float64) / n_valid
    from scipy.optimize import linear_sum_assignment

    best = torch.empty(n, dtype=torch.float64)
    cpu = sc.detach().cpu().numpy()
    for i in range(n):
        r, c = linear_sum_assignment(cpu[i], maximize=True)
        best[i] = float(cpu[i][r, c].sum())
    return best.to(sc.device) / n_valid


def piap(
    pred_maps: Tensor, masks: Tensor, valid: Tensor | None = None, *, chunk_size: int = _DEFAULT_CHUNK, backend: Backend = "auto"
) -> Tensor:
    """Permutation-invariant AP per sample: ``[N]``. See :func:`best_assignment_mean`.

    ``pred_maps [N, K, h, w]`` are assigned to the sources ``masks [N, S, H, W]`` (``valid [N, S]``)
    so that the mean AP over sources is largest; the result does not depend on the order of the maps.
    """
    if valid is None:
        valid = torch.ones(masks.shape[:2], dtype=torch.bool, device=masks.device)
    return best_assignment_mean(pairwise_ap(pred_maps, masks, chunk_size=chunk_size, backend=backend), valid)


@dataclass(frozen=True)
class MultiSourceResult:
    """Per-pair multi-source metrics. ``summary()`` gives the table row."""

    cap: Tensor  # [N, S] float64 AP of each source with the map of its class (NaN where invalid/empty)
    piap: Tensor  # [N] float64
    ciou: Tensor  # [N, S] float64 (NaN where invalid/empty)
    valid: Tensor  # [N, S] bool
    iou_threshold: float

    def summary(self) -> dict[str, float]:
        """``{"cap", "piap", "ciou@t", "auc", "n_pairs", "n_samples", "n_empty"}``."""
        keep = self.valid & ~torch.isnan(self.cap)
        ious = self.ciou[keep]
        return {
            "cap": float(self.cap[keep].mean()) if keep.any() else math.nan,
            "piap": float(self.piap.mean()) if self.piap.numel() else math.nan,
            f"ciou@{self.iou_threshold:g}": success_rate(ious, self.iou_threshold),
            "auc": success_auc(ious),
            "n_pairs": int(keep.sum()),
            "n_samples": int(self.valid.shape[0]),
            "n_empty": int((self.valid & torch.isnan(self.cap)).sum()),
        }

    def per_class(self, classes: Tensor, class_names: list[str] | tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
        """CAP and CIoU success rate broken down by the class of each source (``classes [N, S]``)."""
        out: dict[str, dict[str, float]] = {}
        keep = self.valid & ~torch.isnan(self.cap)
        for c in sorted(set(classes[keep].tolist())):
            sel = keep & (classes == c)
            name = class_names[c] if class_names is not None else str(c)
            out[name] = {
                "cap": float(self.cap[sel].mean()),
                f"ciou@{self.iou_threshold:g}": success_rate(self.ciou[sel], self.iou_threshold),
                "n": int(sel.sum()),
            }
        return out


def evaluate_multi_source(
    maps: Tensor,
    masks: Tensor,
    valid: Tensor | None = None,
    *,
    pred_maps: Tensor | None = None,
    rule: BinarizeRule = "top_fraction",
    value: float = 0.5,
    iou_threshold: float = 0.3,
    allow_empty: bool = False,
    chunk_size: int = _DEFAULT_CHUNK,
    backend: Backend = "auto",
) -> MultiSourceResult:
    """Multi-source protocol: CAP, PIAP, CIoU@threshold and AUC.

    Args:
        maps: ``[N, S, h, w]`` class-aware maps aligned with the sources (map of each source's class;
            see :func:`class_aware_maps`).
        masks: ``[N, S, H, W]`` bool ground truth per source.
        valid: ``[N, S]`` bool, real (non-padded) sources; default all.
        pred_maps: ``[N, K, h, w]`` the method's predicted set of maps for PIAP (default: ``maps``);
            a class-agnostic method (e.g. Mix-and-Localize with K slots) passes its K maps here.
        rule, value: binarisation for cIoU (see :func:`binarize`).
        iou_threshold: threshold of the reported CIoU success rate (0.3 in the paper).
        allow_empty: exclude (and count) empty masks of valid sources instead of raising.
        backend: see :func:`pixel_average_precision`.
    """
    _check_masks(masks)
    if maps.dim() != 4 or masks.dim() != 4 or maps.shape[:2] != masks.shape[:2]:
        raise ValueError(f"maps must be [N, S, h, w] and masks [N, S, H, W] with the same N, S; got {tuple(maps.shape)} and {tuple(masks.shape)}")
    n, s = masks.shape[:2]
    if valid is None:
        valid = torch.ones(n, s, dtype=torch.bool, device=masks.device)
    if valid.shape != (n, s) or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape {(n, s)}, got {valid.dtype} {tuple(valid.shape)}")
    ap, iou = _evaluate_pairs(maps.reshape(n * s, *maps.shape[2:]), masks.reshape(n * s, *masks.shape[2:]), rule, value, chunk_size, backend)
    ap, iou = ap.reshape(n, s), iou.reshape(n, s)
    nan = torch.full_like(ap, math.nan)
    ap = torch.where(valid, ap, nan)
    iou = torch.where(valid, iou, nan)
    empty = valid & torch.isnan(ap)
    _raise_on_empty(int(empty.sum()), allow_empty, "evaluate_multi_source")
    usable = valid & ~empty
    pairs = pairwise_ap(maps if pred_maps is None else pred_maps, masks, chunk_size=chunk_size, backend=backend)
    pi = best_assignment_mean(pairs, usable)
    return MultiSourceResult(cap=ap, piap=pi, ciou=iou, valid=valid, iou_threshold=iou_threshold)
