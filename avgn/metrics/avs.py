"""AVSBench segmentation metrics (mIoU and F-score), per image and independent of the batch size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from avgn.metrics.pixels import _check_maps, _check_masks

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
