"""Does DSOL / T-VSL learn? The diagnosis of chapters 7 and 9 (issue: both scored below a centred Gaussian).

* :func:`solo_scene_outputs` — one trained model's forward outputs on a split's single-source scenes
  (cached features), with the sounding object's mask and class.
* :func:`dsol_stage1_report` — DSOL's stage 1 on those scenes: the AP of its audio-visual map against
  the sounding object (and of the negated map: an inverted map scores higher negated), how much of
  the frame its object region keeps under each region rule, and the purity of K-means on the
  object features under each feature space and region — with the ground-truth region as the
  ceiling of what any map could give the clustering.
* :func:`dsol_audio_report` — DSOL's audio category classifier (the one stage 2 and the predicted
  selection read) on single sounds and on two-source mixtures: is its top class sounding, are both
  sounding classes its top two, and how its probability mass is shared.
* :func:`tvsl_dependence_report` — T-VSL's class features: how much they depend on whether the class
  sounds (cosine between a class feature's mean where it sounds and where it does not; 1 = the
  anchor alone sets it) and the AP of its maps and of their negation.
* :func:`tvsl_loss_controls` — what each of T-VSL's losses can be met by: every term on the same
  scenes as trained, with the anchors shuffled among the classes, and with the audio replaced by
  noise (a term that stays as low under a control does not need what the control took away).

Every number is computed from a trained run folder (``avgn train`` / the run store's checkout);
nothing is typed by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from avgn.clusters import hungarian_mapping, kmeans_dictionary, masked_object_features
from avgn.data.datasets import SceneDataset
from avgn.features import CachedFeatureDataset, FeatureStore, collate_samples
from avgn.methods import get_method
from avgn.methods.base import model_inputs
from avgn.metrics import pixel_average_precision, upsample_maps
from avgn.runs import load_trained_model

__all__ = ["solo_scene_outputs", "dsol_stage1_report", "dsol_audio_report", "tvsl_dependence_report", "tvsl_loss_controls", "LOSS_CONTROLS"]


def _scenes_of_task(exp: Any, data_dir: str | Path, split: str, max_items: int, seed: int = 0, task: str = "solo") -> Any:
    """``split``'s single-source (``task="solo"``; ``"duet"``: two-source) scenes with cached features
    (no images, no waveforms), a seeded random subset of ``max_items`` when there are more."""
    store = FeatureStore(data_dir, exp.inputs.features, preload=False, compute_missing=True)
    n = {"solo": 1, "duet": 2}[task]
    ds = CachedFeatureDataset(SceneDataset(data_dir, split=split, tasks=[task], layouts=["scene"], spec=exp.inputs.spec, max_sources=n),
                              store, drop=("image", "audio"))
    if len(ds) > max_items:
        ds = Subset(ds, torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:max_items].tolist())
    return ds


@torch.no_grad()
def solo_scene_outputs(model: torch.nn.Module, exp: Any, data_dir: str | Path, split: str = "val", max_items: int = 800,
                       keys: tuple[str, ...] = ("av_map", "visual_backbone_feats", "cluster_feats")) -> dict[str, torch.Tensor]:
    """``keys`` of the model's outputs on the first ``max_items`` (a seeded random subset) single-source
    scenes of ``split``, concatenated, plus ``masks [N, H, W]`` (the sounding object) and ``classes [N]``."""
    ds = _scenes_of_task(exp, data_dir, split, max_items)
    acc: dict[str, list[torch.Tensor]] = {k: [] for k in (*keys, "masks", "classes")}
    model.eval()
    for b in DataLoader(ds, batch_size=64, collate_fn=collate_samples):
        out = model(**model_inputs(b, torch.device("cpu")))
        for k in keys:
            acc[k].append(out[k].float())
        acc["masks"].append(b["masks"][:, 0])
        acc["classes"].append(b["classes"][:, 0].long())
    return {k: torch.cat(v) for k, v in acc.items()}


def _purity(feats: torch.Tensor, classes: torch.Tensor, k: int, num_classes: int, seed: int = 0) -> float:
    """Purity of K-means on ``feats`` with ``K`` = the model's ``k`` or, if fewer, the number of
    classes present (a small split cannot fill more clusters than it has classes)."""
    k = max(2, min(k, int(classes.unique().numel())))
    centres, _ = kmeans_dictionary(feats, k, seed=seed)
    assign = (F.normalize(feats, dim=1) @ F.normalize(centres, dim=1).t()).argmax(1)
    return hungarian_mapping(assign, classes, k, num_classes).purity


def _region_mean(feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (feats * weights[:, None]).sum((2, 3)) / weights[:, None].sum((2, 3)).clamp_min(1e-6)


def dsol_stage1_report(run_dir: str | Path, data_dir: str | Path, split: str = "val", max_items: int = 800,
                       model_overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """DSOL stage 1 of ``run_dir`` on ``split``'s single-source scenes (see the module docstring).

    Returns ``map_ap`` / ``map_ap_negated`` (pixel AP of the upsampled ``sigmoid(w cos)`` map against the
    sounding object), ``scale`` (``w``), ``region_fraction_<rule>`` (mean share of the 7 x 7 cells an
    object region keeps: ``absolute`` = map > 0.05, ``relative`` = min-max map > 0.5, both dilated once
    as the public code does, ``own`` = the run's own rule, cut and dilation), and
    ``purity_<features>_<region>`` for ``features`` in {backbone, projection} and ``region`` in
    {absolute, relative, own, gt} (``gt``: the cells at least a quarter covered by the object's mask).
    ``model_overrides``: configuration fields of a run made before they existed (e.g.
    :data:`avgn.methods.dsol.PUBLIC_DESIGN`).
    """
    from avgn.methods.dsol import object_region_maps

    model, exp, _ = load_trained_model(run_dir, device="cpu", model_overrides=model_overrides)
    o = solo_scene_outputs(model, exp, data_dir, split, max_items, keys=("av_map", "visual_backbone_feats", "visual_map_feats"))
    av, masks, classes = o["av_map"], o["masks"], o["classes"]
    up = upsample_maps(av[:, None], tuple(masks.shape[-2:]))[:, 0]
    rep = {"map_ap": float(pixel_average_precision(up, masks).mean()), "map_ap_negated": float(pixel_average_precision(-up, masks).mean()),
           "scale": float(model.scale.detach())}
    cover = F.adaptive_avg_pool2d(masks[:, None].float(), av.shape[-2:])[:, 0]
    gt = (cover > 0.25).float()
    gt[gt.flatten(1).sum(1) == 0] = (cover == cover.flatten(1).amax(1)[:, None, None]).float()[gt.flatten(1).sum(1) == 0]
    cfg = model.cfg
    regions = {"absolute": (object_region_maps(av, "absolute"), 0.05, 1), "relative": (object_region_maps(av, "relative"), 0.5, 1),
               "own": (object_region_maps(av, cfg.region_rule), cfg.region_cut, cfg.dilate)}
    for name, (m, cut, dil) in regions.items():
        rep[f"region_fraction_{name}"] = float((m > cut).float().mean())
    k, c = cfg.k, cfg.num_classes
    for feat_name, feats in (("backbone", o["visual_backbone_feats"]), ("projection", o["visual_map_feats"])):
        for name, (m, cut, dil) in regions.items():
            rep[f"purity_{feat_name}_{name}"] = _purity(masked_object_features(feats, m, cut, dil).feats, classes, k, c)
        rep[f"purity_{feat_name}_gt"] = _purity(_region_mean(feats, gt), classes, k, c)
    return rep


@torch.no_grad()
def dsol_audio_report(run_dir: str | Path, data_dir: str | Path, split: str = "val", max_items: int = 800) -> dict[str, float]:
    """DSOL's audio category classifier of ``run_dir`` (stage 1's head; stage 2's frozen copy of it) on
    ``split``'s single-source and two-source scenes, its clusters read as their mapped classes:
    ``solo_top1`` / ``duet_top1`` (share of scenes whose most probable class sounds),
    ``duet_top2_both`` (share of duets whose two most probable classes are the two that sound),
    ``duet_p1`` / ``duet_p2`` (mean largest and second-largest class probability on duets: a
    classifier that has learned mixtures shares the mass, one that has not puts it on one class)."""
    model, exp, _ = load_trained_model(run_dir, device="cpu")
    method_predict = get_method("dsol").predict
    rep: dict[str, float] = {}
    model.eval()
    for task in ("solo", "duet"):
        probs, labels = [], []
        for b in DataLoader(_scenes_of_task(exp, data_dir, split, max_items, task=task), batch_size=64, collate_fn=collate_samples):
            probs.append(method_predict(model, model(**model_inputs(b, torch.device("cpu"))))["audio_probs"])
            labels.append(b["labels"] > 0.5)
        p, y = torch.cat(probs), torch.cat(labels)
        top = p.argsort(1, descending=True)
        rep[f"{task}_top1"] = float(y.gather(1, top[:, :1]).float().mean())
        if task == "duet":
            rep["duet_top2_both"] = float((y.gather(1, top[:, :2]).sum(1) == 2).float().mean())
            srt = p.sort(1, descending=True).values
            rep["duet_p1"], rep["duet_p2"] = float(srt[:, 0].mean()), float(srt[:, 1].mean())
    return rep


@torch.no_grad()
def tvsl_dependence_report(run_dir: str | Path, data_dir: str | Path, split: str = "val", max_items: int = 800) -> dict[str, float]:
    """T-VSL of ``run_dir`` on ``split``'s single-source scenes: ``dependence_audio`` / ``dependence_visual``
    (mean over classes of the cosine between the class feature's mean over scenes where the class
    sounds and where it does not; 1 = the feature ignores the input), ``map_ap`` / ``map_ap_negated``
    (the sounding class's map against its object), ``text_scale`` (the classification logit scale), and
    where the maps' ceiling is: the same maps read with another query in place of the class-aware audio
    feature — ``map_ap_anchor_query`` (the class's fixed text anchor: what the audio adds over its
    anchor) and ``map_ap_image_query`` (the image class feature: what the image tokens can give)."""
    model, exp, _ = load_trained_model(run_dir, device="cpu")
    o = solo_scene_outputs(model, exp, data_dir, split, max_items, keys=("audio_emb", "visual_emb", "visual_map_feats"))
    classes, masks = o["classes"], o["masks"]
    rep: dict[str, float] = {"text_scale": float(model.scale.detach())}
    for mod in ("audio", "visual"):
        f = F.normalize(o[f"{mod}_emb"], dim=-1)  # [N, C, E]
        cos = []
        for c in classes.unique().tolist():
            on, off = classes == c, classes != c
            if on.any() and off.any():
                cos.append(float(F.cosine_similarity(f[on, c].mean(0), f[off, c].mean(0), dim=0)))
        rep[f"dependence_{mod}"] = sum(cos) / len(cos)
    anchors = model.anchors[None].expand_as(o["audio_emb"])
    for name, query in (("map_ap", o["audio_emb"]), ("map_ap_anchor_query", anchors), ("map_ap_image_query", o["visual_emb"])):
        maps = model.localize({"visual_map_feats": o["visual_map_feats"], "audio_emb": query})  # [N, C, h, w]
        own = maps[torch.arange(len(classes)), classes]
        up = upsample_maps(own[:, None], tuple(masks.shape[-2:]))[:, 0]
        rep[name] = float(pixel_average_precision(up, masks).mean())
        if name == "map_ap":
            rep["map_ap_negated"] = float(pixel_average_precision(-up, masks).mean())
    return rep


#: The controls of :func:`tvsl_loss_controls`, in order.
LOSS_CONTROLS = ("as trained", "anchors shuffled", "audio noise")


@torch.no_grad()
def tvsl_loss_controls(run_dir: str | Path, data_dir: str | Path, split: str = "val", max_items: int = 256, seed: int = 0,
                       permutation: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
    """Every term of T-VSL's loss (:meth:`avgn.methods.tvsl.TVSL.loss`, weights as trained) on the first
    ``max_items`` (seeded subset) single-source scenes of ``split``, under :data:`LOSS_CONTROLS`:

    * ``as trained`` — the scenes as they are;
    * ``anchors shuffled`` — the training classes' anchors permuted among themselves (``permutation``
      over the seen classes, or a seeded random derangement): a term that stays as low is met by
      whichever anchor the pooling was given, not by the class the input holds;
    * ``audio noise`` — each spectrogram replaced by Gaussian noise of its own mean and std: a term
      that stays as low does not need the audio.

    Returns ``{control: {term: mean over batches}}`` with the terms ``img, aud, ml, cnt, feat, loc, total``."""
    model, exp, _ = load_trained_model(run_dir, device="cpu")
    model.eval()
    ds = _scenes_of_task(exp, data_dir, split, max_items, seed)
    seen = model.seen.nonzero().flatten()
    if permutation is None:
        g = torch.Generator().manual_seed(seed)
        permutation = torch.randperm(len(seen), generator=g)
        while len(seen) > 1 and (permutation == torch.arange(len(seen))).any():  # a derangement: no anchor stays
            permutation = torch.randperm(len(seen), generator=g)
    shuffled = model.anchors.clone()
    shuffled[seen] = model.anchors[seen[permutation]]
    sums: dict[str, dict[str, float]] = {c: {} for c in LOSS_CONTROLS}
    n = 0
    gen = torch.Generator().manual_seed(seed)
    for b in DataLoader(ds, batch_size=32, collate_fn=collate_samples):
        inputs = model_inputs(b, torch.device("cpu"))
        spec = inputs["spec"]
        mu, sd = spec.mean(dim=(1, 2, 3), keepdim=True), spec.std(dim=(1, 2, 3), keepdim=True)
        noise = mu + sd * torch.randn(spec.shape, generator=gen)
        runs = {"as trained": model(**inputs), "anchors shuffled": model(**inputs, anchors=shuffled),
                "audio noise": model(**dict(inputs, spec=noise))}
        for control, out in runs.items():
            _, parts = model.loss(out, b["labels"].float())
            for k, v in parts.items():
                sums[control][k] = sums[control].get(k, 0.0) + float(v)
        n += 1
    return {c: {k: v / n for k, v in terms.items()} for c, terms in sums.items()}
