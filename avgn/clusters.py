"""Object clusters for DSOL-style class-aware localization, and the silent-object metrics.

* :func:`masked_object_features` — per frame, the mean backbone feature inside the localised region
  (map above a threshold, dilated by a 4-neighbourhood), as DSOL's stage 1 extracts objects.
* :func:`kmeans_dictionary` — K-means (scikit-learn, Lloyd) on the L2-normalised object features:
  the cluster centres are the dictionary of object categories.
* :func:`hungarian_mapping` — clusters to classes, one-to-one, maximising the number of objects whose
  cluster maps to their class (:func:`scipy.optimize.linear_sum_assignment`), with the cluster purity.
  Done once, on the validation split, never on test and never by hand.
* :func:`majority_mapping` — clusters to classes, many-to-one (each cluster its majority class): for
  over-clustering, where a class split over several clusters keeps them all.
* :func:`nsa` and :func:`false_alarm_rate` — how a method treats objects that are seen but not heard.

Every degenerate input has a defined behaviour and a clear error (an empty region, more clusters
than objects, a cluster left empty), never a crash deep inside scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ObjectFeatures", "masked_object_features", "kmeans_dictionary", "ClusterMapping", "contingency", "hungarian_mapping", "majority_mapping", "CLUSTER_MAPPINGS", "nsa", "false_alarm_rate"]


@dataclass(frozen=True)
class ObjectFeatures:
    """``feats [N, C]`` (one object per frame) and ``empty [N]`` (bool): frames whose region was
    empty, which fall back to the feature at the map's peak."""

    feats: Tensor
    empty: Tensor


def masked_object_features(backbone: Tensor, maps: Tensor, threshold: float = 0.05, dilate: int = 1) -> ObjectFeatures:
    """Mean of ``backbone [N, C, h, w]`` over the cells where ``maps [N, h, w]`` exceeds ``threshold``,
    the region grown ``dilate`` times by its 4-neighbours. A frame whose region is empty (the map
    never exceeds the threshold) takes the feature of its peak cell and is flagged in ``empty``."""
    if backbone.dim() != 4 or maps.dim() != 3 or backbone.shape[0] != maps.shape[0] or backbone.shape[-2:] != maps.shape[-2:]:
        raise ValueError(f"expected backbone [N, C, h, w] and maps [N, h, w] of the same N, h, w; got {tuple(backbone.shape)} and {tuple(maps.shape)}")
    mask = (maps > threshold).float()[:, None]
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], dtype=mask.dtype, device=mask.device)[None, None]
    for _ in range(int(dilate)):
        mask = (F.conv2d(mask, cross, padding=1) > 0).float()
    empty = mask.flatten(1).sum(1) == 0
    if empty.any():
        peak = maps[empty].flatten(1).argmax(1)
        fallback = torch.zeros_like(mask[empty]).flatten(1)
        fallback[torch.arange(len(peak)), peak] = 1.0
        mask[empty] = fallback.view_as(mask[empty])
    w = mask / mask.flatten(1).sum(1).view(-1, 1, 1, 1)
    return ObjectFeatures((backbone.float() * w).sum(dim=(2, 3)), empty)


def kmeans_dictionary(feats: Tensor | np.ndarray, k: int, seed: int = 0, n_init: int = 10,
                      init: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """K-means with ``k`` clusters on the L2-normalised rows of ``feats [N, C]``; ``init`` ``[k, C]``
    starts Lloyd's iterations from those centres (L2-normalised; one run) instead of ``n_init``
    k-means++ draws, so cluster ``j`` stays the cluster it was (a warm re-clustering).

    Returns ``(centres [k, C], labels [N])`` (float32 / long).

    Raises:
        ValueError: ``k < 2``, fewer objects (or distinct objects) than clusters, or a cluster left
            without any object — each naming the numbers and the fix.
    """
    from sklearn.cluster import KMeans

    x = torch.as_tensor(feats, dtype=torch.float32)
    if x.dim() != 2:
        raise ValueError(f"object features must be [N, C], got {tuple(x.shape)}")
    if k < 2:
        raise ValueError(f"K = {k}: DSOL needs at least 2 clusters")
    x = F.normalize(x, dim=1)
    distinct = len(np.unique(np.round(x.numpy(), 6), axis=0))
    if len(x) < k or distinct < k:
        raise ValueError(f"K = {k} clusters but only {len(x)} objects ({distinct} distinct) to cluster: lower K (at most the "
                         "number of classes in the training data) or cluster more single-source scenes")
    if init is not None:
        if tuple(init.shape) != (k, x.shape[1]):
            raise ValueError(f"init must be [{k}, {x.shape[1]}] centres, got {tuple(init.shape)}")
        start = F.normalize(torch.as_tensor(init, dtype=torch.float32), dim=1).numpy().astype(np.float64)
        km = KMeans(n_clusters=k, init=start, n_init=1, random_state=int(seed), algorithm="lloyd").fit(x.numpy().astype(np.float64))
    else:
        km = KMeans(n_clusters=k, n_init=n_init, random_state=int(seed), algorithm="lloyd").fit(x.numpy().astype(np.float64))
    labels = torch.as_tensor(km.labels_, dtype=torch.long)
    counts = torch.bincount(labels, minlength=k)
    if (counts == 0).any():
        raise ValueError(f"K-means left cluster(s) {torch.nonzero(counts == 0).flatten().tolist()} without any object: lower K")
    return torch.as_tensor(km.cluster_centers_, dtype=torch.float32), labels


@dataclass(frozen=True)
class ClusterMapping:
    """``cluster_to_class [K]`` (class id, -1 for a cluster left unmatched when K > classes),
    ``purity`` (share of objects in their cluster's majority class), ``accuracy`` (share of objects
    whose cluster maps to their class) and the ``contingency [K, C]`` counts."""

    cluster_to_class: Tensor
    purity: float
    accuracy: float
    contingency: Tensor


def contingency(clusters: Tensor, classes: Tensor, k: int, num_classes: int) -> Tensor:
    """The ``[K, C]`` counts of objects per (cluster, true class) from ``clusters [N]`` and ``classes [N]``,
    both checked (two non-empty vectors of the same length, ids within ``k`` and ``num_classes``)."""
    clusters, classes = torch.as_tensor(clusters).long(), torch.as_tensor(classes).long()
    if clusters.shape != classes.shape or clusters.dim() != 1 or len(clusters) == 0:
        raise ValueError(f"clusters and classes must be two non-empty [N] vectors, got {tuple(clusters.shape)} and {tuple(classes.shape)}")
    if int(clusters.max()) >= k or int(clusters.min()) < 0 or int(classes.max()) >= num_classes or int(classes.min()) < 0:
        raise ValueError(f"cluster ids must lie in [0, {k}) and class ids in [0, {num_classes})")
    cont = torch.zeros(k, num_classes, dtype=torch.long)
    cont.index_put_((clusters, classes), torch.ones_like(clusters), accumulate=True)
    return cont


def hungarian_mapping(clusters: Tensor, classes: Tensor, k: int, num_classes: int) -> ClusterMapping:
    """The one-to-one cluster -> class mapping that maximises the number of objects mapped to their
    own class (``clusters [N]``, ``classes [N]``: cluster and true class of each object)."""
    from scipy.optimize import linear_sum_assignment

    cont = contingency(clusters, classes, k, num_classes)
    rows, cols = linear_sum_assignment(cont.numpy(), maximize=True)
    mapping = torch.full((k,), -1, dtype=torch.long)
    mapping[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    n = int(cont.sum())
    purity = float(cont.max(dim=1).values.sum()) / n
    accuracy = float(cont[torch.as_tensor(rows), torch.as_tensor(cols)].sum()) / n
    return ClusterMapping(mapping, purity, accuracy, cont)


def majority_mapping(clusters: Tensor, classes: Tensor, k: int, num_classes: int) -> ClusterMapping:
    """The many-to-one cluster -> class mapping: every cluster to the majority class of its objects
    (ties: the lowest class id; a cluster without objects: -1). With more clusters than classes
    (over-clustering) a class split over several clusters keeps all of them; ``accuracy`` then equals
    ``purity``. Arguments as :func:`hungarian_mapping`."""
    cont = contingency(clusters, classes, k, num_classes)
    top = cont.max(dim=1)
    mapping = torch.where(cont.sum(1) > 0, top.indices, torch.full_like(top.indices, -1))
    purity = float(top.values.sum()) / int(cont.sum())
    return ClusterMapping(mapping, purity, purity, cont)


CLUSTER_MAPPINGS = {"hungarian": hungarian_mapping, "majority": majority_mapping}


def nsa(maps: Tensor, silent: Tensor, threshold: float = 0.2) -> float:
    """Non-sounding area (DSOL): the mean over the (scene, class) pairs selected by ``silent
    [N, K]`` of the fraction of pixels of that class's map ``maps [N, K, H, W]`` (values in [0, 1])
    at or below ``threshold``. 1 = silent objects never light up. NaN when no pair is selected.
    The paper averages over every non-sounding class, absent ones included; pass the visible
    silent distractors only for the stricter reading."""
    if maps.dim() != 4 or silent.shape != maps.shape[:2]:
        raise ValueError(f"expected maps [N, K, H, W] and silent [N, K], got {tuple(maps.shape)} and {tuple(silent.shape)}")
    if not silent.any():
        return float("nan")
    frac = (maps <= threshold).float().flatten(2).mean(-1)  # [N, K]
    return float(frac[silent.bool()].mean())


def false_alarm_rate(peaks: Tensor, sounding: Tensor, distractor: Tensor) -> float:
    """How often a silent distractor's map peak is above the median peak of the sounding sources of
    its scene: ``peaks``, ``sounding``, ``distractor`` ``[N, K]`` (scenes without a sounding source or
    a distractor do not count). NaN when no pair counts."""
    if not (peaks.shape == sounding.shape == distractor.shape) or peaks.dim() != 2:
        raise ValueError("peaks, sounding and distractor must all be [N, K]")
    hits, total = 0, 0
    for p, s, d in zip(peaks.float(), sounding.bool(), distractor.bool()):
        if not s.any() or not d.any():
            continue
        med = p[s].median()
        hits += int((p[d] > med).sum())
        total += int(d.sum())
    return hits / total if total else float("nan")
