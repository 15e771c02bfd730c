"""Predictions of an evaluation set and their scores: source selection (``oracle`` / ``predicted``),
presence and token metrics, the per-set summary of :mod:`avgn.metrics`, and the presence threshold."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from avgn import metrics
from avgn.config import EvalConfig
from avgn.evaluate.sets import EvalSet, SetName
from avgn.methods import MethodPredictor
from avgn.models.selection import select_sources

#: The version of the evaluation protocol (:func:`evaluate_sets`, :mod:`avgn.metrics`): stored
#: evaluations of another version are re-scored from the stored weights (``avgn runs train``),
#: without retraining.
EVAL_VERSION = 2

#: The ``predicted`` selection of the evaluation keeps exactly the classes whose presence
#: probability reaches the threshold: none may pass ("nothing sounds" is an answer; it scores 0 on a
#: set where something always sounds, which is the cost of a miss).
PREDICTED_MIN_SOURCES = 0
#: Model selection during training (the validation score of every epoch, :func:`avgn.train`) and
#: the choice of the presence threshold score the ``predicted`` selection with at least one class, as
#: the first edition did: the stored runs' selected epochs and thresholds stay what they are. Whether
#: selection should allow an empty answer too is decided with AVGN's training on negative audio
#: (silence, noise), which changes what it trains anyway.
SELECTION_MIN_SOURCES = 1

MODES = ("oracle", "predicted")
#: Anything that turns a batch into maps and declares their ``kind`` (:class:`avgn.methods.MethodPredictor`).
Predictor = MethodPredictor



# --------------------------------------------------------------------------------------------------
# predictions of a set and their scores
# --------------------------------------------------------------------------------------------------
@dataclass
class SetPredictions:
    """Everything the scoring needs, concatenated over a set (CPU tensors)."""

    name: SetName
    kind: str
    maps: Tensor  # [N, K, h, w] (class_aware: K = C)
    masks: Tensor  # [N, S, H, W] bool
    classes: Tensor  # [N, S] long, -1 padded
    labels: Tensor  # [N, C]
    scene_ids: list[str]
    audio_probs: Tensor | None = None  # [N, C]
    token_pred: Tensor | None = None  # [N, C]
    seconds: float = 0.0
    offscreen: Tensor | None = None  # [N] long: a negative-audio set's off-screen class (-1: none)


def predict_set(predictor: Predictor, es: EvalSet) -> SetPredictions:
    """Run ``predictor`` over every batch of ``es``."""
    t0 = time.perf_counter()
    acc: dict[str, list[Any]] = {k: [] for k in ("maps", "masks", "classes", "labels", "scene_ids", "audio_probs", "token_pred", "offscreen")}
    for batch in es.batches():
        out = predictor(batch)
        acc["maps"].append(out["maps"])
        acc["masks"].append(batch["masks"])
        acc["classes"].append(batch["classes"])
        acc["labels"].append(batch["labels"])
        acc["scene_ids"] += list(batch["scene_ids"])
        for k in ("audio_probs", "token_pred"):
            if k in out:
                acc[k].append(out[k])
        if "offscreen" in batch:
            acc["offscreen"].append(batch["offscreen"].long())
    cat = {k: torch.cat(v) if v and k != "scene_ids" else v for k, v in acc.items()}
    return SetPredictions(
        name=es.name,
        kind=predictor.kind,
        maps=cat["maps"],
        masks=cat["masks"].bool(),
        classes=cat["classes"].long(),
        labels=cat["labels"],
        scene_ids=cat["scene_ids"],
        audio_probs=cat["audio_probs"] if len(acc["audio_probs"]) else None,
        token_pred=cat["token_pred"] if len(acc["token_pred"]) else None,
        seconds=time.perf_counter() - t0,
        offscreen=cat["offscreen"] if len(acc["offscreen"]) else None,
    )


def _hungarian_match(pairs: Tensor, valid: Tensor) -> Tensor:
    """Per sample, the slot matched to each source by the max-sum-AP one-to-one assignment.

    ``pairs`` ``[N, K, S]`` (AP of slot k for source s), ``valid`` ``[N, S]``. Returns ``[N, S]``
    long, -1 for invalid or unmatched sources (more sources than slots)."""
    from scipy.optimize import linear_sum_assignment

    n, k, s = pairs.shape
    out = torch.full((n, s), -1, dtype=torch.long)
    p = torch.nan_to_num(pairs, nan=0.0).numpy()
    v = valid.numpy()
    for i in range(n):
        cols = np.flatnonzero(v[i])
        if len(cols) == 0:
            continue
        r, c = linear_sum_assignment(p[i][:, cols], maximize=True)
        out[i, cols[c]] = torch.as_tensor(r, dtype=torch.long)
    return out


def selected_classes(audio_probs: Tensor, threshold: float = 0.5, min_sources: int = 1) -> Tensor:
    """``[N, C]`` bool: the classes of the ``predicted`` selection — presence probability
    ``audio_probs [N, C] >= threshold``, and at least the ``min_sources`` most probable (ties: the
    lowest index first); with ``min_sources = 0`` a row may be empty."""
    pred = audio_probs >= threshold
    if min_sources > 0:
        top = audio_probs.argsort(dim=1, descending=True, stable=True)[:, :min_sources]
        pred[torch.arange(len(top))[:, None], top] = True
    return pred


def presence_metrics(audio_probs: Tensor, labels: Tensor, threshold: float = 0.5, min_sources: int = 1) -> dict[str, float]:
    """Micro precision / recall / F1 of the predicted class sets (``>= threshold``, and at least the
    ``min_sources`` most probable; the evaluation's ``predicted`` mode passes
    :data:`PREDICTED_MIN_SOURCES` = 0, so a set may be empty) against ``labels`` ``[N, C]``, and the
    share of samples whose predicted number of sources is right. Precision of no prediction at all
    is 0."""
    pred = selected_classes(audio_probs, threshold, min_sources)
    tgt = labels > 0.5
    tp = (pred & tgt).sum().item()
    fp = (pred & ~tgt).sum().item()
    fn = (~pred & tgt).sum().item()
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    count = (pred.sum(1) == tgt.sum(1)).float().mean().item() if len(tgt) else math.nan
    return {"presence_precision": prec, "presence_recall": rec, "presence_f1": f1, "count_acc": count}


def _macro_prf(confusion: np.ndarray) -> dict[str, float]:
    """Macro precision / recall / F1 over the classes that occur (rows: truth, columns: prediction)."""
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    present = support > 0
    prec = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    rec = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
    return {
        "token_precision": float(prec[present].mean()) if present.any() else math.nan,
        "token_recall": float(rec[present].mean()) if present.any() else math.nan,
        "token_f1": float(f1[present].mean()) if present.any() else math.nan,
        "token_accuracy": float(tp.sum() / max(1, support.sum())),
    }


def token_confusion(preds: SetPredictions | Sequence[SetPredictions], num_classes: int | None = None) -> np.ndarray:
    """``[C, C]`` confusion of AVGN's token classifier applied to the class-aware audio embedding of
    every ground-truth source (rows: the source's class, columns: the classifier's answer)."""
    plist = [preds] if isinstance(preds, SetPredictions) else list(preds)
    c = num_classes or plist[0].labels.shape[1]
    conf = np.zeros((c, c), dtype=np.int64)
    for p in plist:
        if p.token_pred is None:
            raise ValueError("token_confusion needs AVGN predictions (token_pred)")
        valid = p.classes >= 0
        rows = valid.nonzero(as_tuple=True)[0]
        truth = p.classes[valid]
        answer = p.token_pred[rows, truth]
        np.add.at(conf, (truth.numpy(), answer.numpy()), 1)
    return conf


def _source_maps(p: SetPredictions, mode: str, threshold: float, min_sources: int = PREDICTED_MIN_SOURCES) -> dict[str, Any]:
    """Maps aligned with the sources for one mode: ``maps [N,S,h,w]``, ``hit [N,S]`` (False: the
    source has no map and scores 0), ``pred_maps`` / ``pred_pairs`` for PIAP (None: PIAP of ``maps``)."""
    valid = p.classes >= 0
    s = p.classes.shape[1]
    if p.kind == "class_aware":
        maps, _ = metrics.class_aware_maps(p.maps, p.classes)
        if mode == "oracle":
            return {"maps": maps, "hit": valid, "pred_maps": None}
        if p.audio_probs is None:
            raise ValueError("predicted mode needs audio presence probabilities")
        sel, sel_classes, sel_mask = select_sources(p.maps, "predicted", audio_probs=p.audio_probs, threshold=threshold,
                                                    min_sources=min_sources)
        hit = valid & (p.classes[:, :, None] == torch.where(sel_mask, sel_classes, -2)[:, None, :]).any(-1)
        return {"maps": maps, "hit": hit, "pred_maps": sel, "pred_valid": sel_mask, "pred_classes": sel_classes}
    if p.kind == "shared":
        return {"maps": p.maps[:, :1].expand(-1, s, -1, -1), "hit": valid, "pred_maps": None}
    if p.kind == "slots":
        pairs = metrics.pairwise_ap(p.maps, p.masks)  # [N, K, S]
        match = _hungarian_match(pairs, valid & (p.masks.flatten(2).any(-1)))
        idx = match.clamp_min(0)[:, :, None, None].expand(-1, -1, *p.maps.shape[-2:])
        maps = torch.gather(p.maps, 1, idx) * (match >= 0)[:, :, None, None]
        return {"maps": maps, "hit": valid & (match >= 0), "pred_pairs": pairs}
    raise ValueError(f"unknown predictor kind {p.kind!r}")


def _first_of_class(classes: Tensor) -> Tensor:
    """``classes [N, S]`` with every repeat of a class within a sample set to -1 (first kept)."""
    s = classes.shape[1]
    same = (classes[:, :, None] == classes[:, None, :]) & (classes >= 0)[:, :, None]
    earlier = torch.ones(s, s, dtype=torch.bool).tril(-1)
    return torch.where((same & earlier).any(2), torch.full_like(classes, -1), classes)


def _semantic_selection(p: SetPredictions, mode: str, sm: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The selected classes and their maps for the label-free metrics: ``(maps [N, K, h, w],
    classes [N, K] with -1 for none)``. See the module docstring: class-aware methods give their
    ground-truth (``oracle``) or own (``predicted``) selection; a class-agnostic method's map (its
    matched slot) stands for each sounding class it covers, with no other class."""
    if p.kind == "class_aware":
        if mode == "predicted":
            return sm["pred_maps"], sm["pred_classes"]
        chosen = _first_of_class(p.classes)
        return metrics.class_aware_maps(p.maps, chosen)[0], chosen
    chosen = _first_of_class(torch.where(sm["hit"], p.classes, torch.full_like(p.classes, -1)))
    return sm["maps"], chosen


def score_set(p: SetPredictions, mode: str = "oracle", cfg: EvalConfig = EvalConfig(), presence_threshold: float = 0.5,
              min_sources: int = PREDICTED_MIN_SOURCES) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics of one set under one source-selection mode: ``(summary, per-source rows)``.

    The summary holds the single-source (``ap``, ``iou@t``, ``auc``) or multi-source (``cap``,
    ``piap``, ``ciou@t``, ``auc``) metrics, the label-free ``semantic_ap`` / ``semantic_miou`` /
    ``semantic_f`` (:func:`_semantic_selection`; a favourable reading for class-agnostic methods,
    see the module docstring) and, for class-aware methods, the token classifier's and (``predicted``)
    the presence metrics of the same, possibly empty, selection."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    sm = _source_maps(p, mode, presence_threshold, min_sources)
    maps, hit = sm["maps"], sm["hit"]
    valid = p.classes >= 0
    n, s = p.classes.shape
    if s == 1:
        r = metrics.evaluate_single_source(
            maps[:, 0], p.masks[:, 0], rule=cfg.binarize_rule, value=cfg.binarize_value, iou_threshold=cfg.iou_threshold_single, allow_empty=True
        )
        ap = torch.where(hit[:, 0], r.ap, torch.zeros_like(r.ap).where(~torch.isnan(r.ap), r.ap))
        iou = torch.where(hit[:, 0], r.ciou, torch.zeros_like(r.ciou).where(~torch.isnan(r.ciou), r.ciou))
        summary = metrics.SingleSourceResult(ap=ap, ciou=iou, iou_threshold=cfg.iou_threshold_single).summary()
        ap, iou = ap[:, None], iou[:, None]
    else:
        r = metrics.evaluate_multi_source(
            maps, p.masks, valid, rule=cfg.binarize_rule, value=cfg.binarize_value, iou_threshold=cfg.iou_threshold_multi, allow_empty=True
        )
        zero_ap = torch.zeros_like(r.cap).where(~torch.isnan(r.cap), r.cap)
        ap = torch.where(hit, r.cap, zero_ap)
        iou = torch.where(hit, r.ciou, torch.zeros_like(r.ciou).where(~torch.isnan(r.ciou), r.ciou))
        usable = valid & ~torch.isnan(r.cap)
        if sm.get("pred_pairs") is not None:
            piap = metrics.best_assignment_mean(torch.nan_to_num(sm["pred_pairs"], nan=0.0), usable)
        elif sm.get("pred_maps") is not None:
            pairs = metrics.pairwise_ap(sm["pred_maps"], p.masks)
            pairs = torch.where(sm["pred_valid"][:, :, None], torch.nan_to_num(pairs, nan=0.0), torch.zeros_like(pairs))
            piap = metrics.best_assignment_mean(pairs, usable)
        else:
            piap = r.piap
        summary = metrics.MultiSourceResult(cap=ap, piap=piap, ciou=iou, valid=valid, iou_threshold=cfg.iou_threshold_multi).summary()
    sel_maps, sel_classes = _semantic_selection(p, mode, sm)
    sem = metrics.evaluate_semantic(sel_maps, sel_classes, p.masks, p.classes, rule=cfg.binarize_rule, value=cfg.binarize_value,
                                    num_classes=p.labels.shape[1])
    summary.update(sem.summary())
    sem_ap = sem.ap.tolist()
    if p.kind == "class_aware":
        if mode == "predicted":
            summary.update(presence_metrics(p.audio_probs, p.labels, presence_threshold, min_sources=min_sources))
        if p.token_pred is not None:
            summary.update(_macro_prf(token_confusion(p)))
    rows = []
    ids = p.classes.tolist()
    for i in range(n):
        for j in range(s):
            if ids[i][j] < 0:
                continue
            rows.append(
                {
                    "set": str(p.name), "mode": mode, "scene_id": p.scene_ids[i], "source": j, "class_id": ids[i][j],
                    "ap": float(ap[i, j]), "ciou": float(iou[i, j]), "has_map": bool(hit[i, j]), "semantic_ap": sem_ap[i],
                }
            )
    return summary, rows


def primary_metric(name: SetName | str) -> str:
    """``ap`` for single-source sets, ``cap`` for mixtures."""
    sn = SetName.parse(name) if isinstance(name, str) else name
    return "ap" if sn.n_sources == 1 else "cap"


def selection_score(results: dict[str, dict[str, dict[str, float]]], mode: str | Sequence[str] = "oracle") -> float:
    """Model-selection score: mean over the sets (and over the modes, if several) of the primary
    metric (AP / CAP). A method that selects its sources itself is selected on
    ``("oracle", "predicted")``: a label-conditioned detector that cannot tell which classes sound
    does not win model selection."""
    modes = [mode] if isinstance(mode, str) else list(mode)
    vals = [res[m][primary_metric(name)] for name, res in results.items() for m in modes if m in res]
    return float(np.mean(vals)) if vals else math.nan


#: Presence thresholds tried by :func:`choose_presence_threshold`.
THRESHOLD_GRID = tuple(round(x, 2) for x in np.arange(0.05, 0.96, 0.05))


def choose_presence_threshold(
    predictor: Predictor, sets: Sequence[EvalSet], grid: Sequence[float] = THRESHOLD_GRID
) -> tuple[float, list[dict[str, float]]]:
    """The presence threshold of the ``predicted`` selection that maximises the mean presence micro-F1
    over ``sets`` — validation sets, never test. Returns ``(threshold, curve)`` with one
    ``{"threshold", "presence_precision", "presence_recall", "presence_f1"}`` row per grid value
    (means over the sets; ties: the value closest to 0.5).

    Why F1 and not the localization score: a source whose class is not selected scores 0, but a
    selected class that does not sound costs CAP nothing, so CAP alone is maximised by selecting
    every class (the lowest threshold) — the oracle score in disguise. Only the presence
    probabilities are read, so the curve costs one forward pass per set, not one scoring per value.
    """
    if predictor.kind != "class_aware":
        raise ValueError(f"{predictor.method.name} does not select its sources from presence probabilities")
    preds = [predict_set(predictor, es) for es in sets]
    curve = []
    for t in grid:
        per_set = [presence_metrics(p.audio_probs, p.labels, float(t), min_sources=SELECTION_MIN_SOURCES) for p in preds]
        row = {"threshold": float(t)}
        for key in ("presence_precision", "presence_recall", "presence_f1"):
            row[key] = float(np.mean([m[key] for m in per_set]))
        curve.append(row)
    return threshold_for_beta(curve, 1.0), curve


def threshold_for_beta(curve: Sequence[Mapping[str, float]], beta: float = 1.0) -> float:
    """The threshold of a validation ``curve`` (:func:`choose_presence_threshold`'s, stored in
    ``run.json`` as ``threshold_curve``) that maximises F-beta (ties: the value closest to 0.5).
    ``beta = 1`` is the book's rule and reads the curve's own F1 (the mean of the sets' F1s, exactly
    what :func:`choose_presence_threshold` maximises); any other ``beta`` is computed from the
    curve's mean precision and recall. ``beta > 1`` weighs recall more: a missed sounding source
    loses its whole map, a false alarm costs CAP nothing (:func:`avgnbook.analysis.selection_gap`).
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not curve:
        raise ValueError("empty threshold curve")
    b2 = float(beta) ** 2

    def score(r: Mapping[str, float]) -> float:
        if beta == 1.0:
            return float(r["presence_f1"])
        p, q = float(r["presence_precision"]), float(r["presence_recall"])
        return (1 + b2) * p * q / (b2 * p + q) if b2 * p + q > 0 else 0.0

    return float(max(curve, key=lambda r: (round(score(r), 9), -abs(r["threshold"] - 0.5)))["threshold"])


def evaluate_sets(
    predictor: Predictor,
    sets: Sequence[EvalSet],
    cfg: EvalConfig = EvalConfig(),
    modes: Sequence[str] = MODES,
    presence_threshold: float = 0.5,
    keep_predictions: bool = False,
    min_sources: int = PREDICTED_MIN_SOURCES,
) -> dict[str, Any]:
    """Predict and score every set. Modes a method does not support (``predicted`` for a method
    that cannot select its sources: EZ-VSL, Mix-and-Localize, the references) give the same numbers
    as ``oracle`` and are copied, not recomputed. ``min_sources``: the ``predicted`` selection keeps
    at least this many classes (the evaluation's :data:`PREDICTED_MIN_SOURCES` = 0: it may be empty;
    model selection during training keeps :data:`SELECTION_MIN_SOURCES`).

    Returns ``{"results": {set: {mode: summary}}, "rows": [...], "seconds": s, "items": n,
    "predictions": {set: SetPredictions} (if keep_predictions)}``.
    """
    t0 = time.perf_counter()
    results: dict[str, dict[str, dict[str, float]]] = {}
    rows: list[dict[str, Any]] = []
    kept: dict[str, SetPredictions] = {}
    items = 0
    for es in sets:
        p = predict_set(predictor, es)
        items += len(p.scene_ids)
        results[str(es.name)] = {}
        for mode in modes:
            if mode not in predictor.method.modes and "oracle" in results[str(es.name)]:
                results[str(es.name)][mode] = dict(results[str(es.name)]["oracle"])
                rows += [dict(r, mode=mode) for r in rows if r["set"] == str(es.name) and r["mode"] == "oracle"]
                continue
            summary, r = score_set(p, mode, cfg, presence_threshold, min_sources)
            results[str(es.name)][mode] = summary
            rows += r
        if keep_predictions:
            kept[str(es.name)] = p
    out: dict[str, Any] = {"results": results, "rows": rows, "seconds": time.perf_counter() - t0, "items": items}
    if keep_predictions:
        out["predictions"] = kept
    return out
