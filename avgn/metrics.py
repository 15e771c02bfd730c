"""The evaluation protocol: one correct, batched definition of every localization metric in the book.

Why a new implementation: the public reference code is inconsistent and partly wrong (its "PIAP"
calls average precision with labels and scores swapped; class-aware AP is not implemented anywhere
public; three different binarisation rules are in use). Everything here is exact, vectorised in torch
and runs on CPU or GPU.

Conventions
-----------
- Ground truth: one **boolean** mask per source at evaluation resolution (default 224x224).
- Predictions: one real-valued map per source, upsampled bilinearly (``align_corners=False``) to the
  mask size by :func:`upsample_maps`. Maps must be finite (NaN/inf raise an error).
- Pixel AP (:func:`pixel_average_precision`) equals
  ``sklearn.metrics.average_precision_score(mask.ravel(), score.ravel())``, ties included: with ``P``
  the positive pixels, ``AP = (1/|P|) * sum_{i in P} precision(score_i)`` where
  ``precision(s) = #{positives >= s} / #{pixels >= s}``. This is sklearn's step-wise sum
  ``sum_k (R_k - R_{k-1}) P_k`` written per positive.
- Empty masks: AP and cIoU are undefined for a source with no positive pixel. The per-sample
  functions return NaN for it (``empty="nan"``) or raise (``empty="error"``); the ``evaluate_*``
  functions raise unless ``allow_empty=True``, in which case the empty samples are excluded from the
  means and counted in ``n_empty``. Nothing is silently scored as 0 or 0.5.
- Binarisation (:func:`binarize`), three rules from the literature:
  ``top_fraction`` (default, value 0.5: the AVGN/EZ-VSL convention — after per-sample min-max
  normalisation in the map's dtype, the threshold is the element at index ``int(M * (1 - value))`` of
  the ascending-sorted map and pixels strictly above it are kept; as in the reference code, the
  normalisation's rounding may merge nearly equal values), ``relative_max`` (``map > value * max``
  on the raw map, as in DSOL; for non-negative maps such as CAMs), and ``fixed`` (``minmax(map) >=
  value``, as in T-VSL; a constant map normalises to 0).
- cIoU (:func:`ciou`): ``|P & G| / (|G| + |P \\ G|)``.
- Success rate at threshold ``t``: fraction of samples with cIoU >= t; AUC: trapezoid area of the
  success rate over the 21 thresholds 0, 0.05, ..., 1.0 (:data:`SUCCESS_THRESHOLDS`).
- Multi-source (maps ``[N, S, H, W]``, masks ``[N, S, H, W]``, optional ``valid [N, S]`` for padded
  sources): CAP scores each source with the map of its own class (mean over all valid (sample, source)
  pairs); PIAP takes, per sample, the best one-to-one assignment of predicted maps to sources of the
  mean AP (exhaustive for small S, Hungarian otherwise; a source left without a map scores 0); CIoU@t
  and AUC are computed over all valid (sample, source) pairs of the class-aware maps.
- Label-free (semantic) metrics (:func:`evaluate_semantic`, :func:`semantic_ap`,
  :func:`semantic_miou`, :func:`semantic_f`): the method's *selected* classes (maps ``[N, K, h, w]``,
  class ids ``[N, K]``, ``-1`` = none; an empty selection is an answer) against the sounding classes'
  masks over the class x pixel volume, so a false selection and a miss both cost (CAP / PIAP charge
  a selected class that does not sound nothing). Semantic AP per sample (unselected classes score
  below every selected one; a missed positive has precision 0, i.e. scikit-learn's AP on the
  concatenated volume minus ``n_missed / (C * H * W)``); mIoU and F-score (beta² = 0.3) per class
  from binarised maps with pixel counts summed over the set, averaged over the classes that occur.
  Nothing sounding and nothing selected scores 1 (the AVSBench convention).

Backends
--------
Pixel AP is sort-bound. On CPU (``backend="auto"``/``"numpy"``) each sample's positive and negative
pixels are sorted separately with numpy's SIMD sort (values only, no argsort), rows spread over
threads; AP, the binarisation threshold and cIoU all come from those two sorted arrays. On other
devices (``"torch"``) the positives are compacted and sorted, and every pixel is located among them
with a batched ``searchsorted`` + ``bincount``. Both are exact and tested against scikit-learn and
each other.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

EmptyPolicy = Literal["nan", "error"]
Backend = Literal["auto", "torch", "numpy"]
BinarizeRule = Literal["top_fraction", "relative_max", "fixed"]
BINARIZE_RULES: tuple[str, ...] = ("top_fraction", "relative_max", "fixed")

#: The 21 cIoU thresholds 0, 0.05, ..., 1.0 used for success-rate curves and their AUC.
SUCCESS_THRESHOLDS: tuple[float, ...] = tuple(i / 20 for i in range(21))

_DEFAULT_CHUNK = 256


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------
def _check_maps(maps: Tensor, name: str = "maps") -> None:
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(maps).__name__}")
    if not maps.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {maps.dtype}")
    finite = torch.isfinite(maps.reshape(maps.shape[0], -1)) if maps.dim() > 0 else torch.isfinite(maps)
    if maps.dim() > 0 and not bool(finite.all()):
        bad = torch.nonzero(~finite.all(dim=1)).flatten().tolist()
        raise ValueError(
            f"{name} contains NaN or inf in {len(bad)} sample(s) (first indices: {bad[:5]}); "
            "check the model outputs (e.g. a zero-norm feature in a cosine similarity) before evaluating"
        )


def _check_masks(masks: Tensor, name: str = "masks") -> None:
    if not isinstance(masks, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {masks.dtype}; convert with masks > 0.5 or masks.bool()")


def _check_pair(scores: Tensor, masks: Tensor, min_dim: int = 3) -> None:
    _check_masks(masks)
    if masks.dim() < min_dim:
        raise ValueError(f"masks must have at least {min_dim} dimensions [N, ..., H, W], got {tuple(masks.shape)}")
    if scores.shape != masks.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and masks {tuple(masks.shape)} differ in shape; "
            "upsample the maps to the mask size with avgn.metrics.upsample_maps first"
        )
    _check_maps(scores, "scores")


def _empty_result(n_pos: Tensor, values: Tensor, empty: EmptyPolicy, what: str) -> Tensor:
    is_empty = n_pos == 0
    if bool(is_empty.any()):
        if empty == "error":
            idx = torch.nonzero(is_empty).flatten().tolist()
            raise ValueError(f"{what} is undefined for empty masks; {len(idx)} empty mask(s) at index {idx[:5]}")
        if empty != "nan":
            raise ValueError(f"empty must be 'nan' or 'error', got {empty!r}")
        values = torch.where(is_empty, torch.full_like(values, math.nan), values)
    return values


# --------------------------------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------------------------------
def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly upsample maps ``[..., h, w]`` to ``[..., H, W]`` (``align_corners=False``).

    Maps already at ``size`` are returned unchanged. Integer maps are rejected.
    """
    _check_maps(maps)
    if maps.dim() < 2:
        raise ValueError(f"maps must have shape [..., h, w], got {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def minmax_normalise(maps: Tensor) -> Tensor:
    """Per-sample min-max normalisation of ``[N, ..., H, W]`` maps to [0, 1] (constant maps -> 0)."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(flat))
    return out.reshape(maps.shape)


# --------------------------------------------------------------------------------------------------
# pixel average precision
# --------------------------------------------------------------------------------------------------
def _ap_rows(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Exact AP of each row of ``scores [n, M]`` against bool ``labels [n, M]``.

    Sort-light algorithm: only the positive scores are sorted (compacted to ``[n, K]``, K = the most
    positives in a row, padded with +inf); every pixel is then located among them by binary search
    and counted, so ``#{pixels >= p_j}`` is a reverse cumulative sum of those counts. Returns
    ``(ap [n] float64 (0 where a row has no positive), n_pos [n])``.
    """
    n, _ = scores.shape
    n_pos = labels.sum(dim=1)
    k = int(n_pos.max()) if n > 0 else 0
    if k == 0:
        return torch.zeros(n, dtype=torch.float64, device=scores.device), n_pos
    # compact the positives into [n, k] (+inf padding sorts to the end)
    flat_pos = scores[labels]
    rows = torch.repeat_interleave(torch.arange(n, device=scores.device), n_pos)
    starts = torch.cumsum(n_pos, 0) - n_pos
    cols = torch.arange(flat_pos.numel(), device=scores.device) - torch.repeat_interleave(starts, n_pos)
    pos = torch.full((n, k), math.inf, dtype=scores.dtype, device=scores.device)
    pos[rows, cols] = flat_pos
    pos = torch.sort(pos, dim=1).values
    # r = #positives <= v for every pixel value v; #pixels >= p_j = #{pixels with r > j}
    r = torch.searchsorted(pos, scores, right=True)
    offsets = (torch.arange(n, device=scores.device) * (k + 1)).unsqueeze(1)
    counts = torch.bincount((r + offsets).flatten(), minlength=n * (k + 1)).reshape(n, k + 1)
    at_least = torch.flip(torch.cumsum(torch.flip(counts, [1]), 1), [1])[:, 1:]  # [n, k]
    tp = n_pos.unsqueeze(1) - torch.searchsorted(pos, pos, right=False)  # #positives >= p_j
    precision = tp.to(torch.float64) / at_least.clamp_min(1).to(torch.float64)
    real = torch.arange(k, device=scores.device).unsqueeze(0) < n_pos.unsqueeze(1)
    ap = (precision * real).sum(dim=1) / n_pos.clamp_min(1).to(torch.float64)
    return ap, n_pos


# --------------------------------------------------------------------------------------------------
# CPU kernel: one values-only SIMD sort per row gives AP, the binarisation threshold and cIoU
# --------------------------------------------------------------------------------------------------
def _kth_of_union(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """The k-th smallest (0-based) element of the union of two ascending arrays (O(log) search)."""
    lo, hi = max(0, k + 1 - b.size), min(k + 1, a.size)
    while lo < hi:  # i = how many of the k+1 smallest come from a
        i = (lo + hi) // 2
        j = k + 1 - i
        if j > 0 and i < a.size and b[j - 1] > a[i]:
            lo = i + 1
        else:
            hi = i
    j = k + 1 - lo
    return float(max(a[lo - 1] if lo > 0 else -np.inf, b[j - 1] if j > 0 else -np.inf))


def _row_kernel(s: np.ndarray, g: np.ndarray, rule: str | None, value: float) -> tuple[float, float, int]:
    """AP and cIoU of one row (scores ``s [M]``, bool ``g [M]``); ``rule=None`` skips cIoU.

    Positives and negatives are sorted separately (values only); for the j-th positive,
    ``#positives >= p_j`` and ``#negatives >= p_j`` are binary searches into them. The binarised
    prediction is a threshold on the same sorted arrays, so cIoU needs no boolean map.
    Returns ``(ap, ciou, n_pos)`` (ap/ciou are NaN for an empty mask).
    """
    pos = np.sort(s[g])
    neg = np.sort(s[~g])
    k = pos.size
    if k == 0:
        return math.nan, math.nan, 0
    tp = k - np.searchsorted(pos, pos, "left")
    fp = neg.size - np.searchsorted(neg, pos, "left")
    ap = float(np.mean(tp / (tp + fp)))
    if rule is None:
        return ap, math.nan, k
    m = s.size
    if rule == "relative_max":
        thr = s.dtype.type(value) * max(pos[-1], neg[-1] if neg.size else -np.inf)
        inter = k - int(np.searchsorted(pos, thr, "right"))
        extra = neg.size - int(np.searchsorted(neg, thr, "right"))
        return ap, inter / (k + extra), k
    # top_fraction and fixed work on minmax(s), computed exactly as minmax_normalise does
    lo_v = min(pos[0], neg[0] if neg.size else np.inf)
    span = max(pos[-1], neg[-1] if neg.size else -np.inf) - lo_v
    if span > 0:
        npos, nneg = (pos - lo_v) / span, (neg - lo_v) / span
    else:
        npos, nneg = np.zeros_like(pos), np.zeros_like(neg)
    if rule == "top_fraction":
        idx = int(m * (1.0 - value))
        if idx >= m:
            return ap, 0.0, k
        thr = _kth_of_union(npos, nneg, idx)
        inter = k - int(np.searchsorted(npos, thr, "right"))
        extra = nneg.size - int(np.searchsorted(nneg, thr, "right"))
    else:  # fixed
        inter = k - int(np.searchsorted(npos, value, "left"))
        extra = nneg.size - int(np.searchsorted(nneg, value, "left"))
    return ap, inter / (k + extra), k


def _num_workers() -> int:
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _rows_numpy(scores: Tensor, labels: Tensor, rule: str | None, value: float) -> tuple[Tensor, Tensor, Tensor]:
    """Run :func:`_row_kernel` over rows of ``[n, M]`` CPU tensors, rows split across threads
    (numpy's sort releases the GIL). Returns ``(ap [n], ciou [n], n_pos [n])``."""
    s = scores.detach().contiguous().numpy()
    g = labels.contiguous().numpy()
    n = s.shape[0]
    ap = np.empty(n, dtype=np.float64)
    ci = np.empty(n, dtype=np.float64)
    npos = np.empty(n, dtype=np.int64)

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            ap[i], ci[i], npos[i] = _row_kernel(s[i], g[i], rule, value)

    _in_threads(work, n)
    return torch.from_numpy(ap), torch.from_numpy(ci), torch.from_numpy(npos)


def _in_threads(work: Any, n: int) -> None:
    """Run ``work(lo, hi)`` over ``range(n)`` split into contiguous blocks across
    :func:`_num_workers` threads (NumPy's sorts release the GIL); in the caller's thread when one
    worker suffices."""
    workers = _num_workers()
    if workers == 1 or n < 2 * workers:
        work(0, n)
        return
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda b: work(*b), zip(bounds[:-1], bounds[1:])))


def _use_numpy(t: Tensor, backend: Backend) -> bool:
    if backend not in ("auto", "torch", "numpy"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'numpy', got {backend!r}")
    if backend == "numpy" and t.device.type != "cpu":
        raise ValueError("backend='numpy' needs CPU tensors")
    return backend == "numpy" or (backend == "auto" and t.device.type == "cpu")


def pixel_average_precision(
    scores: Tensor,
    masks: Tensor,
    *,
    empty: EmptyPolicy = "nan",
    chunk_size: int = _DEFAULT_CHUNK,
    backend: Backend = "auto",
) -> Tensor:
    """Per-sample pixel average precision.

    Args:
        scores: real-valued maps ``[N, H, W]`` (or ``[N, ...]``; all trailing dims are pixels).
        masks: bool ground truth of the same shape.
        empty: what to return for an empty mask: ``"nan"`` or ``"error"`` (raise).
        chunk_size: samples processed at once by the torch backend (bounds memory).
        backend: ``"numpy"`` (CPU: per-row SIMD sorts spread over threads), ``"torch"`` (batched
            tensor ops, any device) or ``"auto"`` (numpy on CPU, torch elsewhere). Both are exact.

    Returns:
        ``[N]`` float64, equal to ``sklearn.metrics.average_precision_score(mask.ravel(), score.ravel())``
        for every sample (ties included).
    """
    _check_pair(scores, masks, min_dim=2)
    n = scores.shape[0]
    flat_s = scores.reshape(n, -1)
    flat_m = masks.reshape(n, -1)
    if _use_numpy(scores, backend):
        ap, _, n_pos = _rows_numpy(flat_s, flat_m, None, 0.0)
        return _empty_result(n_pos, ap, empty, "pixel AP")
    aps, counts = [], []
    for start in range(0, n, chunk_size):
        ap, n_pos = _ap_rows(flat_s[start : start + chunk_size], flat_m[start : start + chunk_size])
        aps.append(ap)
        counts.append(n_pos)
    if n == 0:
        return torch.zeros(0, dtype=torch.float64, device=scores.device)
    return _empty_result(torch.cat(counts), torch.cat(aps), empty, "pixel AP")


# --------------------------------------------------------------------------------------------------
# binarisation and cIoU
# --------------------------------------------------------------------------------------------------
def binarize(maps: Tensor, rule: BinarizeRule = "top_fraction", value: float = 0.5) -> Tensor:
    """Binarise maps ``[N, ..., H, W]`` (per sample over all trailing pixels) into a bool tensor.

    Rules (see the module docstring): ``top_fraction`` keeps pixels of the min-max normalised map
    strictly above its element at ascending index ``int(M * (1 - value))`` (value 0.5 = the
    AVGN/EZ-VSL median rule);
    ``relative_max`` keeps ``map > value * max(map)`` on the raw map (DSOL; the map's maximum must be
    positive); ``fixed`` keeps ``minmax(map) >= value`` (T-VSL).
    """
    _check_maps(maps)
    if maps.dim() < 2:
        raise ValueError(f"maps must have shape [N, ..., H, W], got {tuple(maps.shape)}")
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    m = flat.shape[1]
    if rule == "top_fraction":
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"top_fraction value must be in [0, 1], got {value}")
        idx = int(m * (1.0 - value))
        if idx >= m:
            return torch.zeros_like(maps, dtype=torch.bool)
        norm = minmax_normalise(flat)
        thr = torch.kthvalue(norm, idx + 1, dim=1, keepdim=True).values
        out = norm > thr
    elif rule == "relative_max":
        peak = flat.amax(dim=1, keepdim=True)
        if bool((peak <= 0).any()):
            bad = torch.nonzero(peak.flatten() <= 0).flatten().tolist()
            raise ValueError(
                f"relative_max needs maps with a positive maximum; {len(bad)} sample(s) (first: {bad[:5]}) "
                "have max <= 0 — use rule='fixed' (min-max normalised) for signed maps such as cosine similarities"
            )
        out = flat > value * peak
    elif rule == "fixed":
        out = minmax_normalise(flat) >= value
    else:
        raise ValueError(f"unknown binarisation rule {rule!r}; choose one of {BINARIZE_RULES}")
    return out.reshape(maps.shape)


def ciou(pred: Tensor, masks: Tensor, *, empty: EmptyPolicy = "nan") -> Tensor:
    """Consensus IoU ``|P & G| / (|G| + |P \\ G|)`` per sample for bool ``pred`` and ``masks`` ``[N, ...]``.

    Returns ``[N]`` float64; NaN (or an error) where the mask is empty.
    """
    _check_masks(pred, "pred")
    _check_masks(masks)
    if pred.shape != masks.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and masks {tuple(masks.shape)} differ in shape")
    n = masks.shape[0]
    p = pred.reshape(n, -1)
    g = masks.reshape(n, -1)
    inter = (p & g).sum(dim=1)
    n_gt = g.sum(dim=1)
    extra = (p & ~g).sum(dim=1)
    values = inter.to(torch.float64) / (n_gt + extra).clamp_min(1).to(torch.float64)
    return _empty_result(n_gt, values, empty, "cIoU")


def success_rate(ious: Tensor, threshold: float) -> float:
    """Fraction of (non-NaN) cIoU values that are >= ``threshold`` (the "IoU@t" / "CIoU@t" metric)."""
    v = ious[~torch.isnan(ious)]
    if v.numel() == 0:
        raise ValueError("success_rate got no defined cIoU values (all masks empty?)")
    return float((v >= threshold).to(torch.float64).mean())


def success_curve(ious: Tensor) -> list[float]:
    """Success rate at each of :data:`SUCCESS_THRESHOLDS`."""
    return [success_rate(ious, t) for t in SUCCESS_THRESHOLDS]


def success_auc(ious: Tensor) -> float:
    """Area under the success-rate curve over :data:`SUCCESS_THRESHOLDS` (trapezoid rule)."""
    rates = success_curve(ious)
    t = SUCCESS_THRESHOLDS
    return float(sum(0.5 * (rates[i] + rates[i + 1]) * (t[i + 1] - t[i]) for i in range(len(t) - 1)))


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


# --------------------------------------------------------------------------------------------------
# AVSBench segmentation metrics (mIoU and F-score), per image and batch-size independent
# --------------------------------------------------------------------------------------------------
#: AVSBench's F-measure weight (precision weighted more than recall).
AVS_BETA2 = 0.3
#: Number of score thresholds of AVSBench's F-score curve: ``linspace(0, 1 - 1e-10, 255)``.
AVS_N_THRESHOLDS = 255
AvsEmptyPolicy = Literal["match", "exclude", "error"]


def avs_thresholds(n: int = AVS_N_THRESHOLDS, dtype: torch.dtype = torch.float64, device: Any = None) -> Tensor:
    """AVSBench's F-score thresholds ``linspace(0, 1 - 1e-10, n)`` (``[n]``)."""
    return torch.linspace(0.0, 1.0 - 1e-10, n, dtype=dtype, device=device)


def _check_avs(pred: Tensor, masks: Tensor, what: str) -> None:
    _check_masks(masks)
    if pred.dim() != 3 or pred.shape != masks.shape:
        raise ValueError(f"{what}: predictions and masks must both be [N, H, W] of one shape, got {tuple(pred.shape)} and {tuple(masks.shape)}")


def avs_iou(pred: Tensor, masks: Tensor, *, empty: AvsEmptyPolicy = "match") -> Tensor:
    """Per-image IoU ``|P & G| / |P | G|`` of binary predictions (AVSBench mIoU before the mean).

    Args:
        pred: ``[N, H, W]`` bool predicted masks (a soft output is binarised by the caller; AVSBench
            uses ``sigmoid > 0.5``).
        masks: ``[N, H, W]`` bool ground truth.
        empty: what an image with an **empty ground truth** scores. ``"match"`` (default): 1 if the
            prediction is empty too, else 0 (a correct "nothing here" is perfect, any false alarm a
            miss); ``"exclude"``: NaN (the caller drops it and counts it; :class:`AvsResult` does);
            ``"error"``: raise. (AVSBench scores it TN / #pixels, a soft value that rewards small
            false alarms; it is not used here.)

    Returns ``[N]`` float64.
    """
    _check_avs(pred, masks, "avs_iou")
    if pred.dtype != torch.bool:
        raise ValueError(f"avs_iou needs bool predictions, got {pred.dtype}; binarise the maps first")
    p, g = pred.flatten(1), masks.flatten(1)
    inter = (p & g).sum(1).double()
    union = (p | g).sum(1).double()
    iou = inter / union.clamp_min(1)
    g_empty = ~g.any(1)
    if bool(g_empty.any()):
        if empty == "error":
            raise ValueError(f"avs_iou: {int(g_empty.sum())} empty ground-truth mask(s) at {torch.nonzero(g_empty).flatten()[:5].tolist()}")
        if empty == "match":
            iou = torch.where(g_empty, (~p.any(1)).double(), iou)
        elif empty == "exclude":
            iou = torch.where(g_empty, torch.full_like(iou, math.nan), iou)
        else:
            raise ValueError(f"empty must be 'match', 'exclude' or 'error', got {empty!r}")
    return iou


def avs_fscore_curves(scores: Tensor, masks: Tensor, *, beta2: float = AVS_BETA2, n_thresholds: int = AVS_N_THRESHOLDS) -> Tensor:
    """Per-image F-score curves over AVSBench's thresholds: ``[N, n_thresholds]`` float64.

    At threshold ``t`` the prediction is ``scores >= t``; ``precision = TP / |pred|`` (0 for an
    empty prediction), ``recall = TP / |G|``, ``F = (1 + beta2) P R / (beta2 P + R)`` (0 when
    ``P = R = 0``). An image with an empty ground truth has no recall: its row is NaN (AVSBench skips
    such images in the F-score; :func:`avs_fscore` excludes and counts them).

    Args:
        scores: ``[N, H, W]`` in ``[0, 1]`` (probabilities, min-max normalised maps, or binary masks
            as 0/1 floats).
        masks: ``[N, H, W]`` bool.
    """
    _check_avs(scores, masks, "avs_fscore_curves")
    _check_maps(scores, "scores")
    s = scores.flatten(1).double()
    if bool(((s < 0) | (s > 1)).any()):
        raise ValueError("avs_fscore_curves needs scores in [0, 1]; min-max normalise the maps (minmax_normalise) first")
    g = masks.flatten(1)
    thr = avs_thresholds(n_thresholds, device=s.device)
    n_pos = g.sum(1).double()
    # per threshold counts from the sorted scores: |pred >= t| and TP(t) without an [N, T, P] tensor
    out = torch.empty(s.shape[0], n_thresholds, dtype=torch.float64, device=s.device)
    for i in range(s.shape[0]):
        all_sorted = torch.sort(s[i]).values
        pos_sorted = torch.sort(s[i][g[i]]).values
        n_pred = (all_sorted.numel() - torch.searchsorted(all_sorted, thr, side="left")).double()
        tp = (pos_sorted.numel() - torch.searchsorted(pos_sorted, thr, side="left")).double()
        prec = torch.where(n_pred > 0, tp / n_pred.clamp_min(1), torch.zeros_like(tp))
        rec = tp / n_pos[i].clamp_min(1)
        den = beta2 * prec + rec
        out[i] = torch.where(den > 0, (1 + beta2) * prec * rec / den.clamp_min(1e-300), torch.zeros_like(den))
    return torch.where((n_pos == 0)[:, None], torch.full_like(out, math.nan), out)


@dataclass
class AvsResult:
    """AVSBench scores of a dataset, per image (``iou [N]``, ``f_curves [N, T]``, NaN = excluded)."""

    iou: Tensor
    f_curves: Tensor

    @property
    def n_empty(self) -> int:
        """Images with an empty ground truth (excluded from the F-score; scored per the IoU policy)."""
        return int(torch.isnan(self.f_curves).all(1).sum())

    @property
    def miou(self) -> float:
        """Mean of the per-image IoU over the images it is defined for."""
        return float(torch.nanmean(self.iou)) if bool((~torch.isnan(self.iou)).any()) else math.nan

    @property
    def fscore(self) -> float:
        """The dataset F-score: the per-image curves averaged over all non-empty images, then the
        maximum over thresholds (AVSBench's definition with the whole test set as one batch)."""
        keep = ~torch.isnan(self.f_curves).all(1)
        return float(self.f_curves[keep].mean(0).max()) if bool(keep.any()) else math.nan

    @property
    def fscore_adaptive(self) -> float:
        """The mean over images of each image's best F (an oracle threshold per image; an upper bound)."""
        keep = ~torch.isnan(self.f_curves).all(1)
        return float(self.f_curves[keep].max(1).values.mean()) if bool(keep.any()) else math.nan

    def summary(self) -> dict[str, float]:
        return {"miou": self.miou, "fscore": self.fscore, "n": int(self.iou.numel()), "n_empty": self.n_empty}

    @staticmethod
    def concat(parts: "list[AvsResult]") -> "AvsResult":
        """Results of consecutive batches as one (the scores do not depend on the batching)."""
        return AvsResult(torch.cat([p.iou for p in parts]), torch.cat([p.f_curves for p in parts]))


def evaluate_avs(pred: Tensor, masks: Tensor, scores: Tensor | None = None, *, empty: AvsEmptyPolicy = "match",
                 beta2: float = AVS_BETA2, n_thresholds: int = AVS_N_THRESHOLDS) -> AvsResult:
    """AVSBench mIoU and F-score, computed per image (batch-size independent).

    Args:
        pred: ``[N, H, W]`` bool predicted masks (the mIoU).
        masks: ``[N, H, W]`` bool ground truth.
        scores: ``[N, H, W]`` in ``[0, 1]`` for the F-score curve (default: ``pred`` as 0/1, so a
            segmenter's binary mask is scored as it is).
        empty: IoU of an empty ground truth (:func:`avs_iou`); the F-score always excludes those
            images and :attr:`AvsResult.n_empty` counts them.
    """
    f = avs_fscore_curves(pred.double() if scores is None else scores, masks, beta2=beta2, n_thresholds=n_thresholds)
    return AvsResult(avs_iou(pred, masks, empty=empty), f)



# --------------------------------------------------------------------------------------------------
# label-free (semantic) metrics: the method's selection of classes is scored with its maps
# --------------------------------------------------------------------------------------------------
SemanticEmptyPolicy = Literal["match", "exclude", "error"]


def _check_semantic(pred_maps: Tensor, pred_classes: Tensor, masks: Tensor, classes: Tensor) -> None:
    """Shapes, dtypes and the one-map-per-class rule of the semantic metrics' inputs."""
    _check_masks(masks)
    if pred_maps.dim() != 4 or masks.dim() != 4 or pred_maps.shape[0] != masks.shape[0]:
        raise ValueError(f"pred_maps must be [N, K, h, w] and masks [N, S, H, W] with the same N; got {tuple(pred_maps.shape)} "
                         f"and {tuple(masks.shape)}")
    if pred_maps.numel() > 0:
        _check_maps(pred_maps, "pred_maps")
    for name, t, size in (("pred_classes", pred_classes, pred_maps.shape[:2]), ("classes", classes, masks.shape[:2])):
        if t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an integer tensor (class index, -1 for none), got {t.dtype}")
        if tuple(t.shape) != tuple(size):
            raise ValueError(f"{name} must have shape {tuple(size)}, got {tuple(t.shape)}")
    if pred_classes.shape[1] > 1:
        s = torch.sort(pred_classes, dim=1).values
        dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        if bool(dup.any()):
            rows = torch.nonzero(dup.any(1)).flatten().tolist()
            raise ValueError(f"pred_classes selects a class twice in {len(rows)} sample(s) (first: {rows[:5]}); "
                             "give each selected class one map")


def _count(mask: Tensor) -> Tensor:
    """True elements of each sample of a bool ``[n, ...]`` tensor: ``[n]`` int64 (NumPy's
    ``count_nonzero`` on CPU, several times faster than torch's reductions over bool)."""
    flat = mask.reshape(mask.shape[0], -1)
    if flat.device.type == "cpu":
        return torch.from_numpy(np.count_nonzero(flat.contiguous().numpy(), axis=1).astype(np.int64))
    return flat.sum(1)


def _selected_class_masks(pred_classes: Tensor, masks: Tensor, classes: Tensor) -> Tensor:
    """Ground truth of each selected class: ``[b, K, H, W]`` bool, the union of the masks of the
    sources of that class (empty for a class that does not sound, and for padding ``-1``)."""
    b, k = pred_classes.shape
    out = torch.zeros(b, k, *masks.shape[-2:], dtype=torch.bool, device=masks.device)
    for s in range(masks.shape[1]):
        match = (pred_classes == classes[:, s : s + 1]) & (pred_classes >= 0)  # [b, K]
        out |= match[:, :, None, None] & masks[:, s : s + 1]
    return out


def _sounding_class_pixels(masks: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """Per source, ``(class [b, S], pixels [b, S])``: the class and the pixel count of the union of
    the masks of its class, given at the first source of each class (``-1`` / 0 elsewhere, so each
    sounding class is counted once per sample)."""
    valid = classes >= 0
    same = (classes[:, :, None] == classes[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # [b, S, S]
    s = classes.shape[1]
    earlier = torch.ones(s, s, dtype=torch.bool, device=classes.device).tril(-1)  # [s, s']: s' < s
    first = valid & ~(same & earlier).any(2)
    pixels = torch.zeros(classes.shape, dtype=torch.int64, device=masks.device)
    for j in range(s):
        union = (same[:, j, :, None, None] & masks).any(1)  # [b, H, W]
        pixels[:, j] = _count(union)
    return torch.where(first, classes, torch.full_like(classes, -1)), torch.where(first, pixels, torch.zeros_like(pixels))


def _selected_ap_numpy(up: Tensor, truth: Tensor, sel: Tensor) -> Tensor:
    """Pixel AP of each sample's selected volume on CPU: ``up [b, K, H, W]``, bool ``truth
    [b, K, H, W]``, bool ``sel [b, K]`` -> ``[b]`` float64 (NaN where no positive is selected), by
    :func:`_row_kernel` on the selected maps only, samples spread over threads."""
    s = up.detach().contiguous().numpy()
    g = truth.contiguous().numpy()
    keep = sel.numpy()
    out = np.empty(s.shape[0], dtype=np.float64)

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            out[i] = _row_kernel(s[i, keep[i]].ravel(), g[i, keep[i]].ravel(), None, 0.0)[0]

    _in_threads(work, s.shape[0])
    return torch.from_numpy(out)


def _semantic_chunk(up: Tensor, pred_classes: Tensor, masks: Tensor, classes: Tensor, backend: Backend,
                    rule: BinarizeRule | None, value: float, num_classes: int) -> dict[str, Tensor]:
    """One chunk of :func:`evaluate_semantic`: ``up [b, K, H, W]`` are the selected maps at the
    masks' size. Returns the reached-positive AP, counts and per-class pixel sums of the chunk."""
    b, k = pred_classes.shape
    sel = pred_classes >= 0
    truth = _selected_class_masks(pred_classes, masks, classes)  # [b, K, H, W]
    gt_cls, gt_px = _sounding_class_pixels(masks, classes)
    n_total = gt_px.sum(1)
    n_reached = _count(truth)
    if _use_numpy(up, backend):
        reached_ap = _selected_ap_numpy(up, truth, sel)
    else:  # unselected (padded) slots score -inf: below every selected score, never counted as retrieved
        scores = torch.where(sel[:, :, None, None], up, torch.full_like(up, -math.inf)).reshape(b, -1)
        reached_ap, _ = _ap_rows(scores, truth.reshape(b, -1))
    reached_ap = torch.nan_to_num(reached_ap.to(up.device), nan=0.0)  # no positive reached: NaN (numpy) or 0 (torch)
    ap = reached_ap * n_reached.to(torch.float64) / n_total.clamp_min(1).to(torch.float64)
    out = {"ap": ap, "n_total": n_total, "any_selected": sel.any(1)}
    if rule is None:
        return out
    tp = torch.zeros(num_classes, dtype=torch.int64, device=masks.device)
    pred = torch.zeros_like(tp)
    gt = torch.zeros_like(tp)
    keep = gt_cls >= 0
    gt.index_add_(0, gt_cls[keep].long(), gt_px[keep])
    if bool(sel.any()):
        binary = binarize(up[sel], rule, value)  # [n_sel, H, W], each selected map on its own
        cls = pred_classes[sel].long()
        tp.index_add_(0, cls, _count(binary & truth[sel]))
        pred.index_add_(0, cls, _count(binary))
    out.update(tp=tp, pred=pred, gt=gt)
    return out


def _empty_semantic_ap(ap: Tensor, n_total: Tensor, any_selected: Tensor, empty: SemanticEmptyPolicy) -> Tensor:
    """AP of the samples in which nothing sounds (no positive pixel), per ``empty``."""
    none = n_total == 0
    if not bool(none.any()):
        return ap
    if empty == "match":
        return torch.where(none, (~any_selected).to(torch.float64), ap)
    if empty == "exclude":
        return torch.where(none, torch.full_like(ap, math.nan), ap)
    if empty == "error":
        idx = torch.nonzero(none).flatten().tolist()
        raise ValueError(f"semantic AP: {len(idx)} sample(s) without a sounding source's pixel (first: {idx[:5]})")
    raise ValueError(f"empty must be 'match', 'exclude' or 'error', got {empty!r}")


@dataclass(frozen=True)
class SemanticResult:
    """Label-free scores of a set (:func:`evaluate_semantic`): per-sample AP and per-class pixel
    counts summed over the set. ``summary()`` gives the table row."""

    ap: Tensor  # [N] float64 semantic AP per sample (NaN: excluded, empty="exclude")
    tp: Tensor  # [C] int64 pixels predicted and true, per class, summed over the samples
    pred: Tensor  # [C] int64 predicted (binarised selected-map) pixels per class
    gt: Tensor  # [C] int64 ground-truth pixels per class
    beta2: float = AVS_BETA2

    @property
    def occurring(self) -> Tensor:
        """``[C]`` bool: the classes with a ground-truth or a predicted pixel somewhere in the set."""
        return (self.pred + self.gt - self.tp) > 0

    def class_iou(self) -> Tensor:
        """``[C]`` float64 ``TP / (TP + FP + FN)`` per class; NaN for a class that does not occur."""
        union = (self.pred + self.gt - self.tp).to(torch.float64)
        return torch.where(self.occurring, self.tp.to(torch.float64) / union.clamp_min(1), torch.full_like(union, math.nan))

    def class_f(self) -> Tensor:
        """``[C]`` float64 ``(1 + b2) TP / ((1 + b2) TP + b2 FN + FP)`` per class (the F-beta of
        precision ``TP / (TP + FP)`` and recall ``TP / (TP + FN)``, 0 when TP = 0); NaN for a class
        that does not occur."""
        tp, fp, fn = (x.to(torch.float64) for x in (self.tp, self.pred - self.tp, self.gt - self.tp))
        den = (1 + self.beta2) * tp + self.beta2 * fn + fp
        return torch.where(self.occurring, (1 + self.beta2) * tp / den.clamp_min(1e-300), torch.full_like(den, math.nan))

    @property
    def miou(self) -> float:
        """Mean of :meth:`class_iou` over the occurring classes; 1.0 when no class occurs (nothing
        sounds in the set and nothing is predicted: the AVSBench convention, an empty prediction of
        an empty ground truth is right)."""
        occ = self.occurring
        return float(self.class_iou()[occ].mean()) if bool(occ.any()) else 1.0

    @property
    def fscore(self) -> float:
        """Mean of :meth:`class_f` over the occurring classes (1.0 when none occurs, as :attr:`miou`)."""
        occ = self.occurring
        return float(self.class_f()[occ].mean()) if bool(occ.any()) else 1.0

    def summary(self) -> dict[str, float]:
        """``{"semantic_ap" (mean over the samples it is defined for), "semantic_miou", "semantic_f"}``."""
        keep = ~torch.isnan(self.ap)
        return {"semantic_ap": float(self.ap[keep].mean()) if bool(keep.any()) else math.nan,
                "semantic_miou": self.miou, "semantic_f": self.fscore}


def evaluate_semantic(
    pred_maps: Tensor,
    pred_classes: Tensor,
    masks: Tensor,
    classes: Tensor,
    *,
    rule: BinarizeRule = "top_fraction",
    value: float = 0.5,
    beta2: float = AVS_BETA2,
    num_classes: int | None = None,
    empty: SemanticEmptyPolicy = "match",
    chunk_size: int = _DEFAULT_CHUNK,
    backend: Backend = "auto",
) -> SemanticResult:
    """Label-free (semantic) scores of a method's selected classes and their maps.

    The prediction of a sample is a set of classes, each with a map; the ground truth is the set of
    sounding classes, each with its mask. Both are scored over the **class x pixel volume**, so a
    selected class that does not sound (a false selection) and a sounding class that is not
    selected (a miss) both cost, unlike CAP / PIAP.

    Args:
        pred_maps: ``[N, K, h, w]`` the selected classes' maps (any resolution; upsampled bilinearly
            to the masks, :func:`upsample_maps`), on **one scale for all classes**: the maps as the
            model outputs them (AVGN's are cosines in [-1, 1] for every class). Any strictly
            increasing transform applied to a sample's maps *together* (e.g. min-max over the
            selected classes jointly) leaves every score unchanged; a per-class normalisation does
            not (it would rank the top pixels of a class the model barely believes with the best
            class's peak).
        pred_classes: ``[N, K]`` the class of each selected map, ``-1`` for padding (no map); a class
            may be selected once per sample. A row of ``-1`` is an empty selection ("nothing sounds").
        masks: ``[N, S, H, W]`` bool, one mask per ground-truth source.
        classes: ``[N, S]`` the class of each source, ``-1`` for padding. Sources of one class form
            one class mask (their union).
        rule, value: the protocol's binarisation of each selected map for mIoU / F (:func:`binarize`,
            per map: ``top_fraction`` 0.5 keeps the upper half of every selected map).
        beta2: the F-measure's beta squared (AVSBench's 0.3).
        num_classes: size of the per-class counts (default: the largest class index + 1; classes
            that do not occur do not change the scores).
        empty: the AP of a sample with no ground-truth pixel: ``"match"`` (1 if nothing is selected,
            else 0), ``"exclude"`` (NaN) or ``"error"``.

    **Semantic AP** (per sample): average precision over the volume, the selected classes' maps as
    scores, every unselected class scored ``-inf`` (below every selected score), the sounding
    classes' masks as positives. For a positive ``i`` with a finite score,
    ``precision_i = #{positives >= s_i} / #{cells >= s_i}`` (ties as in :func:`pixel_average_precision`);
    a positive of an unselected class (a miss) is never retrieved and has precision 0; AP is the mean
    over all positives. The unselected cells tie at the floor ``-inf``: that tie is **not counted as a
    threshold** — scikit-learn's ``average_precision_score`` on the concatenated volume (the
    unselected classes given any one score below every selected one) counts it as a last threshold
    that retrieves everything, giving each missed positive the volume's positive rate; so
    ``semantic AP = sklearn AP - n_missed / (C * H * W)`` exactly, and equivalently
    ``(n_reached / n_positives) * (pixel AP of the selected classes' volume)``. Hence: the right
    selection with perfect maps scores 1; a false selection adds negatives (they cost AP where they
    score at or above a positive; a false map lying wholly below every positive costs AP nothing — it
    is ranked last; it still costs mIoU / F); a miss caps AP at the share of positives reached; an
    empty selection while something sounds scores 0; nothing sounding scores per ``empty`` (default:
    1 for an empty selection, 0 otherwise — the AVSBench convention).

    **Semantic mIoU / F** (per set, AVSBench-semantic style): for each class ``c``, ``TP_c``,
    ``FP_c``, ``FN_c`` are pixel counts summed over all samples between the binarised map of ``c``
    (empty where ``c`` is not selected) and the mask of ``c`` (empty where ``c`` does not sound);
    ``IoU_c = TP / (TP + FP + FN)``, ``F_c = (1 + beta2) TP / ((1 + beta2) TP + beta2 FN + FP)``;
    both are averaged over the classes that occur (``TP + FP + FN > 0``: a ground-truth or a
    predicted pixel somewhere in the set); with no class occurring both are 1.

    Returns a :class:`SemanticResult`.
    """
    _check_semantic(pred_maps, pred_classes, masks, classes)
    top = max(int(pred_classes.max()) if pred_classes.numel() else -1, int(classes.max()) if classes.numel() else -1)
    c = top + 1 if num_classes is None else int(num_classes)
    if c < top + 1:
        raise ValueError(f"num_classes={c} but a class index is {top}")
    parts = _semantic_parts(pred_maps, pred_classes, masks, classes, rule, value, c, chunk_size, backend)
    ap = _semantic_ap_of(parts, masks, empty)
    if not parts:
        zero = torch.zeros(c, dtype=torch.int64, device=masks.device)
        return SemanticResult(ap, zero, zero.clone(), zero.clone(), beta2)
    tp, pred, gt = (torch.stack([p[key] for p in parts]).sum(0) for key in ("tp", "pred", "gt"))
    return SemanticResult(ap, tp, pred, gt, beta2)


def _semantic_parts(pred_maps: Tensor, pred_classes: Tensor, masks: Tensor, classes: Tensor, rule: BinarizeRule | None,
                    value: float, num_classes: int, chunk_size: int, backend: Backend) -> list[dict[str, Tensor]]:
    """:func:`_semantic_chunk` over chunks of samples (about ``chunk_size`` selected maps upsampled at once)."""
    n, k = pred_maps.shape[:2]
    size = tuple(masks.shape[-2:])
    step = max(1, chunk_size // max(1, k))
    parts = []
    for start in range(0, n, step):
        b = min(step, n - start)
        maps = pred_maps[start : start + b].to(masks.device)
        up = upsample_maps(maps, size) if k else maps.new_zeros(b, 0, *size)
        parts.append(_semantic_chunk(up, pred_classes[start : start + b].to(masks.device), masks[start : start + b],
                                     classes[start : start + b].to(masks.device), backend, rule, value, num_classes))
    return parts


def _semantic_ap_of(parts: list[dict[str, Tensor]], masks: Tensor, empty: SemanticEmptyPolicy) -> Tensor:
    """The per-sample semantic AP ``[N]`` of :func:`_semantic_parts`, samples without positives per ``empty``."""
    if not parts:
        return torch.zeros(0, dtype=torch.float64, device=masks.device)
    return _empty_semantic_ap(torch.cat([p["ap"] for p in parts]), torch.cat([p["n_total"] for p in parts]),
                              torch.cat([p["any_selected"] for p in parts]), empty)


def semantic_ap(pred_maps: Tensor, pred_classes: Tensor, masks: Tensor, classes: Tensor, *,
                empty: SemanticEmptyPolicy = "match", chunk_size: int = _DEFAULT_CHUNK, backend: Backend = "auto") -> Tensor:
    """Per-sample semantic AP ``[N]`` float64 over the class x pixel volume (no binarisation). See
    :func:`evaluate_semantic` for the arguments and the exact definition (scale, ties, empty cases)."""
    _check_semantic(pred_maps, pred_classes, masks, classes)
    return _semantic_ap_of(_semantic_parts(pred_maps, pred_classes, masks, classes, None, 0.0, 0, chunk_size, backend), masks, empty)


def semantic_miou(pred_maps: Tensor, pred_classes: Tensor, masks: Tensor, classes: Tensor, *,
                  rule: BinarizeRule = "top_fraction", value: float = 0.5, chunk_size: int = _DEFAULT_CHUNK) -> float:
    """Semantic mIoU of a set: per-class IoU of pixel counts summed over the samples, averaged over
    the classes that occur. See :func:`evaluate_semantic`."""
    return evaluate_semantic(pred_maps, pred_classes, masks, classes, rule=rule, value=value, chunk_size=chunk_size).miou


def semantic_f(pred_maps: Tensor, pred_classes: Tensor, masks: Tensor, classes: Tensor, *, rule: BinarizeRule = "top_fraction",
               value: float = 0.5, beta2: float = AVS_BETA2, chunk_size: int = _DEFAULT_CHUNK) -> float:
    """Semantic F-score (beta² = 0.3) of a set: per-class F-beta of pixel counts summed over the
    samples, averaged over the classes that occur. See :func:`evaluate_semantic`."""
    return evaluate_semantic(pred_maps, pred_classes, masks, classes, rule=rule, value=value, beta2=beta2, chunk_size=chunk_size).fscore
