"""The evaluation protocol: one correct, batched definition of every localization metric in the book.

The package: :mod:`~avgn.metrics.pixels` (checks, pixel AP and its CPU kernel, binarisation, cIoU),
:mod:`~avgn.metrics.sources` (single- and multi-source evaluation), :mod:`~avgn.metrics.avs`
(AVSBench mIoU / F) and :mod:`~avgn.metrics.semantic` (label-free metrics); everything public is
importable from ``avgn.metrics``.

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

from avgn.metrics.avs import (
    AVS_BETA2,
    AVS_N_THRESHOLDS,
    AvsEmptyPolicy,
    AvsResult,
    avs_fscore_curves,
    avs_iou,
    avs_thresholds,
    evaluate_avs,
)
from avgn.metrics.pixels import (
    BINARIZE_RULES,
    SUCCESS_THRESHOLDS,
    BinarizeRule,
    binarize,
    ciou,
    minmax_normalise,
    pixel_average_precision,
    success_auc,
    success_curve,
    success_rate,
    upsample_maps,
)
from avgn.metrics.semantic import (
    SemanticEmptyPolicy,
    SemanticResult,
    evaluate_semantic,
    semantic_ap,
    semantic_f,
    semantic_miou,
)
from avgn.metrics.sources import (
    MultiSourceResult,
    SingleSourceResult,
    best_assignment_mean,
    class_aware_maps,
    evaluate_multi_source,
    evaluate_single_source,
    pairwise_ap,
    piap,
)

__all__ = [
    "AVS_BETA2",
    "AVS_N_THRESHOLDS",
    "AvsEmptyPolicy",
    "AvsResult",
    "BINARIZE_RULES",
    "BinarizeRule",
    "MultiSourceResult",
    "SUCCESS_THRESHOLDS",
    "SemanticEmptyPolicy",
    "SemanticResult",
    "SingleSourceResult",
    "avs_fscore_curves",
    "avs_iou",
    "avs_thresholds",
    "best_assignment_mean",
    "binarize",
    "ciou",
    "class_aware_maps",
    "evaluate_avs",
    "evaluate_multi_source",
    "evaluate_semantic",
    "evaluate_single_source",
    "minmax_normalise",
    "pairwise_ap",
    "piap",
    "pixel_average_precision",
    "semantic_ap",
    "semantic_f",
    "semantic_miou",
    "success_auc",
    "success_curve",
    "success_rate",
    "upsample_maps",
]
