"""Evaluation engine: every method and reference through one code path, on any (split, task, layout).

The package, one job per module: :mod:`~avgn.evaluate.sets` (naming and loading evaluation sets),
:mod:`~avgn.evaluate.scoring` (predictions of a set, source selection and scores),
:mod:`~avgn.evaluate.negative` (negative audio: does a method say "nothing sounds in view"?),
:mod:`~avgn.evaluate.run_eval` (evaluating a run or a reference on disk) and
:mod:`~avgn.evaluate.figures` (example maps for figures). Everything public is importable from
``avgn.evaluate``.

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


from avgn.evaluate.figures import example_maps
from avgn.evaluate.negative import (
    CALIBRATION_SPLIT,
    Detection,
    calibrate_detection,
    choose_detection_threshold,
    detection_scores,
    evaluate_negative,
    reported,
    score_negative,
)
from avgn.evaluate.run_eval import collect_results, eval_feature_store, evaluate_reference, evaluate_run, reference_predictor, results_frame
from avgn.evaluate.scoring import (
    EVAL_VERSION,
    MODES,
    PREDICTED_MIN_SOURCES,
    SELECTION_MIN_SOURCES,
    THRESHOLD_GRID,
    Predictor,
    SetPredictions,
    choose_presence_threshold,
    evaluate_sets,
    predict_set,
    presence_metrics,
    primary_metric,
    score_set,
    selected_classes,
    selection_score,
    threshold_for_beta,
    token_confusion,
)
from avgn.evaluate.sets import (
    NEGATIVE_TASKS,
    EvalSet,
    SetName,
    composed_concat_set,
    composed_items,
    is_composed,
    is_negative,
    list_sets,
    load_eval_set,
    negative_set,
    negative_set_names,
)

__all__ = [
    "MODES", "EVAL_VERSION", "SetName", "list_sets", "EvalSet", "load_eval_set", "is_composed", "composed_concat_set",
    "is_negative", "negative_set", "negative_set_names", "NEGATIVE_TASKS", "composed_items", "Predictor",
    "SetPredictions", "predict_set", "score_set", "primary_metric", "evaluate_sets", "selection_score",
    "choose_presence_threshold", "threshold_for_beta", "THRESHOLD_GRID", "token_confusion", "presence_metrics",
    "selected_classes", "PREDICTED_MIN_SOURCES", "SELECTION_MIN_SOURCES", "evaluate_run", "evaluate_reference",
    "reference_predictor", "results_frame", "collect_results", "eval_feature_store", "example_maps", "CALIBRATION_SPLIT", "Detection",
    "detection_scores", "choose_detection_threshold", "calibrate_detection", "reported", "score_negative",
    "evaluate_negative",
]
