"""Analyses beyond the protocol's summary numbers (chapters 04–06).

* :func:`predict_run` / :func:`predict_reference`: the raw predictions (maps, presence
  probabilities) of a trained run or a non-learned reference on named evaluation sets, kept in
  memory so that they can be re-scored without another forward pass.
* :func:`binarization_sweep`: the same predictions scored under other binarisation rules /
  thresholds (AP does not depend on them; cIoU, IoU@θ, CIoU@θ and AUC do), and
  :func:`ranking_table`: how the order of the methods changes with the rule.
* :func:`class_presence_table`: per scene and class, whether the class sounds, is a visible but
  silent distractor, or is absent, with AVGN's audio presence probability and the peak of the
  class's map — how often a silent distractor gets a confident map.
* :func:`presence_by_sources`: presence precision / recall / F1 and count accuracy by number of
  sources.
* :func:`class_embeddings`: AVGN's class-aware audio and visual embeddings of the sounding sources
  (for t-SNE).
* :func:`verdict_best` / :func:`verdict_margin` / :func:`verdict_beats` / :func:`verdict_summary`:
  claims checked as orderings of mean scores, each difference judged against the seed-to-seed
  standard deviation (:func:`seed_sd`, :func:`beyond_noise`) — chapter 4's verdicts.
* :func:`sources_curves`: mixture metrics against the number of sources, the single-source point on
  the same scale (chapter 5).
* :func:`selection_gap`: where the ``predicted`` selection loses CAP against ``oracle``: exactly the
  oracle AP of the sounding sources it does not select (chapter 2); :func:`presence_rule_table`:
  the presence threshold chosen on validation by F-beta for several ``beta``, scored on test.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avgn.config import EvalConfig
from avgn.data.manifest import load_manifest
from avgn.env import resolve_device
from avgn.evaluate import SetName, SetPredictions, eval_feature_store, load_eval_set, predict_set, reference_predictor, score_set
from avgn.methods import MethodPredictor, get_method, model_inputs
from avgn.methods.avgn import embedding_dependence
from avgn.runs import load_trained_model
from avgnbook.results import read_study_table, stored_seeds, write_study_table

__all__ = [
    "DEFAULT_RULES",
    "binarization_sweep",
    "class_embeddings",
    "embedding_dependence",
    "class_presence_table",
    "mean_std_table",
    "predict_reference",
    "predict_run",
    "presence_summary",
    "ranking_table",
]

#: The binarisation rules of the sensitivity study: ``(rule, value)``; ``top_fraction 0.5`` is the
#: AVGN / EZ-VSL median rule (the book's protocol), ``fixed`` thresholds the min-max normalised map.
DEFAULT_RULES: tuple[tuple[str, float], ...] = (
    ("top_fraction", 0.1), ("top_fraction", 0.25), ("top_fraction", 0.5), ("top_fraction", 0.75),
    ("fixed", 0.3), ("fixed", 0.5), ("fixed", 0.7),
)


def mean_std_table(
    results,
    set_name: str,
    metrics: Sequence[str],
    *,
    rows: Sequence[str] = ("variant", "mode"),
    order: Sequence[str] | None = None,
    scale: float = 100.0,
    digits: int = 1,
):
    """A paper-style table from long results (``variant, seed, set, mode, metric, value``): one
    row per ``rows`` combination, one column per metric, cells ``"mean ± std"`` over seeds
    (``scale``: 100 gives percentages; a single seed shows the mean alone)."""
    sub = results[(results["set"] == set_name) & (results["metric"].isin(metrics))]
    if sub.empty:
        raise ValueError(f"no {list(metrics)} results for set {set_name!r}")
    agg = sub.groupby([*rows, "metric"], sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    agg["cell"] = [
        f"{scale * m:.{digits}f} ± {scale * (0.0 if np.isnan(sd) else sd):.{digits}f}" if c > 1 else f"{scale * m:.{digits}f}"
        for m, sd, c in zip(agg["mean"], agg["std"], agg["count"])
    ]
    out = agg.pivot_table(index=list(rows), columns="metric", values="cell", aggfunc="first", sort=False)
    if order is not None:
        present = set(out.index.get_level_values(0))
        out = out.reindex([o for o in order if o in present], level=0) if out.index.nlevels > 1 else out.reindex([o for o in order if o in present])
    return out[[m for m in metrics if m in out.columns]]


def predict_run(
    run_dir: str | Path,
    sets: Sequence[str],
    *,
    device: str = "auto",
    data_dir: str | Path | None = None,
    model_overrides: dict[str, Any] | None = None,
    checkpoint: str = "best",
) -> dict[str, SetPredictions]:
    """Predictions of a trained run (its ``best`` checkpoint) on each set of ``sets``
    (``{set name: SetPredictions}``; maps ``[N, K, h, w]`` at the model's resolution)."""
    model, exp, info = load_trained_model(run_dir, checkpoint=checkpoint, device=device, model_overrides=model_overrides)
    data = Path(data_dir) if data_dir is not None else Path(info["data_dir"])
    store = eval_feature_store(exp, data, sets, device=device)
    pred = MethodPredictor(get_method(exp.method), model, resolve_device(device), bf16=exp.train.bf16, channels_last=exp.train.channels_last)
    return {n: predict_set(pred, load_eval_set(data, n, exp.inputs, store, materialize=False)) for n in sets}


def predict_reference(kind: str, data_dir: str | Path, sets: Sequence[str], *, profile: str = "cpu", device: str = "auto") -> dict[str, SetPredictions]:
    """Predictions of a non-learned reference (``centre`` | ``object`` | ``perfect``) on ``sets``."""
    pred, exp, store = reference_predictor(kind, profile, data_dir, sets, device=device)
    return {n: predict_set(pred, load_eval_set(Path(data_dir), n, exp.inputs, store, materialize=False)) for n in sets}


# --------------------------------------------------------------------------------------------------
# the protocol's sensitivity to the binarisation rule
# --------------------------------------------------------------------------------------------------
def binarization_sweep(
    preds: Mapping[str, SetPredictions],
    rules: Sequence[tuple[str, float]] = DEFAULT_RULES,
    *,
    mode: str = "oracle",
    base: EvalConfig = EvalConfig(),  # noqa: B008 (frozen)
):
    """Score ``preds`` (``{set: SetPredictions}``) under each ``(rule, value)``: a long
    :class:`pandas.DataFrame` with columns ``set, rule, value, label, metric, score`` (``label`` is
    e.g. ``"top_fraction 0.5"``). Only the binarisation changes; the IoU thresholds stay those of
    ``base`` (0.5 for one source, 0.3 for mixtures)."""
    import pandas as pd

    rows = []
    for name, p in preds.items():
        for rule, value in rules:
            cfg = EvalConfig(mask_size=base.mask_size, binarize_rule=rule, binarize_value=value,
                             iou_threshold_single=base.iou_threshold_single, iou_threshold_multi=base.iou_threshold_multi)
            summary, _ = score_set(p, mode, cfg)
            for metric, score in summary.items():
                if isinstance(score, (int, float)):
                    rows.append({"set": name, "rule": rule, "value": value, "label": f"{rule} {value:g}", "metric": metric, "score": float(score)})
    return pd.DataFrame(rows)


#: The sets of chapter 4's binarisation study and the file the run store keeps of it.
BINARIZATION_SETS = ("test/solo/scene", "test/duet/scene")
BINARIZATION_FILE = "sweep.csv"
#: The non-learned references the study scores beside the runs: ``(kind, label)``.
BINARIZATION_REFERENCES = (("centre", "centre prior"), ("object", "object prior"))


def binarization_study(data_dir: str | Path, out_dir: str | Path, profile: str, seed: int, *,
                       sources: Sequence[tuple[str, str, tuple[tuple[str, Any], ...]]], runs: Mapping[str, Mapping[str, Any]],
                       device: str = "auto") -> None:
    """The run store's ``binarization-study`` (:class:`avgn.store.plan.Study` with ``needs``): the
    predictions of each stored run ``<prefix>/seed<seed>`` of ``sources`` (``(run-key prefix, label,
    inference-time overrides)``) and of :data:`BINARIZATION_REFERENCES` on :data:`BINARIZATION_SETS`,
    scored under every rule of :data:`DEFAULT_RULES` (:func:`binarization_sweep`: one forward pass
    per method, seven scorings); writes ``sweep.csv`` (its long rows with ``method`` and the ``run`` id,
    "" for a reference) into ``out_dir`` — what chapter 4 reads instead of predicting every test scene again."""
    import pandas as pd

    frames = []
    for prefix, label, overrides in sources:
        got = runs[f"{prefix}/seed{seed}"]
        preds = predict_run(got["run_dir"], BINARIZATION_SETS, device=device, data_dir=data_dir, model_overrides=dict(overrides) or None)
        frames.append(binarization_sweep(preds, DEFAULT_RULES).assign(method=label, run=got["id"]))
    for kind, label in BINARIZATION_REFERENCES:
        preds = predict_reference(kind, data_dir, BINARIZATION_SETS, profile=profile, device=device)
        frames.append(binarization_sweep(preds, DEFAULT_RULES).assign(method=label, run=""))
    write_study_table(pd.concat(frames, ignore_index=True), out_dir, BINARIZATION_FILE)


def read_binarization_study(out_dir: str | Path):
    """The long sweep of a :func:`binarization_study` kept in ``out_dir``."""
    return read_study_table(out_dir, BINARIZATION_FILE)


def ranking_table(sweep, metric: str, set_name: str, by: str = "method"):
    """Rank of each ``by`` (1 = best) under every binarisation rule, for one metric and set:
    rows = ``by``, columns = rule labels (in the order they appear)."""
    sub = sweep[(sweep["metric"] == metric) & (sweep["set"] == set_name)]
    if sub.empty:
        raise ValueError(f"no {metric!r} scores for set {set_name!r} in the sweep")
    mean = sub.groupby([by, "label"], sort=False)["score"].mean().unstack("label")
    mean = mean[list(dict.fromkeys(sub["label"]))]
    return mean.rank(ascending=False, method="min").astype(int)


# --------------------------------------------------------------------------------------------------
# sounding, silent-but-visible and absent classes
# --------------------------------------------------------------------------------------------------
def class_presence_table(p: SetPredictions, data_dir: str | Path, class_names: Sequence[str]):
    """Per scene and class of a class-aware (AVGN) prediction: the class's ``role`` (``sounding``,
    ``distractor`` = pasted in the frame but silent, ``absent``), its audio presence probability
    ``presence``, whether predicted selection gives it a map (``selected``: presence >= 0.5 or the
    scene's most probable class), and ``map_peak``: the maximum of its raw map (cosine similarity).

    Returns a :class:`pandas.DataFrame` with one row per (scene, class)."""
    import pandas as pd

    if p.kind != "class_aware" or p.audio_probs is None:
        raise ValueError(f"class_presence_table needs a class-aware prediction with presence probabilities, got kind {p.kind!r}")
    df = load_manifest(data_dir).set_index("scene_id")
    missing = [s for s in p.scene_ids if s not in df.index]
    if missing:
        raise KeyError(f"{len(missing)} scene(s) of {p.name} are not in the manifest of {data_dir} (first: {missing[:3]})")
    index = {c: i for i, c in enumerate(class_names)}
    probs = p.audio_probs.float()
    top = probs.argmax(1)
    peaks = p.maps.float().flatten(2).amax(-1)  # [N, C]
    rows = []
    for i, sid in enumerate(p.scene_ids):
        r = df.loc[sid]
        sounding = {index[c] for c in r["classes"]}
        distract = {index[c] for c in r["distractor_classes"] if c in index} - sounding
        for c in range(probs.shape[1]):
            role = "sounding" if c in sounding else "distractor" if c in distract else "absent"
            pr = float(probs[i, c])
            rows.append({"scene_id": sid, "set": str(p.name), "n_sources": len(sounding), "class": class_names[c], "role": role,
                         "presence": pr, "selected": pr >= 0.5 or int(top[i]) == c, "map_peak": float(peaks[i, c])})
    return pd.DataFrame(rows)


def presence_summary(table):
    """Per set and role: the share of classes that predicted selection gives a map (``selected``),
    the mean presence probability and the mean map peak (from :func:`class_presence_table`)."""
    g = table.groupby(["set", "n_sources", "role"])
    out = g.agg(share_selected=("selected", "mean"), mean_presence=("presence", "mean"), mean_map_peak=("map_peak", "mean"), pairs=("selected", "size"))
    return out.reset_index()


# --------------------------------------------------------------------------------------------------
# class-aware embeddings
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def _class_aware_outputs(run_dir: str | Path, sets: Sequence[str], device: str, max_items: int | None):
    """Yield ``(audio_emb [B, C, D], visual_emb [B, C, D], batch, class names, data dir)`` of a
    class-aware run over ``sets`` (CPU float tensors)."""
    model, exp, info = load_trained_model(run_dir, device=device)
    if get_method(exp.method).kind != "class_aware":
        raise ValueError(f"class-aware embeddings need a class-aware run (e.g. AVGN), {run_dir} is a {exp.method!r} run")
    dev = resolve_device(device)
    data = Path(info["data_dir"])
    store = eval_feature_store(exp, data, sets, device=device)
    for n in sets:
        es = load_eval_set(data, n, exp.inputs, store, materialize=False, max_items=max_items)
        for batch in es.batches():
            out = model(**model_inputs(batch, dev))
            yield out["audio_emb"].float().cpu(), out["visual_emb"].float().cpu(), batch, es.class_names, data


@torch.no_grad()
def class_embeddings(run_dir: str | Path, sets: Sequence[str], *, device: str = "auto", max_items: int | None = None, all_classes: bool = False):
    """AVGN's class-aware embeddings of every sounding source of ``sets``: for a source of class
    ``c``, the audio embedding ``g^a_c`` and the visual embedding ``g^v_c`` of its scene.

    Returns ``(audio [M, D], visual [M, D], labels [M])`` as numpy arrays (``labels``: class ids)
    and the class names. With ``all_classes=True`` it returns every class's embeddings of every
    scene instead: ``(audio [N, C, D], visual [N, C, D], sounding [N, C] bool)`` and the names —
    to ask how much an embedding depends on whether its class sounds (:func:`embedding_dependence`)."""
    auds, viss, labs = [], [], []
    names: Sequence[str] = ()
    for ga, gv, batch, names, _ in _class_aware_outputs(run_dir, sets, device, max_items):
        if all_classes:
            auds.append(ga)
            viss.append(gv)
            labs.append(batch["labels"].bool())
            continue
        cls = batch["classes"].long()
        b, s = torch.nonzero(cls >= 0, as_tuple=True)
        c = cls[b, s]
        auds.append(ga[b, c])
        viss.append(gv[b, c])
        labs.append(c)
    if not labs:
        raise ValueError(f"no sounding sources in {list(sets)}")
    return torch.cat(auds).numpy(), torch.cat(viss).numpy(), torch.cat(labs).numpy(), list(names)


@torch.no_grad()
def embedding_roles(run_dir: str | Path, sets: Sequence[str], *, device: str = "auto", max_items: int | None = None):
    """Every class's audio and visual class-aware embeddings in every scene of ``sets``, with the
    class's role in the scene from the manifest (:data:`avgn.methods.avgn.SOUNDING`, ``VISIBLE_SILENT``
    = pasted in the frame but silent, ``ABSENT``): ``(audio [N, C, D], visual [N, C, D], roles [N, C]
    int8, names)``, for :func:`avgn.methods.avgn.embedding_dependence_by_role`."""
    from avgn.methods.avgn import ABSENT, SOUNDING, VISIBLE_SILENT

    auds, viss, scene_ids = [], [], []
    names: Sequence[str] = ()
    data = None
    for ga, gv, batch, names, data in _class_aware_outputs(run_dir, sets, device, max_items):
        auds.append(ga)
        viss.append(gv)
        scene_ids += list(batch["scene_ids"])
    if data is None:
        raise ValueError(f"no scenes in {list(sets)}")
    sounding, distractor = roles_of_scenes(scene_ids, data, names, what=", ".join(sets))
    roles = torch.full(tuple(sounding.shape), ABSENT, dtype=torch.int8)
    roles[distractor] = VISIBLE_SILENT
    roles[sounding] = SOUNDING
    return torch.cat(auds).numpy(), torch.cat(viss).numpy(), roles.numpy(), list(names)


# --------------------------------------------------------------------------------------------------
# verdicts on claims: orderings of mean scores, judged against seed-to-seed noise
# --------------------------------------------------------------------------------------------------
def cell_mean(df, variant: str, set_name: str, metric: str, mode: str = "oracle") -> float:
    """Mean ``value`` of ``variant`` on one (set, metric, mode) cell of a long results table (over seeds)."""
    sel = df[(df["variant"] == variant) & (df["set"] == set_name) & (df["metric"] == metric) & (df["mode"] == mode)]
    return float(sel["value"].mean()) if len(sel) else math.nan


def seed_sd(df, variant: str, set_name: str, metric: str, mode: str = "oracle") -> float:
    """Sample standard deviation over seeds of ``variant``'s per-seed mean on one cell (NaN with one seed):
    the noise a difference between variants must exceed to count."""
    sel = df[(df["variant"] == variant) & (df["set"] == set_name) & (df["metric"] == metric) & (df["mode"] == mode)]
    per_seed = sel.groupby("seed")["value"].mean()
    return float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan


def beyond_noise(diff: float, sd: float, k: float = 2.0) -> str:
    """``yes`` when ``|diff| > k * sd``, ``no`` otherwise, ``n/a (one seed)`` without an sd."""
    if math.isnan(sd):
        return "n/a (one seed)"
    return "yes" if abs(diff) > k * sd else "no"


def compare_seeds(df, a: str, b: str, set_name: str, metric: str, mode_a: str = "oracle", mode_b: str | None = None,
                  k: float = 2.0) -> dict[str, Any]:
    """``a`` against ``b`` on one cell of a long results table, paired by seed where both have the
    seed (a reference without seeds, ``seed = -1``, is a constant): their means, the mean difference
    ``diff`` (a - b), the sample sd of the per-seed differences (of ``a``'s seeds against a constant),
    the margin ``diff / sd`` and the verdict: ``above`` / ``below`` when ``|diff| > k sd`` with at
    least 3 seeds, ``within noise`` otherwise (the book's rule for a claim)."""
    mode_b = mode_b or mode_a

    def per_seed(v: str, mode: str):
        sel = df[(df["variant"] == v) & (df["set"] == set_name) & (df["metric"] == metric) & (df["mode"] == mode)]
        return sel.groupby("seed")["value"].mean()

    x, y = per_seed(a, mode_a), per_seed(b, mode_b)
    if len(y) == 1 and y.index[0] == -1:  # a reference: one value for every seed
        d = x - float(y.iloc[0])
    elif len(x) == 1 and x.index[0] == -1:
        d = float(x.iloc[0]) - y
    else:
        d = (x - y).dropna()
    n = len(d)
    diff = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    margin = diff / sd if sd and not math.isnan(sd) else (math.inf if n > 1 and diff else math.nan)
    verdict = ("above" if diff > 0 else "below") if n >= 3 and abs(diff) > k * (0.0 if math.isnan(sd) else sd) else "within noise"
    return {"a": a, "b": b, "set": set_name, "metric": metric, "mean_a": float(x.mean()) if len(x) else math.nan,
            "mean_b": float(y.mean()) if len(y) else math.nan, "diff": diff, "sd": sd, "margin_sd": margin, "seeds": n, "verdict": verdict}


__all__.append("compare_seeds")


def say(c: Mapping[str, Any], scale: float = 100.0) -> str:
    """One phrase for a :func:`compare_seeds` result: ``52.7 against 55.3 (-2.6 points, 3.1 sd: below)``."""
    sd = "" if math.isnan(c["margin_sd"]) else f", {abs(c['margin_sd']):.1f} sd" if math.isfinite(c["margin_sd"]) else ", every seed alike"
    return (f"{scale * c['mean_a']:.1f} against {scale * c['mean_b']:.1f} ({scale * c['diff']:+.1f} points{sd}: "
            f"{c['verdict'] if c['verdict'] == 'within noise' else c['verdict'] + ', beyond 2 sd'})")


__all__.append("say")


Cell = tuple[str, str]  # (set, metric)


def verdict_best(df, claim: str, expected: str, candidates: Sequence[str], cells: Sequence[Cell], noise: Mapping[Cell, float],
                 mode: str = "oracle") -> list[dict[str, Any]]:
    """One row per cell: does ``expected`` have the best mean among ``candidates``? (margin: best
    minus runner-up)."""
    rows = []
    for set_name, metric in cells:
        scores = {c: cell_mean(df, c, set_name, metric, mode) for c in candidates}
        best = max(scores, key=lambda c: scores[c])
        runner_up = max((v for c, v in scores.items() if c != best), default=scores[best])
        rows.append({"claim": claim, "evidence": f"{set_name} {metric}: best is {best} ({100 * scores[best]:.1f}); {expected}: {100 * scores[expected]:.1f}",
                     "holds": best == expected, "beyond seed noise (> 2 sd)": beyond_noise(scores[best] - runner_up, noise.get((set_name, metric), math.nan))})
    return rows


def verdict_margin(df, claim: str, a: str, b: str, min_margin: float, cells: Sequence[Cell], noise: Mapping[Cell, float],
                   mode: str = "oracle") -> list[dict[str, Any]]:
    """One row per cell: does ``a`` beat ``b`` by at least ``min_margin`` (a fraction)?"""
    rows = []
    for set_name, metric in cells:
        x, y = cell_mean(df, a, set_name, metric, mode), cell_mean(df, b, set_name, metric, mode)
        rows.append({"claim": claim, "evidence": f"{set_name} {metric}: {100 * x:.1f} vs {100 * y:.1f} (margin {100 * (x - y):+.1f})",
                     "holds": x - y >= min_margin, "beyond seed noise (> 2 sd)": beyond_noise(x - y, noise.get((set_name, metric), math.nan))})
    return rows


def verdict_beats(df, claim: str, a: str, rivals: Sequence[str], cells: Sequence[Cell], noise: Mapping[Cell, float], rival_df=None,
                  mode: str = "oracle", rival_mode: str | None = None) -> list[dict[str, Any]]:
    """One row per cell: does ``a`` (selection ``mode``) beat the best of ``rivals`` (read from
    ``rival_df``, default ``df``; selection ``rival_mode``, default ``mode``)?"""
    rival_df = df if rival_df is None else rival_df
    rows = []
    for set_name, metric in cells:
        x = cell_mean(df, a, set_name, metric, mode)
        others = {r: cell_mean(rival_df, r, set_name, metric, rival_mode or mode) for r in rivals}
        best = max(others, key=lambda r: others[r])
        rows.append({"claim": claim, "evidence": f"{set_name} {metric}: {a} {100 * x:.1f} vs {best} {100 * others[best]:.1f}",
                     "holds": x > others[best], "beyond seed noise (> 2 sd)": beyond_noise(x - others[best], noise.get((set_name, metric), math.nan))})
    return rows


def verdict_summary(rows: Sequence[Mapping[str, Any]]):
    """Per claim, the book's rule (a difference counts only beyond two seed standard deviations):
    ``reproduces`` (holds on every cell, beyond noise on every cell), ``does not reproduce`` (fails on
    every cell, beyond noise on every cell), ``within noise`` (no cell beyond noise), otherwise
    :func:`avgnbook.findings.mixed_verdict` with the cells counted (above / within noise / below)."""
    import pandas as pd

    from avgnbook.findings import mixed_verdict

    df = pd.DataFrame(list(rows))

    def classify(g) -> str:
        beyond = g["beyond seed noise (> 2 sd)"].eq("yes")
        if beyond.all() and g["holds"].all():
            return "reproduces"
        if beyond.all() and not g["holds"].any():
            return "does not reproduce"
        if not beyond.any():
            return "within noise"
        return mixed_verdict(int((beyond & g["holds"]).sum()), int((~beyond).sum()), int((beyond & ~g["holds"]).sum()))

    s = df.groupby("claim", sort=False)["holds"].agg(["all", "any"])
    s["verdict"] = [classify(df[df["claim"] == c]) for c in s.index]
    return s


# --------------------------------------------------------------------------------------------------
# scores against the number of sources (chapter 5)
# --------------------------------------------------------------------------------------------------
def sources_curves(res, rows, selecting: Collection[str] = (), metrics: Sequence[str] = ("cap", "piap", "ciou@0.3"), iou: float = 0.3):
    """Mixture metrics against the number of sources, one line per method (and mode).

    ``res``: long results (``variant, seed, set, mode, metric, value``); ``rows``: the per-source rows
    (``eval_*_samples``: ``ap``, ``ciou``) from which the single-source points are put on the mixture
    metrics' scale (CAP = PIAP = the AP of the map; CIoU@``iou`` = the share of sources whose cIoU
    reaches ``iou``). Variants in ``selecting`` (methods that select their sources themselves) get one
    line per mode (``"<variant> · <mode>"``); the others one line (their modes are identical).
    Returns a long frame with ``n_sources`` and ``layout`` columns added."""
    import pandas as pd

    parts = res[["variant", "seed", "set", "mode", "metric", "value"]]
    parts = parts[parts["metric"].isin(metrics)]
    solo = rows[rows["set"].map(lambda s: SetName.parse(s).n_sources == 1)]
    per = solo.groupby(["variant", "seed", "set", "mode"]).agg(ap=("ap", "mean"), c=("ciou", lambda x: float(np.mean(np.asarray(x) >= iou))))
    per = per.reset_index()
    extra = [per.assign(metric=m, value=per["ap"]) for m in ("cap", "piap") if m in metrics]
    extra += [per.assign(metric=f"ciou@{iou:g}", value=per["c"])] if f"ciou@{iou:g}" in metrics else []
    out = pd.concat([parts, *[e[parts.columns] for e in extra]], ignore_index=True)
    names = out["set"].map(SetName.parse)
    out["n_sources"] = names.map(lambda n: n.n_sources)
    out["layout"] = names.map(lambda n: n.layout)
    sel = out["variant"].isin(set(selecting))
    out["method"] = np.where(sel, out["variant"] + " · " + out["mode"], out["variant"])
    return out[sel | (out["mode"] == "oracle")].reset_index(drop=True)


__all__ += ["cell_mean", "seed_sd", "beyond_noise", "verdict_best", "verdict_margin", "verdict_beats", "verdict_summary", "sources_curves"]


# --------------------------------------------------------------------------------------------------
# silent objects (chapter 7)
# --------------------------------------------------------------------------------------------------
def scene_roles(p: SetPredictions, data_dir: str | Path, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sounding [N, C], distractor [N, C])`` bool of a prediction's scenes from the manifest:
    a distractor is a class pasted in the frame that does not sound."""
    return roles_of_scenes(p.scene_ids, data_dir, class_names, what=str(p.name))


def roles_of_scenes(scene_ids: Sequence[str], data_dir: str | Path, class_names: Sequence[str], what: str = "the set") -> tuple[torch.Tensor, torch.Tensor]:
    """``(sounding [N, C], distractor [N, C])`` bool of ``scene_ids`` from the manifest of
    ``data_dir``; a composed frame (``"<id>+<id>"``, scenes side by side) takes the union of its
    scenes, a class sounding in one of them being no distractor. ``KeyError`` for a scene the
    manifest does not hold."""
    df = load_manifest(data_dir).set_index("scene_id")
    index = {c: i for i, c in enumerate(class_names)}
    sounding = torch.zeros(len(scene_ids), len(class_names), dtype=torch.bool)
    distractor = torch.zeros_like(sounding)
    for i, sid in enumerate(scene_ids):
        for part in [sid] if sid in df.index else str(sid).split("+"):
            if part not in df.index:
                raise KeyError(f"scene {sid} of {what} is not in the manifest of {data_dir}")
            r = df.loc[part]
            for c in r["classes"]:
                sounding[i, index[c]] = True
            for c in r["distractor_classes"]:
                if c in index:
                    distractor[i, index[c]] = True
    return sounding, distractor & ~sounding


def silent_object_metrics(p: SetPredictions, data_dir: str | Path, class_names: Sequence[str], mode: str = "oracle",
                          presence_threshold: float = 0.5, nsa_threshold: float = 0.2) -> dict[str, float]:
    """How a class-aware method treats objects that are seen but not heard, on one set.

    The maps of a scene are min-max normalised *together* (all classes share the scene's scale, so
    a silent class's map is judged against the sounding ones; any method's maps land in [0, 1]).
    With ``mode="predicted"`` a class the method does not select has no map (zeros: nothing lights
    up), as in the protocol. Returns ``nsa_distractors`` (NSA over visible silent distractors only),
    ``nsa_all`` (over every non-sounding class, absent ones included: the published variant),
    ``false_alarm`` (:func:`avgn.clusters.false_alarm_rate`) and the pair counts."""
    from avgn.clusters import false_alarm_rate, nsa
    from avgn.models.selection import select_sources

    if p.kind != "class_aware":
        raise ValueError(f"silent-object metrics need per-class maps (a class-aware method), got kind {p.kind!r}")
    sounding, distractor = scene_roles(p, data_dir, class_names)
    maps = p.maps.float()
    lo = maps.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = maps.flatten(1).amax(1).view(-1, 1, 1, 1)
    maps = (maps - lo) / (hi - lo).clamp_min(1e-12)
    if mode == "predicted":
        if p.audio_probs is None:
            raise ValueError("predicted mode needs presence probabilities")
        _, cls, ok = select_sources(p.maps, "predicted", audio_probs=p.audio_probs, threshold=presence_threshold)
        keep = torch.zeros_like(sounding)
        for i in range(len(cls)):
            keep[i, cls[i][ok[i]]] = True
        maps = maps * keep[:, :, None, None]
    peaks = maps.flatten(2).amax(-1)
    return {"nsa_distractors": nsa(maps, distractor, nsa_threshold), "nsa_all": nsa(maps, ~sounding, nsa_threshold),
            "false_alarm": false_alarm_rate(peaks, sounding, distractor), "distractor_pairs": int(distractor.sum()),
            "silent_pairs": int((~sounding).sum())}


__all__ += ["scene_roles", "roles_of_scenes", "silent_object_metrics"]

#: Chapter 7's silent-object study: the sets, the metrics kept and the file the run store keeps.
SILENT_SETS = ("test/duet/scene", "test/trio/scene", "test/quartet/scene")
SILENT_METRICS = ("nsa_distractors", "nsa_all", "false_alarm")
SILENT_STUDY_FILE = "silent.csv"


def silent_object_study(data_dir: str | Path, out_dir: str | Path, profile: str, seed: int, *,
                        sources: Sequence[tuple[str, str, str]], runs: Mapping[str, Mapping[str, Any]], device: str = "auto") -> None:
    """The run store's ``silent-objects`` study (:class:`avgn.store.plan.Study` with ``needs``):
    :func:`silent_object_metrics` of every stored seed of each of ``sources`` (``(run-key prefix,
    label, method)``; the seeds are those of ``runs``' keys) on :data:`SILENT_SETS`, with the ground-truth
    classes and with the classes each run hears (at its stored presence threshold); writes
    ``silent.csv``, long rows ``variant, method, seed, run, set, mode, metric, value``."""
    import pandas as pd

    from avgn.runs import load_run, run_presence_threshold

    rows = []
    for prefix, label, method in sources:
        for s, got in stored_seeds(runs, prefix):
            names = load_run(got["run_dir"])["config"]["class_names"]
            th = run_presence_threshold(got["run_dir"]) or 0.5
            for set_name, p in predict_run(got["run_dir"], SILENT_SETS, device=device, data_dir=data_dir).items():
                for mode in ("oracle", "predicted"):
                    m = silent_object_metrics(p, data_dir, names, mode, th)
                    rows += [{"variant": label, "method": method, "seed": s, "run": got["id"], "set": set_name, "mode": mode,
                              "metric": k, "value": m[k]} for k in SILENT_METRICS]
    write_study_table(pd.DataFrame(rows), out_dir, SILENT_STUDY_FILE)


def read_silent_study(out_dir: str | Path):
    """The long rows of a :func:`silent_object_study` kept in ``out_dir``."""
    return read_study_table(out_dir, SILENT_STUDY_FILE)


__all__ += ["silent_object_study", "read_silent_study"]


def selection_gap(samples, sets: Sequence[str] | None = None, target: float = 0.05):
    """Where a class-aware method's ``predicted`` selection loses CAP against ``oracle`` selection.

    A source's map does not depend on which other classes are selected, and a selected class that
    does not sound costs CAP nothing, so per source the two modes differ only when the predicted
    selection misses the source (no map: AP 0). The gap is therefore exactly the oracle AP of the
    missed sources divided by the number of sources; this table checks that identity on the data.

    Args:
        samples: per-source rows of an evaluation (``eval_<split>_samples.csv``, or
            :func:`avgnbook.pipeline.collect_variants` with ``samples=True``): ``set, mode, scene_id,
            source, ap, has_map`` and optionally ``variant, seed``.
        sets: the sets to report (default: every set with both modes).
        target: the gap asked for (fraction of AP; 0.05 = 5 points).

    Returns:
        One row per (variant, seed, set): ``sources``, ``missed`` (share of sounding sources the
        predicted selection drops, 1 - recall over sources), ``oracle_cap``, ``predicted_cap``,
        ``gap``, ``gap_from_missed`` (oracle AP summed over missed sources / sources: equal to
        ``gap``), ``ap_missed`` / ``ap_selected`` (mean oracle AP of the missed / selected sources),
        and ``max_missed``: the share of missed sources at which the gap would be ``target``, at the
        missed sources' mean oracle AP (``target / ap_missed``).
    """
    import pandas as pd

    keys = [k for k in ("variant", "seed") if k in samples.columns]
    need = {"set", "mode", "scene_id", "source", "ap", "has_map"}
    if need - set(samples.columns):
        raise ValueError(f"selection_gap needs the per-source columns {sorted(need)}; missing {sorted(need - set(samples.columns))}")
    on = [*keys, "set", "scene_id", "source"]
    oracle = samples[samples["mode"] == "oracle"]
    pred = samples[samples["mode"] == "predicted"]
    both = oracle.merge(pred, on=on, suffixes=("_o", "_p"), validate="one_to_one")
    if sets is not None:
        both = both[both["set"].isin(list(sets))]
    if both.empty:
        raise ValueError("no source has both an oracle and a predicted row: evaluate with both selection modes")
    missed = ~both["has_map_p"].astype(bool)
    both = both.assign(missed=missed, ap_if_missed=both["ap_o"].where(missed, 0.0))
    rows = []
    for key, g in both.groupby([*keys, "set"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        n, m = len(g), g["missed"]
        ap_missed = float(g.loc[m, "ap_o"].mean()) if m.any() else math.nan
        rows.append({**dict(zip([*keys, "set"], key)), "sources": n, "missed": float(m.mean()),
                     "oracle_cap": float(g["ap_o"].mean()), "predicted_cap": float(g["ap_p"].mean()),
                     "gap": float(g["ap_o"].mean() - g["ap_p"].mean()), "gap_from_missed": float(g["ap_if_missed"].sum() / n),
                     "ap_missed": ap_missed, "ap_selected": float(g.loc[~m, "ap_o"].mean()) if (~m).any() else math.nan,
                     "max_missed": target / ap_missed if ap_missed and not math.isnan(ap_missed) else math.nan})
    return pd.DataFrame(rows)


def presence_rule_table(
    run_dir: str | Path,
    sets: Sequence[str],
    betas: Sequence[float] = (1.0, 1.5, 2.0),
    *,
    device: str = "auto",
    cfg: EvalConfig = EvalConfig(),
    data_dir: str | Path | None = None,
):
    """The ``predicted`` selection of a class-aware run under presence thresholds chosen on the
    *validation* curve stored in its ``run.json`` by F-beta (:func:`avgn.evaluate.threshold_for_beta`),
    scored on ``sets`` (one forward pass per set, re-scored per threshold).

    Returns one row per (beta, set): ``beta, threshold, set, presence_precision, presence_recall,
    presence_f1, oracle_cap, predicted_cap, gap`` (the metrics' own names; CAP is AP on one-source
    sets).
    """
    import json

    import pandas as pd

    from avgn.evaluate import threshold_for_beta

    info = json.loads((Path(run_dir) / "run.json").read_text())
    curve = info.get("threshold_curve")
    if not curve:
        raise ValueError(f"{run_dir}/run.json has no validation threshold curve: only a run of a method that selects its "
                         "sources (AVGN, DSOL, T-VSL) has one")
    preds = predict_run(run_dir, sets, device=device, data_dir=data_dir)
    rows = []
    for beta in betas:
        t = threshold_for_beta(curve, beta)
        for name, p in preds.items():
            oracle, _ = score_set(p, "oracle", cfg, t)
            pred, _ = score_set(p, "predicted", cfg, t)
            key = "cap" if "cap" in oracle else "ap"
            rows.append({"beta": float(beta), "threshold": t, "set": name,
                         **{k: pred[k] for k in ("presence_precision", "presence_recall", "presence_f1")},
                         "oracle_cap": oracle[key], "predicted_cap": pred[key], "gap": oracle[key] - pred[key]})
    return pd.DataFrame(rows)


#: Chapter 2's threshold-rule study: the sets, the F-beta rules and the file the run store keeps.
PRESENCE_RULE_SETS = ("test/duet/scene", "test/duet/concat")
PRESENCE_RULE_BETAS = (1.0, 1.5, 2.0)
PRESENCE_RULE_FILE = "rules.csv"


def presence_rule_study(data_dir: str | Path, out_dir: str | Path, profile: str, seed: int, *,
                        sources: Sequence[tuple[str, str]], runs: Mapping[str, Mapping[str, Any]], device: str = "auto") -> None:
    """The run store's ``presence-rules`` study (:class:`avgn.store.plan.Study` with ``needs``):
    :func:`presence_rule_table` of each stored run ``<prefix>/seed<seed>`` of ``sources`` (``(run-key
    prefix, label)``) on :data:`PRESENCE_RULE_SETS` under :data:`PRESENCE_RULE_BETAS`; writes
    ``rules.csv`` (its rows with ``variant`` = the label and the ``run`` id) into ``out_dir``."""
    import pandas as pd

    frames = []
    for prefix, label in sources:
        got = runs[f"{prefix}/seed{seed}"]
        frames.append(presence_rule_table(got["run_dir"], PRESENCE_RULE_SETS, PRESENCE_RULE_BETAS, device=device, data_dir=data_dir)
                      .assign(variant=label, run=got["id"]))
    write_study_table(pd.concat(frames, ignore_index=True), out_dir, PRESENCE_RULE_FILE)


def read_presence_rule_study(out_dir: str | Path):
    """The rows of a :func:`presence_rule_study` kept in ``out_dir``."""
    return read_study_table(out_dir, PRESENCE_RULE_FILE)


#: Chapter 2's choice of the threshold rule: the duets of validation (where it is chosen) and of test
#: (where it is reported), the F-beta rules it chooses among, the file the run store keeps.
RULE_CHOICE_SETS = ("val/duet/scene", "val/duet/concat", "test/duet/scene", "test/duet/concat")
RULE_CHOICE_BETAS = (1.0, 1.25, 1.5, 2.0)
RULE_CHOICE_FILE = "rule_choice.csv"


def presence_rule_choice_study(data_dir: str | Path, out_dir: str | Path, profile: str, seed: int, *,
                               sources: Sequence[tuple[str, str]], runs: Mapping[str, Mapping[str, Any]], device: str = "auto") -> None:
    """The run store's ``presence-rule-choice`` study: :func:`presence_rule_table` of every stored seed of
    each of ``sources`` (``(run-key prefix, label)``) on :data:`RULE_CHOICE_SETS` under
    :data:`RULE_CHOICE_BETAS`; writes ``rule_choice.csv`` (its rows with ``variant``, ``seed``, ``run``)."""
    import pandas as pd

    frames = []
    for prefix, label in sources:
        for s, got in stored_seeds(runs, prefix):
            frames.append(presence_rule_table(got["run_dir"], RULE_CHOICE_SETS, RULE_CHOICE_BETAS, device=device, data_dir=data_dir)
                          .assign(variant=label, seed=int(s), run=got["id"]))
    write_study_table(pd.concat(frames, ignore_index=True), out_dir, RULE_CHOICE_FILE)


def read_rule_choice_study(out_dir: str | Path):
    """The rows of a :func:`presence_rule_choice_study` kept in ``out_dir``."""
    return read_study_table(out_dir, RULE_CHOICE_FILE)


def choose_presence_rule(rows, f1_min: float = 0.85, gap_max: float = 0.05, split: str = "val"):
    """The F-beta threshold rule chosen on ``split``'s rows of a :func:`presence_rule_choice_study`: per
    rule, the mean over seeds of each set's presence F1 and predicted-to-oracle gap, and its *margin*,
    the smallest over the sets of ``F1 - f1_min`` and ``gap_max - gap`` (>= 0: both targets met on
    every set). The rule with the largest margin is chosen (ties: the smaller beta, the fewer false
    alarms). Returns ``(beta, table)``, the table one row per (beta, set) with ``margin`` per beta."""
    sel = rows[rows["set"].str.startswith(split + "/")]
    if sel.empty:
        raise ValueError(f"choose_presence_rule: no rows of the {split!r} split")
    table = sel.groupby(["beta", "set"], as_index=False)[["threshold", "presence_f1", "gap"]].mean()
    per_set = np.minimum(table["presence_f1"] - f1_min, gap_max - table["gap"])
    table["margin"] = per_set.groupby(table["beta"]).transform("min")
    best = table.groupby("beta")["margin"].first()
    beta = float(best[best == best.max()].index.min())
    return beta, table


def rule_results(rows, beta: float, label: str, split: str = "test"):
    """The long results (``variant, seed, set, mode, metric, value``) of the rule ``beta`` on ``split``'s
    rows of a :func:`presence_rule_choice_study`: oracle CAP, predicted CAP and presence F1, for
    :func:`avgnbook.findings.learning_targets` (variant ``label``)."""
    import pandas as pd

    sel = rows[(rows["beta"] == beta) & rows["set"].str.startswith(split + "/")]
    if sel.empty:
        raise ValueError(f"rule_results: no rows of beta {beta} on {split!r}")
    out = []
    for _, r in sel.iterrows():
        base = {"variant": label, "seed": int(r["seed"]), "run": r["run"], "set": r["set"]}
        out += [{**base, "mode": "oracle", "metric": "cap", "value": r["oracle_cap"]},
                {**base, "mode": "predicted", "metric": "cap", "value": r["predicted_cap"]},
                {**base, "mode": "predicted", "metric": "presence_f1", "value": r["presence_f1"]}]
    return pd.DataFrame(out)


__all__ += ["presence_rule_choice_study", "read_rule_choice_study", "choose_presence_rule", "rule_results"]
