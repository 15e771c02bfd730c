"""Evaluation engine: every method and reference through one code path, on any (split, task, layout).

Evaluation sets are named ``split/task/layout`` (``test/solo/scene``, ``test/duet/concat``,
``test_zeroshot/duet/scene``, ...); :func:`list_sets` gives those a build has. Two kinds are
built on the fly, deterministically (seeded by the crc32 of the name): composed ``concat`` trios and
quartets (:func:`composed_concat_set`) and **negative-audio** sets ``<split>/<task>/<condition>``
(``test/solo/silence``, ``test/duet/noise``, ``test/solo/offscreen``: the built solo / duet scene
frames with digital silence, the build's noise alone or an off-screen class's clip;
:func:`negative_set`), scored by :func:`evaluate_negative` (false alarms, and the
visible objects' AP next to the frames' own audio) when they are among the sets of
:func:`evaluate_run` / :func:`evaluate_reference`. Metrics come from
:mod:`avgn.metrics` (single source: AP, IoU@0.5, AUC; mixtures: CAP, PIAP, CIoU@0.3, AUC; the
binarisation rule and thresholds from the profile's :class:`avgn.config.EvalConfig`).

How each method's maps are attached to the ground-truth sources
----------------------------------------------------------------

* **AVGN** (class-aware, ``kind='class_aware'``): one forward pass gives the maps of all ``C``
  classes (:meth:`avgn.methods.avgn.AVGN.localize`) and the audio presence probabilities. The map is
  the similarity the model was trained on (:func:`avgn_map_target`: ``cos(g^a_c, f_p * g^v_c)``
  for the paper's Eq.-10 loss, ``cos(g^a_c, f_p)`` for the released code's). Two
  source-selection modes, both reported:

  - ``oracle``: each source is scored with the map of its ground-truth class; PIAP assigns the
    maps of the ground-truth classes to the sources.
  - ``predicted``: the method decides which classes sound: those with audio presence probability
    ``>= presence_threshold`` (0.5) and no others — an empty selection ("nothing sounds") is an
    answer (:data:`PREDICTED_MIN_SOURCES` = 0 in :func:`avgn.models.selection.select_sources`). A source whose class is predicted is scored with that
    class's map; a source whose class is *not* predicted has no map and scores AP 0 and cIoU 0
    (the convention PIAP already uses for a source left without a map). PIAP assigns the
    *predicted* classes' maps to the sources; spurious predictions cost nothing in PIAP (they are
    simply not assigned) but show in the presence precision, reported next to it
    (``presence_precision`` / ``presence_recall`` / ``presence_f1``, micro-averaged over the set,
    and ``count_acc``: the predicted number of sources is right), and in the label-free metrics
    below. None of the public implementations supports this mode.

* **EZ-VSL** (``kind='shared'``): a single global audio feature, hence a single map per mixture; that
  map is used for *every* source (CAP, CIoU) and as the predicted map of every source (PIAP = CAP).
  Both modes give the same numbers.

* **Mix-and-Localize** (``kind='slots'``): class-agnostic, ``K`` slot maps. PIAP uses its ``K`` maps
  (``pred_maps=``). For CAP and CIoU each source is scored with the slot that the optimal one-to-one
  (Hungarian) matching of slots to sources by AP gives it — the same assignment PIAP uses, so
  Mix-and-Localize's CAP is an *oracle-matched* number that favours it. With more sources than
  slots (trios and quartets with ``K = 2``) the unmatched sources score 0. Both modes are the same.

* **References** (``kind='shared'``): ``centre`` — a Gaussian bump at the centre of every
  224x224 frame (for a ``concat`` frame, one bump per half); ``object`` — the ImageNet-feature
  object prior (mean absolute activation of the frozen EfficientNet-Lite0 features,
  :func:`avgn.models.object_prior`) of the frame. One map for every source, like EZ-VSL.

Label-free metrics (every method, both modes; :func:`avgn.metrics.evaluate_semantic`):
``semantic_ap`` (per sample over the class x pixel volume, then the mean), ``semantic_miou`` and
``semantic_f`` (per class, pixel counts summed over the set, binarised by the profile's rule). They
score the *selection* with its maps: a selected class that does not sound and a sounding class that
is not selected both cost, which CAP and PIAP do not charge. What is selected, per kind:

* ``class_aware``: ``oracle`` selects the ground-truth classes, ``predicted`` the method's own
  selection (possibly empty), each with its class's map.
* ``shared`` (EZ-VSL, references): the one map stands for every sounding class, and no other class
  is selected. ``slots`` (Mix-and-Localize): each sounding class gets the slot matched to its source
  (as for CAP); a source left without a slot is a miss; no other class is selected. Both readings are
  *favourable* to class-agnostic methods: they are never charged for a false class (they cannot name
  one) and are told which classes sound; only the overlap of one map with several sources costs them
  (every source's pixels are negatives in the other classes' copies of the map).

``semantic_ap`` of each sample is also in the per-source rows (the sample's value on each of its rows).

AVGN's token classifier is also scored: applied to the class-aware audio embedding of every
ground-truth source it should return that source's class (``token_accuracy`` and macro
``token_precision`` / ``token_recall`` / ``token_f1``; :func:`token_confusion` gives the matrix).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from avgn import metrics
from avgn.checkpoint import atomic_write_json, atomic_write_text
from avgn.config import EvalConfig
from avgn.data.config import TASK_SOURCES
from avgn.data.datasets import OnTheFlyMixtureDataset, SceneDataset
from avgn.data.manifest import load_manifest
from avgn.env import git_revision, resolve_device
from avgn.experiment import get_experiment
from avgn.features import CachedFeatureDataset, FeatureStore, collate_samples, compute_features
from avgn.methods import MethodPredictor, get_method, list_methods
from avgn.models.selection import select_sources
from avgn.runs import check_data, load_trained_model

__all__ = [
    "MODES",
    "SetName",
    "list_sets",
    "EvalSet",
    "load_eval_set",
    "is_composed",
    "composed_concat_set",
    "is_negative",
    "negative_set",
    "negative_set_names",
    "NEGATIVE_TASKS",
    "composed_items",
    "Predictor",
    "SetPredictions",
    "predict_set",
    "score_set",
    "evaluate_sets",
    "selection_score",
    "choose_presence_threshold",
    "threshold_for_beta",
    "token_confusion",
    "presence_metrics",
    "selected_classes",
    "PREDICTED_MIN_SOURCES",
    "SELECTION_MIN_SOURCES",
    "evaluate_run",
    "evaluate_reference",
    "collect_results",
    "example_maps",
    "CALIBRATION_SPLIT",
    "Detection",
    "detection_scores",
    "choose_detection_threshold",
    "calibrate_detection",
    "reported",
    "score_negative",
    "evaluate_negative",
]

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
# evaluation sets
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SetName:
    """``split/task/layout``, e.g. ``test/duet/concat``."""

    split: str
    task: str
    layout: str

    @classmethod
    def parse(cls, name: str) -> "SetName":
        parts = name.split("/")
        if len(parts) != 3:
            raise ValueError(f"evaluation set names are 'split/task/layout' (e.g. 'test/duet/concat'), got {name!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.split}/{self.task}/{self.layout}"

    @property
    def n_sources(self) -> int:
        return TASK_SOURCES[self.task]


_TASK_ORDER = {"solo": 0, "duet": 1, "trio": 2, "quartet": 3}


def list_sets(data_dir: str | Path, split: str | Sequence[str] = "test") -> list[str]:
    """The ``split/task/layout`` groups the manifest holds for ``split`` (one name or several)."""
    splits = [split] if isinstance(split, str) else list(split)
    df = load_manifest(data_dir)
    out = []
    for sp in splits:
        g = df[df["split"] == sp][["task", "layout"]].drop_duplicates()
        keys = sorted(zip(g["task"], g["layout"]), key=lambda tl: (_TASK_ORDER.get(tl[0], 9), tl[1] != "concat", tl[1]))
        out += [f"{sp}/{t}/{l}" for t, l in keys]
    return out


@dataclass
class EvalSet:
    """A loaded evaluation set. ``batches`` is a list (materialised) or a callable yielding batches."""

    name: SetName
    n_items: int
    _batches: list[dict[str, Any]] | Callable[[], Iterable[dict[str, Any]]]
    class_names: tuple[str, ...] = ()

    def batches(self) -> Iterator[dict[str, Any]]:
        src = self._batches
        yield from (src() if callable(src) else src)


_EVAL_KEYS = ("spec", "visual_feats", "image", "labels", "classes", "n_sources", "masks", "offscreen")


def _slim(batch: dict[str, Any]) -> dict[str, Any]:
    out = {k: batch[k] for k in _EVAL_KEYS if k in batch}
    if "visual_feats" in out:
        out["visual_feats"] = out["visual_feats"].to(torch.float16)  # as cached; halves memory
    out["scene_ids"] = [m["scene_id"] for m in batch["meta"]]
    return out


#: Items of a composed ``concat`` set (three or four frames side by side, chapter 5); ``None``: as
#: many as the split's built set of as many sources (:func:`composed_items`).
COMPOSED_ITEMS: int | None = None


def is_composed(name: SetName | str) -> bool:
    """Whether ``name`` is a composed ``concat`` set: ``<split>/trio/concat`` or
    ``<split>/quartet/concat``. The build holds ``concat`` duets only; trios and quartets of frames
    are composed from the split's solo scenes by :func:`composed_concat_set`."""
    sn = SetName.parse(name) if isinstance(name, str) else name
    return sn.layout == "concat" and sn.n_sources > 2


def composed_items(data_dir: str | Path, name: SetName | str) -> int:
    """Default size of composed set ``name``: the number of built ``<split>/<task>/scene`` items
    (200 trios and 200 quartets in the ``cpu`` test split, 4 in ``smoke``'s), else of the split's
    built ``duet/concat`` set, so a composed set is as large as the built sets it is compared with.

    Raises:
        ValueError: the split has neither (name the set and how to give ``n_items``).
    """
    from avgn.data.manifest import load_manifest

    sn = SetName.parse(name) if isinstance(name, str) else name
    m = load_manifest(data_dir, sn.split)
    for task, layout in ((sn.task, "scene"), ("duet", "concat")):
        n = int(((m["task"] == task) & (m["layout"] == layout)).sum())
        if n:
            return n
    raise ValueError(f"{sn}: split {sn.split!r} of {data_dir} has no built {sn.task}/scene or duet/concat set to take the "
                     f"size from; pass n_items (or set avgn.evaluate.COMPOSED_ITEMS)")


def composed_concat_set(data_dir: str | Path, name: SetName | str, spec: Any, n_items: int | None = None, images: bool = True):
    """A deterministic evaluation set of ``n`` solo frames of ``n`` different classes side by side
    (224 x 224·n), their recorded clips mixed with the build's gains and noise settings: item ``i``
    is always the same (seed fixed by the set name), so every method sees the same mixtures. The
    sources keep the scenes' own clips (no resampling), as in the built test sets. ``n_items``
    defaults to :data:`COMPOSED_ITEMS`, or if that is ``None`` to :func:`composed_items` (the size of
    the split's built sets of as many sources); ``images=False``
    leaves the frames undecoded (samples without ``image``, for cached visual features)."""
    import zlib

    sn = SetName.parse(name) if isinstance(name, str) else name
    if not is_composed(sn):
        raise ValueError(f"{sn} is not a composed concat set (use layout 'concat' with task 'trio' or 'quartet')")
    seed = zlib.crc32(str(sn).encode()) % 2**31
    if n_items is None:
        n_items = COMPOSED_ITEMS if COMPOSED_ITEMS is not None else composed_items(data_dir, sn)
    return OnTheFlyMixtureDataset(data_dir, split=sn.split, layout="concat", n_sources=sn.n_sources, seed=seed,
                                  resample_audio=False, length=n_items, spec=spec, max_sources=sn.n_sources, images=images)


#: The built ``scene`` sets whose frames get negative audio (:func:`negative_set`).
NEGATIVE_TASKS: tuple[str, ...] = ("solo", "duet")


def is_negative(name: SetName | str) -> bool:
    """Whether ``name`` is a negative-audio set ``<split>/<task>/<condition>`` (condition ``silence``,
    ``noise`` or ``offscreen``: :mod:`avgn.data.negatives`)."""
    from avgn.data.negatives import CONDITIONS

    sn = SetName.parse(name) if isinstance(name, str) else name
    return sn.layout in CONDITIONS


def negative_set_names(split: str = "test", tasks: Sequence[str] = NEGATIVE_TASKS) -> tuple[str, ...]:
    """The negative-audio sets of ``split``: ``<split>/<task>/<condition>`` for every task of ``tasks``
    and every condition (``test/solo/silence``, ``test/solo/noise``, ``test/solo/offscreen``, ...)."""
    from avgn.data.negatives import CONDITIONS

    return tuple(f"{split}/{t}/{c}" for t in tasks for c in CONDITIONS)


def negative_set(data_dir: str | Path, name: SetName | str, spec: Any):
    """The deterministic negative-audio set ``name`` (``<split>/<task>/<condition>``): the split's built
    ``<task>/scene`` frames with silence, the build's noise alone, or an off-screen class's clip
    (:class:`avgn.data.negatives.NegativeAudioDataset`), seeded by the crc32 of the name, so every
    method hears the same audio."""
    import zlib

    from avgn.data.negatives import NegativeAudioDataset

    sn = SetName.parse(name) if isinstance(name, str) else name
    if not is_negative(sn):
        raise ValueError(f"{sn} is not a negative-audio set (its layout must be silence, noise or offscreen)")
    seed = zlib.crc32(str(sn).encode()) % 2**31
    return NegativeAudioDataset(data_dir, sn.split, sn.task, sn.layout, seed, spec=spec, max_sources=sn.n_sources)


def _set_dataset(data_dir: str | Path, sn: SetName, spec: Any, images: bool = True) -> Any:
    """The dataset of set ``sn``: composed, negative-audio or built."""
    if is_composed(sn):
        return composed_concat_set(data_dir, sn, spec, images=images)
    if is_negative(sn):
        return negative_set(data_dir, sn, spec)
    return SceneDataset(data_dir, split=sn.split, tasks=[sn.task], layouts=[sn.layout], spec=spec, max_sources=sn.n_sources)


def load_eval_set(
    data_dir: str | Path,
    name: str | SetName,
    inputs: Any,
    store: Any = None,
    *,
    max_items: int | None = None,
    materialize: bool = True,
    workers: int | None = None,
) -> EvalSet:
    """Load evaluation set ``name`` with the spectrogram / feature settings of ``inputs``
    (:class:`avgn.experiment.InputConfig`). Composed ``concat`` trios / quartets
    (:func:`is_composed`) and negative-audio sets (:func:`is_negative`) are built on the fly,
    deterministically.

    Args:
        store: a :class:`avgn.features.FeatureStore` if ``inputs.cached_features`` (images are then
            not kept).
        max_items: keep the first ``max_items`` scenes.
        materialize: keep all batches in memory (validation, reused every epoch); otherwise stream
            them from a DataLoader on every pass.
    """
    from torch.utils.data import DataLoader, Subset

    sn = SetName.parse(name) if isinstance(name, str) else name
    ds: Any = _set_dataset(data_dir, sn, inputs.spec, images=not inputs.cached_features)
    class_names = ds.class_names
    if inputs.cached_features:
        if store is None:
            raise ValueError("inputs.cached_features is set: pass the FeatureStore")
        ds = CachedFeatureDataset(ds, store, drop=("image", "audio", "boxes", "gains_db"))
    if max_items is not None and max_items < len(ds):
        ds = Subset(ds, range(max_items))
    workers = inputs.eval_workers if workers is None else workers

    def loader() -> Iterable[dict[str, Any]]:
        dl = DataLoader(ds, batch_size=inputs.eval_batch_size, shuffle=False, num_workers=workers, collate_fn=collate_samples)
        return (_slim(b) for b in dl)

    if materialize:
        return EvalSet(sn, len(ds), list(loader()), class_names)
    return EvalSet(sn, len(ds), loader, class_names)


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


# --------------------------------------------------------------------------------------------------
# runs on disk
# --------------------------------------------------------------------------------------------------
def results_frame(results: dict[str, dict[str, dict[str, float]]], **labels: Any):
    """Long table: one row per (set, mode, metric)."""
    import pandas as pd

    rows = []
    for name, by_mode in results.items():
        sn = SetName.parse(name)
        for mode, summary in by_mode.items():
            for metric, value in summary.items():
                rows.append(dict(labels, set=name, split=sn.split, task=sn.task, layout=sn.layout, mode=mode, metric=metric, value=value))
    return pd.DataFrame(rows)


def _write_eval(out_dir: Path, split_tag: str, payload: dict[str, Any], rows: list[dict[str, Any]], labels: dict[str, Any]) -> dict[str, Path]:
    import pandas as pd

    paths = {
        "json": out_dir / f"eval_{split_tag}.json",
        "csv": out_dir / f"eval_{split_tag}.csv",
        "samples": out_dir / f"eval_{split_tag}_samples.csv",
    }
    atomic_write_text(paths["samples"], pd.DataFrame(rows).to_csv(index=False))
    atomic_write_text(paths["csv"], results_frame(payload["results"], **labels).to_csv(index=False))
    atomic_write_json(paths["json"], payload)  # the JSON last: its presence means the evaluation finished
    return paths


def _split_tag(split: str | Sequence[str]) -> str:
    return split if isinstance(split, str) else "+".join(split)


def evaluate_run(
    run_dir: str | Path,
    split: str | Sequence[str] = "test",
    *,
    sets: Sequence[str] | None = None,
    checkpoint: str = "best",
    data_dir: str | Path | None = None,
    device: str = "auto",
    modes: Sequence[str] = MODES,
    write: bool = True,
    progress: bool = True,
    model_overrides: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    tag: str | None = None,
    min_sources: int = PREDICTED_MIN_SOURCES,
) -> dict[str, Any]:
    """Evaluate a trained run on ``split`` (all its ``task/layout`` sets, or ``sets`` by name).
    ``min_sources``: the ``predicted`` selection keeps at least this many classes (default: it may be
    empty; :data:`SELECTION_MIN_SOURCES` is the rule the presence threshold was chosen with).

    ``tag`` names the output files ``eval_<tag>.*`` (default: the split), e.g. to keep an
    evaluation on chosen ``sets`` apart from the split's full one.

    Loads the run's configuration and its ``best`` (validation-selected) checkpoint, and writes
    ``eval_<split>.json`` / ``.csv`` / ``_samples.csv`` into the run folder (the same library calls
    as the notebooks and ``avgn eval RUN_DIR --split test``).

    ``model_overrides`` scores the trained weights with inference-time changes to the model
    configuration (:func:`avgn.train.load_trained_model`; e.g. EZ-VSL with the object-prior fusion
    ``{"object_prior_alpha": 0.4}``). Such an evaluation is a different variant, so it must be
    written to its own ``out_dir`` (never beside the run's own evaluation).
    """
    run_dir = Path(run_dir)
    if model_overrides and write and out_dir is None:
        raise ValueError(
            f"evaluate_run({run_dir}, model_overrides={model_overrides}): give an out_dir for the modified model's "
            "evaluation, so it does not replace the run's own eval files"
        )
    model, exp, info = load_trained_model(run_dir, checkpoint=checkpoint, device=device, model_overrides=model_overrides)
    if data_dir is not None and info.get("data"):
        check_data(data_dir, exp.profile, expected=info["data"])  # the build it was trained on, nothing else
    data_dir = Path(data_dir) if data_dir is not None else Path(info["data_dir"])
    dev = resolve_device(device)
    names = list(sets) if sets is not None else list_sets(data_dir, split)
    store = _store_for(exp, data_dir, _with_calibration(names), progress=progress, device=device)
    method = get_method(exp.method)
    predictor = MethodPredictor(method, model, dev, bf16=exp.train.bf16, channels_last=exp.train.channels_last)
    threshold = float(info.get("presence_threshold", 0.5))
    ev = _evaluate_names(predictor, data_dir, exp, store, names, modes, threshold, min_sources)
    payload = {
        "method": exp.method,
        "profile": exp.profile,
        "seed": info.get("seed"),
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "checkpoint_epoch": info.get("checkpoint_epoch"),
        "split": _split_tag(split),
        "tag": tag or _split_tag(split),
        "sets": names,
        "git_revision": git_revision(),
        "device": str(dev),
        "seconds": ev["seconds"],
        "items": ev["items"],
        "eval_config": exp.to_dict()["eval"],
        "model_overrides": dict(model_overrides or {}),
        "presence_threshold": threshold,
        "results": ev["results"],
        **({"detection": ev["detection"]} if "detection" in ev else {}),
    }
    if write:
        dest = Path(out_dir) if out_dir is not None else run_dir
        dest.mkdir(parents=True, exist_ok=True)
        payload["files"] = {k: str(v) for k, v in _write_eval(dest, tag or _split_tag(split), payload, ev["rows"], {"method": exp.method, "profile": exp.profile, "seed": info.get("seed")}).items()}
    return payload


def _with_calibration(names: Sequence[str]) -> list[str]:
    """``names``, and the calibration split's own-audio sets when a negative-audio set is among them
    (a class-agnostic method's detection threshold is chosen there: the negative-audio section below), so the
    feature store covers that split too."""
    return list(names) + ([f"{CALIBRATION_SPLIT}/{t}/scene" for t in NEGATIVE_TASKS] if any(is_negative(n) for n in names) else [])


def _evaluate_names(predictor: Predictor, data_dir: Path, exp: Any, store: FeatureStore | None, names: Sequence[str],
                    modes: Sequence[str], presence_threshold: float = 0.5, min_sources: int = PREDICTED_MIN_SOURCES) -> dict[str, Any]:
    """:func:`evaluate_sets` over the built and composed sets of ``names`` and
    :func:`evaluate_negative` over its negative-audio sets, in one result (with the
    method's ``detection`` when there are negative sets)."""
    plain = [n for n in names if not is_negative(n)]
    negative = [n for n in names if is_negative(n)]
    loaded = [load_eval_set(data_dir, n, exp.inputs, store, materialize=False) for n in plain]
    ev = evaluate_sets(predictor, loaded, exp.eval, modes, presence_threshold=presence_threshold, min_sources=min_sources)
    if negative:
        neg = evaluate_negative(predictor, data_dir, exp.inputs, store, negative, exp.eval, modes, presence_threshold, min_sources)
        ev["results"].update(neg["results"])
        ev["rows"] += neg["rows"]
        ev["seconds"] += neg["seconds"]
        ev["items"] += neg["items"]
        ev["detection"] = neg["detection"]
    return ev


def _store_for(exp: Any, data_dir: Path, names: Sequence[str], progress: bool = False, device: str = "auto") -> FeatureStore | None:
    """The feature store of ``exp``'s cached backbone features for the splits of ``names`` (computed
    where missing); None when the experiment reads images."""
    if not exp.inputs.cached_features:
        return None
    splits = sorted({SetName.parse(n).split for n in names})
    compute_features(data_dir, exp.inputs.features, progress=progress, splits=splits, device=device)
    return FeatureStore(data_dir, exp.inputs.features, preload=False)


def reference_predictor(name: str, profile: str, data_dir: str | Path, names: Sequence[str], *, device: str = "auto",
                        progress: bool = False, overrides: dict[str, Any] | None = None) -> tuple[MethodPredictor, Any, FeatureStore | None]:
    """``(predictor, experiment, store)`` of a non-learned reference under ``profile``'s inputs (the
    object prior reads the profile's frozen backbone features: cached when the profile caches them);
    ``overrides`` are dotted :class:`avgn.experiment.Experiment` fields."""
    method = get_method(name)
    if method.learned:
        raise ValueError(f"{name!r} is a learned method; references are {', '.join(list_methods(learned=False))}")
    exp = get_experiment(list_methods(learned=True)[0], profile, **(overrides or {}))  # the profile's inputs and protocol
    dev = resolve_device(device)
    store = _store_for(exp, Path(data_dir), names, progress=progress, device=device)
    model = method.reference_model(exp.inputs, cached_features=store is not None)
    return MethodPredictor(method, model.to(dev) if model is not None else None, dev), exp, store


def evaluate_reference(
    kind: str,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    profile: str = "cpu",
    split: str | Sequence[str] = "test",
    sets: Sequence[str] | None = None,
    device: str = "auto",
    write: bool = True,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """Evaluate a non-learned reference (``centre`` | ``object`` | ``perfect``) like a run; writes
    ``eval_<tag>.*`` (default tag: the split) into ``out_dir``. See :func:`reference_predictor`."""
    data_dir = Path(data_dir)
    check_data(data_dir, profile)
    names = list(sets) if sets is not None else list_sets(data_dir, split)
    predictor, exp, store = reference_predictor(kind, profile, data_dir, _with_calibration(names), device=device, progress=progress,
                                                overrides=overrides)
    ev = _evaluate_names(predictor, data_dir, exp, store, names, MODES)
    payload = {
        "method": kind,
        "profile": profile,
        "seed": None,
        "run_dir": str(out_dir),
        "split": _split_tag(split),
        "tag": tag or _split_tag(split),
        "sets": names,
        "git_revision": git_revision(),
        "device": str(predictor.device),
        "seconds": ev["seconds"],
        "items": ev["items"],
        "eval_config": exp.to_dict()["eval"],
        "results": ev["results"],
        **({"detection": ev["detection"]} if "detection" in ev else {}),
    }
    if write:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        payload["files"] = {k: str(v) for k, v in _write_eval(out, tag or _split_tag(split), payload, ev["rows"], {"method": kind, "profile": profile, "seed": None}).items()}
    return payload


def collect_results(runs_dir: str | Path, split: str = "test"):
    """All ``eval_<split>.csv`` under ``runs_dir`` in one long :class:`pandas.DataFrame`
    (columns ``method, profile, seed, set, split, task, layout, mode, metric, value``)."""
    import pandas as pd

    frames = [pd.read_csv(p) for p in sorted(Path(runs_dir).rglob(f"eval_{split}.csv"))]
    if not frames:
        return pd.DataFrame(columns=["method", "profile", "seed", "set", "split", "task", "layout", "mode", "metric", "value"])
    return pd.concat(frames, ignore_index=True)


def example_maps(
    model: torch.nn.Module,
    exp: Any,
    data_dir: str | Path,
    set_name: str,
    indices: Sequence[int],
    *,
    store: Any = None,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Maps of chosen scenes for figures: the frame, the source masks and, per sounding source, the
    method's map for it (oracle selection; Mix-and-Localize: the matched slot), upsampled to the frame.

    Returns one dict per scene: ``image [3, H, W]``, ``masks [S, H, W]``, ``class_names``,
    ``maps [S, H, W]`` (min-max normalised per map), ``ap [S]``, ``scene_id`` and, for AVGN,
    ``audio_probs [C]`` and ``predicted`` (the predicted classes' names).
    """
    sn = SetName.parse(set_name)
    ds: Any = _set_dataset(data_dir, sn, exp.inputs.spec)
    samples = [ds[i] for i in indices]
    batch = collate_samples([{k: v for k, v in s.items() if k != "audio"} for s in samples])
    if exp.inputs.cached_features:
        compute_features(data_dir, exp.inputs.features, splits=[sn.split], device=device, progress=False)
        if store is None:
            store = FeatureStore(data_dir, exp.inputs.features, preload=False)
        batch["visual_feats"] = torch.stack([store.for_meta(m).float() for m in batch["meta"]])
        images = batch.pop("image")
    else:
        images = batch["image"]
    batch["scene_ids"] = [m["scene_id"] for m in batch["meta"]]
    method = get_method(exp.method)
    pred = MethodPredictor(method, model, resolve_device(device), bf16=exp.train.bf16)(batch)
    p = SetPredictions(
        name=sn, kind=method.kind, maps=pred["maps"], masks=batch["masks"].bool(), classes=batch["classes"].long(),
        labels=batch["labels"], scene_ids=batch["scene_ids"], audio_probs=pred.get("audio_probs"), token_pred=pred.get("token_pred"),
    )
    sm = _source_maps(p, "oracle", 0.5)
    size = tuple(batch["masks"].shape[-2:])
    up = metrics.upsample_maps(sm["maps"].float(), size)
    up = metrics.minmax_normalise(up.reshape(-1, *size)).reshape(up.shape)  # per map
    _, rows = score_set(p, "oracle", exp.eval)
    out = []
    for i, s in enumerate(samples):
        n = int(s["n_sources"])
        item = {
            "scene_id": s["meta"]["scene_id"],
            "image": images[i],
            "masks": s["masks"][:n],
            "class_names": list(s["meta"]["class_names"]),
            "maps": up[i, :n],
            "ap": [r["ap"] for r in rows if r["scene_id"] == s["meta"]["scene_id"]][:n],
        }
        if p.audio_probs is not None:
            probs = p.audio_probs[i]
            item["audio_probs"] = probs
            chosen = (probs >= 0.5).nonzero().flatten().tolist() or [int(probs.argmax())]
            item["predicted"] = [ds.class_names[c] for c in sorted(chosen, key=lambda c: -float(probs[c]))]
        out.append(item)
    return out


# --------------------------------------------------------------------------------------------------
# negative audio: does a method say "nothing sounds in view"? (the sets: negative_set above)
# --------------------------------------------------------------------------------------------------
# Negative-audio evaluation: does a method say "nothing sounds in view" when nothing visible sounds,
# and how much does its map depend on the audio? (issue 30, item 3)
#
# The sets (:func:`avgn.evaluate.negative_set`, :mod:`avgn.data.negatives`) are a split's built solo
# and duet ``scene`` frames with their audio replaced by digital silence, the build's background noise
# alone, or the clip of a class that is not in the frame; they are named ``<split>/<task>/<condition>``
# (``test/solo/silence``, ``test/duet/offscreen``, ...). Every negative set is scored next to the same
# frames with their own audio (``<split>/<task>/scene``), in the long results format of
# :func:`avgn.evaluate.evaluate_sets` (``set, mode, metric, value``).
#
# When does a method report a source?
# -----------------------------------
#
# * ``class_aware`` (AVGN, T-VSL, ...): when its ``predicted`` selection (presence probability
#   ``>=`` the run's presence threshold, possibly empty: :func:`avgn.evaluate.selected_classes`) holds a
#   class. Under silence and noise *any* selected class is a false alarm; under an off-screen sound a
#   selected *visible* class is (selecting the off-screen class is right about the audio and is
#   reported apart, ``offscreen_selected``).
# * class-agnostic (``shared``: EZ-VSL, the references; ``slots``: Mix-and-Localize): they always draw
#   a map and cannot name a class, so they report "a source in view" when a **detection score** — the
#   peak of their map(s), :func:`detection_scores` — reaches a threshold chosen on the *validation*
#   split (:data:`CALIBRATION_SPLIT`): the threshold that best separates the validation frames with
#   their own audio from the same frames under the three negative conditions (largest
#   ``TPR - FPR``, Youden's J; ties: the lowest threshold), :func:`choose_detection_threshold`. A
#   method whose score does not separate them at all (J <= 0: the centre prior's constant peak, the
#   object prior's audio-blind one) has **no usable detection score**: it reports a source in every
#   frame, so its false-alarm rate is 1 (``detection_usable = 0`` and a note in the payload's
#   ``detection``).
#
# Metrics of a negative set (per mode; :func:`score_negative`)
# -----------------------------------------------------------
#
# * ``false_alarm`` — share of frames with a source reported (silence, noise) / a visible class
#   reported (off-screen); the decision is the method's own in both modes (negative audio has no
#   sounding class in view for an oracle to name).
# * ``offscreen_selected`` (class-aware, off-screen only) — share of frames whose selection holds the
#   off-screen class.
# * ``own_detect`` — on the same frames with their own audio, the share where a visible class (a
#   source) is reported: the other side of the trade-off (a threshold that rejects everything has no
#   false alarm).
# * ``visible_ap`` — the AP (CAP for duets) of the map shown against the visible objects' masks
#   (:func:`avgn.evaluate.score_set`'s ``ap`` / ``cap``: ``oracle``: the visible classes' maps;
#   ``predicted``: a visible class's map only when it is selected, else 0; ``shared``: the one map;
#   ``slots``: the matched slot), ``own_visible_ap`` the same with the frames' own audio, and
#   ``visible_ap_drop`` = ``own_visible_ap - visible_ap``: how much the map depends on the audio.
# * ``detect_threshold`` (the presence threshold, or the chosen detection threshold; NaN without a
#   usable score) and ``detection_usable`` (1 / 0).

#: The split whose own-audio and negative-audio frames choose a class-agnostic method's detection
#: threshold (never a test split).
CALIBRATION_SPLIT = "val"


@dataclass(frozen=True)
class Detection:
    """How a class-agnostic method reports "a source in view": ``score >= threshold``.

    Attributes:
        score: what the score is (``"map peak"``).
        threshold: the chosen threshold; NaN when the score is not usable (then every frame reports).
        usable: whether the score separates own audio from negative audio on validation (J > 0).
        tpr / fpr: on the validation items at ``threshold`` (1 / 1 when not usable).
        note: one sentence for the results (why the false-alarm rate is what it is).
    """

    score: str
    threshold: float
    usable: bool
    tpr: float
    fpr: float
    note: str

    def reports(self, scores: Tensor) -> Tensor:
        """``[N]`` bool: the frames of detection ``scores [N]`` that report a source."""
        if not self.usable:
            return torch.ones(scores.shape[0], dtype=torch.bool)
        return scores >= self.threshold


def detection_scores(p: SetPredictions) -> Tensor:
    """``[N]`` float: the peak of every map of each frame (``maps [N, K, h, w]``, all ``K``)."""
    return p.maps.flatten(1).amax(1).float()


def choose_detection_threshold(own: Tensor, negative: Tensor, score: str = "map peak") -> Detection:
    """The threshold on detection scores that best separates ``own [P]`` (frames with their own audio:
    a source should be reported) from ``negative [Q]`` (negative audio: none should): the largest
    ``TPR - FPR`` over every observed score value (``score >= t`` reports), ties to the lowest ``t``.
    J <= 0 (no value separates them, e.g. a score that ignores the audio): not usable.
    """
    if own.numel() == 0 or negative.numel() == 0:
        raise ValueError(f"choosing a detection threshold needs own-audio and negative items, got {own.numel()} and {negative.numel()}")
    own, negative = own.double().flatten(), negative.double().flatten()
    cand = torch.unique(torch.cat([own, negative]))  # sorted ascending
    tpr = (own[None, :] >= cand[:, None]).double().mean(1)
    fpr = (negative[None, :] >= cand[:, None]).double().mean(1)
    j = tpr - fpr
    best = int(torch.argmax(j))  # the first maximum: the lowest threshold
    if float(j[best]) <= 1e-12:
        return Detection(score, math.nan, False, 1.0, 1.0,
                         f"its {score} does not separate validation frames with their own audio from negative audio "
                         f"(best TPR - FPR = {float(j[best]):.3f}): no usable detection score, a source is reported in every frame "
                         f"(false-alarm rate 1)")
    t = float(cand[best])
    return Detection(score, t, True, float(tpr[best]), float(fpr[best]),
                     f"a source is reported when its {score} >= {t:.4g} (chosen on validation: TPR {float(tpr[best]):.3f}, "
                     f"FPR {float(fpr[best]):.3f})")


def reported(p: SetPredictions, presence_threshold: float = 0.5, min_sources: int = PREDICTED_MIN_SOURCES,
             detection: Detection | None = None, visible_only: bool = False) -> Tensor:
    """``[N]`` bool: the frames of ``p`` where the method reports a source. Class-aware: its
    ``predicted`` selection holds a class (``visible_only``: one of the frame's visible classes
    ``p.classes``); class-agnostic: ``detection`` reports (it cannot name a class)."""
    if p.kind == "class_aware":
        if p.audio_probs is None:
            raise ValueError(f"{p.name}: class-aware predictions without audio presence probabilities")
        sel = selected_classes(p.audio_probs, presence_threshold, min_sources)  # [N, C]
        if not visible_only:
            return sel.any(1)
        return torch.gather(sel, 1, p.classes.clamp_min(0)).logical_and(p.classes >= 0).any(1)
    if detection is None:
        raise ValueError(f"{p.name}: a {p.kind} method reports a source through a detection threshold; pass detection")
    return detection.reports(detection_scores(p))


def _same_frames(neg: SetPredictions, own: SetPredictions) -> None:
    if neg.scene_ids != own.scene_ids or not torch.equal(neg.classes, own.classes):
        raise ValueError(f"{neg.name} and {own.name} are not the same frames in the same order")


def score_negative(neg: SetPredictions, own: SetPredictions, mode: str = "oracle", cfg: EvalConfig = EvalConfig(),
                   presence_threshold: float = 0.5, min_sources: int = PREDICTED_MIN_SOURCES,
                   detection: Detection | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics of negative set ``neg`` next to ``own``, the same frames with their own audio (see the
    module docstring): ``(summary, per-source rows)``. ``detection``: a class-agnostic method's
    (:func:`calibrate_detection`); ignored for class-aware ones."""
    _same_frames(neg, own)
    condition = SetName.parse(str(neg.name)).layout
    key = primary_metric(neg.name)
    s_neg, rows = score_set(neg, mode, cfg, presence_threshold, min_sources)
    s_own, own_rows = score_set(own, mode, cfg, presence_threshold, min_sources)
    alarm = reported(neg, presence_threshold, min_sources, detection, visible_only=condition == "offscreen")
    hit = reported(own, presence_threshold, min_sources, detection, visible_only=True)
    summary = {
        "false_alarm": float(alarm.float().mean()),
        "own_detect": float(hit.float().mean()),
        "visible_ap": float(s_neg[key]),
        "own_visible_ap": float(s_own[key]),
        "visible_ap_drop": float(s_own[key]) - float(s_neg[key]),
    }
    if neg.kind == "class_aware":
        if condition == "offscreen":
            if neg.offscreen is None:
                raise ValueError(f"{neg.name}: predictions without the off-screen classes (predict a negative_set)")
            sel = selected_classes(neg.audio_probs, presence_threshold, min_sources)  # type: ignore[arg-type]
            summary["offscreen_selected"] = float(torch.gather(sel, 1, neg.offscreen.clamp_min(0)[:, None])[:, 0].float().mean())
        summary.update(detect_threshold=float(presence_threshold), detection_usable=1.0)
    else:
        assert detection is not None
        summary.update(detect_threshold=float(detection.threshold), detection_usable=float(detection.usable))
    score = detection_scores(neg).tolist()
    index = {sid: i for i, sid in enumerate(neg.scene_ids)}
    for r, o in zip(rows, own_rows):
        i = index[r["scene_id"]]
        r.update(condition=condition, own_ap=o["ap"], reported=bool(alarm[i]), own_reported=bool(hit[i]), detect_score=score[i])
    return summary, rows


def _own_name(name: SetName | str) -> str:
    sn = SetName.parse(name) if isinstance(name, str) else name
    return f"{sn.split}/{sn.task}/scene"


def calibrate_detection(predictor: Predictor, data_dir: str | Path, inputs: Any, store: Any = None,
                        split: str = CALIBRATION_SPLIT, tasks: Sequence[str] = NEGATIVE_TASKS) -> Detection:
    """A class-agnostic method's detection threshold (:func:`choose_detection_threshold`) from
    ``split``'s built ``<task>/scene`` frames with their own audio against the same frames under every
    negative condition, pooled over ``tasks`` (those the split has)."""
    from avgn.data.manifest import load_manifest

    m = load_manifest(data_dir, split)
    have = [t for t in tasks if ((m["task"] == t) & (m["layout"] == "scene")).any()]
    if not have:
        raise ValueError(f"split {split!r} of {data_dir} has no built {'/'.join(tasks)} scene frames to choose a detection threshold on")
    own, neg = [], []
    for t in have:
        own.append(detection_scores(predict_set(predictor, load_eval_set(data_dir, f"{split}/{t}/scene", inputs, store, materialize=False))))
        for n in negative_set_names(split, (t,)):
            neg.append(detection_scores(predict_set(predictor, load_eval_set(data_dir, n, inputs, store, materialize=False))))
    return choose_detection_threshold(torch.cat(own), torch.cat(neg))


def evaluate_negative(predictor: Predictor, data_dir: str | Path, inputs: Any, store: Any, names: Sequence[str],
                      cfg: EvalConfig = EvalConfig(), modes: Sequence[str] = MODES, presence_threshold: float = 0.5,
                      min_sources: int = PREDICTED_MIN_SOURCES, detection: Detection | None = None) -> dict[str, Any]:
    """Predict and score the negative-audio sets ``names`` next to their frames' own audio (each own
    set predicted once). A class-agnostic method's ``detection`` is chosen on
    :data:`CALIBRATION_SPLIT` unless given. Modes a method does not support are copied from
    ``oracle``, as in :func:`avgn.evaluate.evaluate_sets`.

    Returns ``{"results": {set: {mode: summary}}, "rows": [...], "seconds": s, "items": n,
    "detection": {...}}`` (``detection``: how the method reports a source, with a note)."""
    t0 = time.perf_counter()
    bad = [n for n in names if not is_negative(n)]
    if bad:
        raise ValueError(f"not negative-audio sets: {', '.join(map(str, bad))}")
    if predictor.kind != "class_aware" and detection is None:
        detection = calibrate_detection(predictor, data_dir, inputs, store)
    own: dict[str, SetPredictions] = {}
    results: dict[str, dict[str, dict[str, float]]] = {}
    rows: list[dict[str, Any]] = []
    items = 0
    for name in names:
        on = _own_name(name)
        if on not in own:
            own[on] = predict_set(predictor, load_eval_set(data_dir, on, inputs, store, materialize=False))
        p = predict_set(predictor, load_eval_set(data_dir, name, inputs, store, materialize=False))
        items += len(p.scene_ids)
        res: dict[str, dict[str, float]] = {}
        for mode in modes:
            if mode not in predictor.method.modes and "oracle" in res:
                res[mode] = dict(res["oracle"])
                rows += [dict(r, mode=mode) for r in rows if r["set"] == str(name) and r["mode"] == "oracle"]
                continue
            res[mode], r = score_negative(p, own[on], mode, cfg, presence_threshold, min_sources, detection)
            rows += r
        results[str(name)] = res
    if predictor.kind == "class_aware":
        info = {"score": "presence probability", "threshold": float(presence_threshold), "usable": True,
                "note": f"a source is reported when a class's presence probability >= {presence_threshold:g} (the run's threshold)"}
    else:
        assert detection is not None
        info = asdict(detection)
    return {"results": results, "rows": rows, "seconds": time.perf_counter() - t0, "items": items, "detection": info}
