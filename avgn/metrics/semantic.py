"""Label-free (semantic) metrics: a method's selection of classes scored with its maps over the
class x pixel volume, so a false selection and a miss both cost."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from avgn.metrics.avs import AVS_BETA2
from avgn.metrics.pixels import (
    _DEFAULT_CHUNK,
    Backend,
    BinarizeRule,
    _ap_rows,
    _check_maps,
    _check_masks,
    _in_threads,
    _row_kernel,
    _use_numpy,
    binarize,
    upsample_maps,
)

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
