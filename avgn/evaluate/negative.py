"""Negative-audio evaluation: does a method say "nothing sounds in view" when nothing visible sounds,
and how much does its map depend on the audio?

The sets (:func:`avgn.evaluate.negative_set`, :mod:`avgn.data.negatives`) are a split's built solo
and duet ``scene`` frames with their audio replaced by digital silence, the build's background noise
alone, or the clip of a class that is not in the frame; they are named ``<split>/<task>/<condition>``
(``test/solo/silence``, ``test/duet/offscreen``, ...). Every negative set is scored next to the same
frames with their own audio (``<split>/<task>/scene``), in the long results format of
:func:`avgn.evaluate.evaluate_sets` (``set, mode, metric, value``).

When does a method report a source?
-----------------------------------

* ``class_aware`` (AVGN, T-VSL, ...): when its ``predicted`` selection (presence probability
  ``>=`` the run's presence threshold, possibly empty: :func:`avgn.evaluate.selected_classes`) holds a
  class. Under silence and noise *any* selected class is a false alarm; under an off-screen sound a
  selected *visible* class is (selecting the off-screen class is right about the audio and is
  reported apart, ``offscreen_selected``).
* class-agnostic (``shared``: EZ-VSL, the references; ``slots``: Mix-and-Localize): they always draw
  a map and cannot name a class, so they report "a source in view" when a **detection score** — the
  peak of their map(s), :func:`detection_scores` — reaches a threshold chosen on the *validation*
  split (:data:`CALIBRATION_SPLIT`): the threshold that best separates the validation frames with
  their own audio from the same frames under the three negative conditions (largest
  ``TPR - FPR``, Youden's J; ties: the lowest threshold), :func:`choose_detection_threshold`. A
  method whose score does not separate them at all (J <= 0: the centre prior's constant peak, the
  object prior's audio-blind one) has **no usable detection score**: it reports a source in every
  frame, so its false-alarm rate is 1 (``detection_usable = 0`` and a note in the payload's
  ``detection``).

Metrics of a negative set (per mode; :func:`score_negative`)
-----------------------------------------------------------

* ``false_alarm`` — share of frames with a source reported (silence, noise) / a visible class
  reported (off-screen); the decision is the method's own in both modes (negative audio has no
  sounding class in view for an oracle to name).
* ``offscreen_selected`` (class-aware, off-screen only) — share of frames whose selection holds the
  off-screen class.
* ``own_detect`` — on the same frames with their own audio, the share where a visible class (a
  source) is reported: the other side of the trade-off (a threshold that rejects everything has no
  false alarm).
* ``visible_ap`` — the AP (CAP for duets) of the map shown against the visible objects' masks
  (:func:`avgn.evaluate.score_set`'s ``ap`` / ``cap``: ``oracle``: the visible classes' maps;
  ``predicted``: a visible class's map only when it is selected, else 0; ``shared``: the one map;
  ``slots``: the matched slot), ``own_visible_ap`` the same with the frames' own audio, and
  ``visible_ap_drop`` = ``own_visible_ap - visible_ap``: how much the map depends on the audio.
* ``detect_threshold`` (the presence threshold, or the chosen detection threshold; NaN without a
  usable score) and ``detection_usable`` (1 / 0)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from avgn.config import EvalConfig
from avgn.evaluate.scoring import (
    MODES,
    PREDICTED_MIN_SOURCES,
    Predictor,
    SetPredictions,
    predict_set,
    primary_metric,
    score_set,
    selected_classes,
)
from avgn.evaluate.sets import (
    NEGATIVE_TASKS,
    SetName,
    is_negative,
    load_eval_set,
    negative_set_names,
)

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
