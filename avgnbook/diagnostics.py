"""Does a model learn from the audio? Controls and references for chapter 2's diagnosis.

* :func:`prior_bce` — the presence BCE of the best *constant* predictor (the class frequencies):
  a presence loss that settles there has learned the class prior and nothing from the input.
* :func:`gradient_norms` — per loss term, the gradient norm that reaches each part of a model
  (audio encoder, grouping blocks, class tokens, ...), from one batch, one backward per term.
* :func:`grouping_balance` — inside AVGN's audio grouping block: the norm of the input-dependent
  term ``out(pooled)`` against the residual it is added to, how peaked the assignment is, and how
  much the presence logits vary across samples vs across classes.
* :class:`PresenceCNN` and :func:`train_presence_reference` — a plain 4-block CNN trained with BCE
  on the multi-hot labels of the *same* training mixtures (same batcher, steps and spectrograms):
  the reference for how much class information the audio holds at this budget.
* :func:`audio_probe` — a linear probe (scikit-learn logistic regression, one per class) on a
  model's pooled audio-encoder features: is the class information in the encoder at all?
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avgn.config import EvalConfig
from avgn.data.manifest import load_build_info
from avgn.evaluate import load_eval_set, predict_set, presence_metrics, primary_metric, score_set
from avgn.evaluate import eval_feature_store
from avgn.features import FeatureStore
from avgn.methods.avgn import avgn_loss_terms
from avgn.methods import MethodPredictor, get_method, model_inputs
from avgn.methods.mal import frame_nodes
from avgn.runs import load_run, load_trained_model
from avgnbook.results import read_study_table, stored_seeds, write_study_table
from avgn.train import GroupedBatchSampler, build_train_data

__all__ = [
    "prior_bce",
    "micro_f1",
    "gradient_norms",
    "grouping_balance",
    "PresenceCNN",
    "train_presence_reference",
    "audio_probe",
]


def prior_bce(labels: torch.Tensor | np.ndarray) -> float:
    """Mean binary entropy of the per-class frequencies of multi-hot ``labels [N, C]``: the BCE of
    predicting every class with its frequency, whatever the input."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
    p = y.mean(dim=0).clamp(1e-12, 1 - 1e-12)
    h = -(p * p.log() + (1 - p) * (1 - p).log())
    return float(h.mean())


def micro_f1(probs: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> float:
    """Micro F1 of ``probs >= threshold`` (at least the top class per row) against ``labels``."""

    return presence_metrics(probs, labels, threshold)["presence_f1"]


# --------------------------------------------------------------------------------------------------
# gradients per loss term
# --------------------------------------------------------------------------------------------------
def gradient_norms(
    model: nn.Module,
    parts: Mapping[str, torch.Tensor],
    groups: Mapping[str, Sequence[nn.Parameter] | nn.Module],
    weights: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """``[{"loss", "module", "grad_norm"}]``: the L2 norm of ``d (w * loss) / d params`` for each
    weighted loss term of ``parts`` (graph-carrying scalars of one forward) and each parameter group
    of ``groups`` (name -> module or parameters). Gradients are computed with :func:`torch.autograd.grad`,
    so the model's ``.grad`` fields are untouched."""
    params = {k: [p for p in (g.parameters() if isinstance(g, nn.Module) else g) if p.requires_grad] for k, g in groups.items()}
    flat = [p for ps in params.values() for p in ps]
    rows = []
    names = list(parts)
    for n, name in enumerate(names):
        w = 1.0 if weights is None else float(weights.get(name, 1.0))
        loss = parts[name]
        if not loss.requires_grad or w == 0.0:
            grads = [None] * len(flat)
        else:
            grads = torch.autograd.grad(w * loss, flat, retain_graph=n < len(names) - 1, allow_unused=True)
        k = 0
        for g_name, ps in params.items():
            sq = 0.0
            for _ in ps:
                gr = grads[k]
                k += 1
                if gr is not None:
                    sq += float(gr.detach().double().pow(2).sum())
            rows.append({"loss": name, "module": g_name, "grad_norm": math.sqrt(sq)})
    return rows


def avgn_parameter_groups(model: nn.Module) -> dict[str, Any]:
    """The parts of an AVGN whose gradients chapter 2 follows."""
    return {
        "audio encoder": model.audio,
        "audio transformer": model.audio_transformer,
        "audio grouping": model.audio_grouping,
        "class tokens": [model.class_tokens],
        "visual projection": model.visual.proj,
        "visual transformer": model.visual_transformer,
        "visual grouping": model.visual_grouping,
        "presence heads": list(model.audio_presence.parameters()) + list(model.visual_presence.parameters()),
    }


__all__.append("avgn_parameter_groups")
__all__.append("presence_reference_run")


@torch.no_grad()
def grouping_balance(model: nn.Module, batch: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, float]:
    """Inside AVGN's audio grouping block on one batch: mean norms of the input-dependent term
    (``out(pooled)``) and of the residual it is added to, their ratio, the mean of each feature's
    largest assignment weight, the number of audio cells, and the standard deviation of the audio
    presence logits across samples (mean over classes) and across classes (of the per-class means)."""

    g = model.audio_grouping
    rec: dict[str, torch.Tensor] = {}
    hooks = [
        g.out.register_forward_hook(lambda m, i, o: rec.__setitem__("input_term", o)),
        g.residual_source().register_forward_hook(lambda m, i, o: rec.__setitem__("residual", o)),
    ]
    was = model.training
    model.eval()
    try:
        out = model(**model_inputs(dict(batch), torch.device(device)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    a, r = rec["input_term"].float(), rec["residual"].float()
    logits = out["audio_logits"].float()
    return {
        "input_term_norm": float(a.norm(dim=-1).mean()),
        "residual_norm": float(r.norm(dim=-1).mean()),
        "ratio": float(r.norm(dim=-1).mean() / a.norm(dim=-1).mean().clamp_min(1e-12)),
        "assign_max_weight": float(out["assign_audio"].float().amax(-1).mean()),
        "audio_cells": int(out["assign_audio"].shape[1]),
        "logit_sd_samples": float(logits.std(0).mean()),
        "logit_sd_classes": float(logits.mean(0).std()),
    }


# --------------------------------------------------------------------------------------------------
# a plain CNN presence reference on the same data
# --------------------------------------------------------------------------------------------------
class PresenceCNN(nn.Module):
    """Four conv blocks (``3x3 conv -> BN -> ReLU -> 2x2 max-pool``; ``widths`` channels), global
    max + mean pooling, a linear layer to ``C`` presence logits. ``forward(spec [B, 1, F, T]) -> [B, C]``."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            cin = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(2 * cin, num_classes)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.body(spec)
        return self.head(torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1))


@dataclass(frozen=True)
class ReferenceResult:
    """What :func:`train_presence_reference` measured."""

    history: list[dict[str, float]]  # per evaluation: step, train BCE, val F1 per set
    val: dict[str, float]  # final micro F1 per validation set
    seconds: float
    steps: int


def _presence_eval(model: nn.Module, sets: Sequence[Any]) -> dict[str, float]:
    out = {}
    model.eval()
    with torch.no_grad():
        for es in sets:
            probs, labels = [], []
            for b in es.batches():
                probs.append(torch.sigmoid(model(b["spec"])))
                labels.append(b["labels"])
            out[str(es.name)] = micro_f1(torch.cat(probs), torch.cat(labels))
    model.train()
    return out


def train_presence_reference(
    exp: Any,
    data_dir: str | Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    lr: float = 1e-3,
    val_sets: Sequence[str] = ("val/solo/scene", "val/duet/scene"),
    eval_every: int = 100,
    progress: bool = False,
) -> ReferenceResult:
    """Train :class:`PresenceCNN` on ``exp``'s training mixtures (its batcher, batch size and, by
    default, its number of steps) with BCE on the multi-hot labels; Adam, constant ``lr``."""

    torch.manual_seed(seed)
    data_dir = Path(data_dir)
    batcher, groups, _ = build_train_data(exp, data_dir, seed, store=None)
    batcher.audio_only = True
    sampler = GroupedBatchSampler(groups, exp.train.batch_size, seed=seed)
    total = steps or exp.train.epochs * len(sampler)
    sets = [load_eval_set(data_dir, n, _audio_only(exp.inputs), None, materialize=True, workers=0) for n in val_sets]
    model = PresenceCNN(batcher.n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist: list[dict[str, float]] = []
    step, epoch, t0, run_loss = 0, 0, time.perf_counter(), 0.0
    while step < total:
        sampler.set_epoch(epoch)
        batcher.set_epoch(epoch)
        for b in batcher.iterate(sampler):
            loss = F.binary_cross_entropy_with_logits(model(b["spec"]), b["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += float(loss.detach())
            step += 1
            if step % eval_every == 0 or step == total:
                row = {"step": step, "train_bce": run_loss / (eval_every if step % eval_every == 0 else step % eval_every)}
                row.update(_presence_eval(model, sets))
                hist.append(row)
                run_loss = 0.0
                if progress:
                    print(f"[presence CNN] step {step}/{total}: {row}", flush=True)
            if step >= total:
                break
        epoch += 1
    return ReferenceResult(history=hist, val=hist[-1] if hist else {}, seconds=time.perf_counter() - t0, steps=step)


def presence_reference_run(
    exp: Any,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    steps: int,
    seed: int = 0,
    lr: float = 1e-3,
    val_sets: Sequence[str] = ("val/solo/scene", "val/duet/scene"),
    eval_every: int = 100,
    progress: bool = False,
) -> ReferenceResult:
    """:func:`train_presence_reference` for ``steps`` steps, kept: the result is written to
    ``out_dir/presence_reference.json`` (atomic) with the settings and the build it was trained on,
    and read back instead of retraining when a call asks for the very same settings and build.

    Raises:
        ValueError: ``out_dir`` holds a reference of other settings or another build (names both
            and the fix).
    """
    from avgn.io import atomic_write_json
    from avgn.runs import data_identity

    out = Path(out_dir) / "presence_reference.json"
    settings = {"seed": int(seed), "steps": int(steps), "lr": float(lr), "val_sets": list(val_sets),
                "eval_every": int(eval_every), "batch_size": int(exp.train.batch_size), "data": data_identity(data_dir)}
    if out.is_file():
        old = json.loads(out.read_text())
        if old.get("settings") != settings:
            raise ValueError(f"{out} holds a presence reference of other settings ({old.get('settings')} vs {settings}): "
                             f"pass another out_dir or delete it to retrain")
        return ReferenceResult(history=old["history"], val=old["history"][-1] if old["history"] else {}, seconds=old["seconds"], steps=old["steps"])
    res = train_presence_reference(exp, data_dir, seed=seed, steps=steps, lr=lr, val_sets=val_sets, eval_every=eval_every, progress=progress)
    atomic_write_json(out, {"settings": settings, "history": res.history, "seconds": res.seconds, "steps": res.steps})
    return res


def read_presence_reference(out_dir: str | Path) -> ReferenceResult:
    """The plain-CNN presence reference kept in ``out_dir`` (:func:`presence_reference_run`'s file;
    e.g. the run store's ``presence-cnn`` study checked out by a chapter); never trains.

    Raises:
        FileNotFoundError: nothing kept there (naming the file).
    """
    path = Path(out_dir) / "presence_reference.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: train the reference (avgn runs train --keys presence-cnn/seed0)")
    old = json.loads(path.read_text())
    return ReferenceResult(history=old["history"], val=old["history"][-1] if old["history"] else {}, seconds=old["seconds"], steps=old["steps"])


def presence_cnn_study(data_dir: str | Path, out_dir: str | Path, profile: str, seed: int, factor: int = 4, epochs: int = 6) -> None:
    """The run store's ``presence-cnn`` study (:class:`avgn.store.plan.Study`): the plain CNN trained
    on AVGN's training mixtures for ``factor`` x the steps of ``epochs`` epochs of the profile's
    schedule (chapter 2's budget reference, the 6-epoch AVGN run), evaluated every third of that
    budget, kept in ``out_dir``."""
    from avgn.experiment import get_experiment

    exp = get_experiment("avgn", profile)
    t = exp.train
    per_epoch = sum(x or 0 for x in (t.solo_items, t.concat_items, t.scene_items)) // t.batch_size
    budget = epochs * per_epoch
    presence_reference_run(exp, data_dir, out_dir, steps=factor * budget, seed=seed, eval_every=max(1, budget // 3))


def _audio_only(inputs: Any) -> Any:
    """``inputs`` without cached features (evaluation sets then carry frames; only ``spec`` is read)."""
    from dataclasses import replace

    return replace(inputs, cached_features=False)


# --------------------------------------------------------------------------------------------------
# linear probe of the audio encoder
# --------------------------------------------------------------------------------------------------
def audio_probe(
    encode: Callable[[torch.Tensor], torch.Tensor],
    train_batches: Sequence[Mapping[str, Any]],
    test_batches: Sequence[Mapping[str, Any]],
    C: float = 1.0,
) -> dict[str, float]:
    """Micro F1 on ``test_batches`` of one logistic regression per class (scikit-learn, standardised
    inputs) fitted on ``encode(spec)`` features of ``train_batches``. Classes absent from the
    training labels are predicted absent."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def feats(batches):
        xs, ys = [], []
        with torch.no_grad():
            for b in batches:
                xs.append(encode(b["spec"]).float())
                ys.append(b["labels"])
        return torch.cat(xs).numpy(), torch.cat(ys).numpy() > 0.5

    xtr, ytr = feats(train_batches)
    xte, yte = feats(test_batches)
    sc = StandardScaler().fit(xtr)
    xtr, xte = sc.transform(xtr), sc.transform(xte)
    probs = np.zeros(yte.shape, dtype=np.float64)
    for c in range(ytr.shape[1]):
        if ytr[:, c].all() or not ytr[:, c].any():
            probs[:, c] = float(ytr[:, c].mean())
            continue
        clf = LogisticRegression(C=C, max_iter=2000).fit(xtr, ytr[:, c])
        probs[:, c] = clf.predict_proba(xte)[:, 1]
    f1 = micro_f1(torch.from_numpy(probs), torch.from_numpy(yte.astype(np.float32)))
    return {"probe_f1": f1, "n_train": int(len(xtr)), "n_test": int(len(xte))}


__all__.append("embedding_dependence_summary")  # re-exported from avgn.methods.avgn


# --------------------------------------------------------------------------------------------------
# chapter-level helpers (thin cells)
# --------------------------------------------------------------------------------------------------
def training_batches(exp: Any, data_dir: str | Path, seed: int = 0, n: int = 8, epoch: int = 0) -> list[dict[str, Any]]:
    """The first ``n`` training batches of ``epoch`` exactly as :func:`avgn.train.train` draws them."""

    data_dir = Path(data_dir)
    exp = exp.for_build(load_build_info(data_dir))
    store = None
    if exp.inputs.cached_features:
        # the frames these batches draw, not the whole training split
        store = FeatureStore(data_dir, exp.inputs.features, preload=False, compute_missing=True)
    batcher, groups, _ = build_train_data(exp, data_dir, seed, store)
    sampler = GroupedBatchSampler(groups, exp.train.batch_size, seed=seed)
    sampler.set_epoch(epoch)
    batcher.set_epoch(epoch)
    out = []
    for idx in sampler:
        out.append(batcher.batch(idx))
        if len(out) >= n:
            break
    return out


def avgn_loss_parts(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """AVGN's four loss terms on one batch, unweighted, with their graphs (for :func:`gradient_norms`):
    the terms of the training loss (:func:`avgn.losses.avgn_loss_terms`) under readable names."""
    out = model(**model_inputs(dict(batch), next(model.parameters()).device))
    classes = batch["classes"]
    terms = avgn_loss_terms(out, {"labels": batch["labels"], "source_classes": classes, "source_mask": classes >= 0}, model.cfg)
    return {"localization": terms["loc"], "token": terms["token"], "audio presence": terms["audio_cls"], "visual presence": terms["visual_cls"]}


def avgn_gradient_table(model: nn.Module, batches: Sequence[Mapping[str, Any]], weighted: bool = True):
    """Mean over ``batches`` of :func:`gradient_norms` for AVGN's loss terms (times their weights if
    ``weighted``) and :func:`avgn_parameter_groups`: a long :class:`pandas.DataFrame`."""
    import pandas as pd

    cfg = model.cfg
    w = {"localization": cfg.w_loc, "token": cfg.w_token, "audio presence": cfg.w_audio_cls, "visual presence": cfg.w_visual_cls}
    rows = []
    model.train()
    for b in batches:
        rows += gradient_norms(model, avgn_loss_parts(model, b), avgn_parameter_groups(model), w if weighted else None)
    return pd.DataFrame(rows).groupby(["loss", "module"], sort=False, as_index=False)["grad_norm"].mean()


def audio_encoder_probe(model: nn.Module, train: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """:func:`audio_probe` on ``model``'s max-pooled audio-trunk features (AVGN / EZ-VSL encoders)."""
    was = model.training
    model.eval()
    try:
        return audio_probe(lambda spec: model.audio.trunk_pooled(spec)[1], train, test)
    finally:
        model.train(was)


__all__ += ["training_batches", "avgn_loss_parts", "avgn_gradient_table", "audio_encoder_probe"]


# --------------------------------------------------------------------------------------------------
# which way does a map point?
# --------------------------------------------------------------------------------------------------
def map_orientation(p: Any, cfg: Any = None, mode: str = "oracle") -> dict[str, float]:
    """The primary metric (AP / CAP) of a set's maps, of the *negated* maps and of a constant map.

    ``p`` is a :class:`avgn.evaluate.SetPredictions`. A map that scores below the constant map (whose
    AP is the mask's share of the frame) while its negation scores above it points *away* from the
    sources: the model has learned something, but not where the sound comes from. Chapter 2 and the
    closing note of the learning issue use it on EZ-VSL, whose contrastive loss falls below chance
    while its maps score under a constant.

    Returns ``{"map", "negated", "constant"}``.
    """
    import dataclasses


    cfg = cfg or EvalConfig()
    key = primary_metric(p.name)
    out = {}
    for name, maps in (("map", p.maps), ("negated", -p.maps), ("constant", torch.zeros_like(p.maps))):
        out[name] = float(score_set(dataclasses.replace(p, maps=maps), mode, cfg)[0][key])
    return out


__all__.append("map_orientation")


# --------------------------------------------------------------------------------------------------
# do the baselines learn? (chapter 3)
# --------------------------------------------------------------------------------------------------
def _eval_outputs(model: nn.Module, batch: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:

    model.eval()
    with torch.no_grad():
        return model(**model_inputs(batch, torch.device(device)))


def audio_embedding_collapse(model: nn.Module, batches: Sequence[Mapping[str, Any]], device: str | torch.device = "cpu") -> float:
    """Mean pairwise cosine between the audio embeddings of different items of a batch (EZ-VSL's
    ``audio_emb`` ``[B, D]``; Mix-and-Localize's slots ``[B, K, D]`` flattened to ``[B*K, D]``),
    averaged over ``batches``. Near 1: every clip gets the same embedding, so the contrastive loss
    cannot tell the pairs apart and stays at chance (``2 ln B``); a working encoder is far below 1."""
    vals = []
    for batch in batches:
        out = _eval_outputs(model, batch, device)
        emb = out["audio_emb"] if "audio_emb" in out else out["slots"].flatten(0, 1)
        emb = F.normalize(emb.float(), dim=-1)
        n = emb.shape[0]
        if n < 2:
            raise ValueError("audio_embedding_collapse needs batches of at least 2 items")
        sim = emb @ emb.t()
        vals.append(float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))))
    return float(np.mean(vals))


def walk_locality(model: nn.Module, batches: Sequence[Mapping[str, Any]], device: str | torch.device = "cpu") -> dict[str, float]:
    """Where Mix-and-Localize's first walk step goes: the transition mass from each slot to the nodes
    of its *own* image (``graph='regions'``: the image's regions; ``graph='frames'`` or ``'mixture'``:
    its frames, two for a ``concat`` duet), and how often a slot's most likely node lies in its own
    image, averaged over ``batches``; ``uniform`` = ``1 / B``, what a walk that ignores which image goes
    with the audio gives. With single regions as nodes a slot can return to itself through any region
    of the batch that prefers it, so the cycle loss can fall without any audio-visual correspondence;
    these numbers show whether it did. The mixture graph's first step may only go to the slot's own
    frames; here it is measured unrestricted, over every frame of the batch: whether the slot would
    find its own frame among all of them (audio-visual correspondence)."""

    graph = model.cfg.graph  # type: ignore[union-attr]
    if graph not in ("regions", "frames", "mixture"):
        raise ValueError(f"walk_locality needs graph='regions', 'frames' or 'mixture', got {graph!r}")
    own, top_own, uniform = [], [], []
    for batch in batches:
        out = _eval_outputs(model, batch, device)
        slots, v = out["slots"].float(), out["visual_map_feats"].float()
        b, k, d = slots.shape
        nodes = frame_nodes(v) if graph != "regions" else v.flatten(2).unsqueeze(1)  # [B, n, D, Q]
        aff = torch.einsum("sd,bndq->sbnq", slots.reshape(b * k, d), nodes)
        aff = aff.amax(-1) if graph != "regions" else aff.flatten(2)  # [BK, B, nodes per image]
        m = aff.shape[-1]
        p = torch.softmax(aff.reshape(b * k, -1) / model.cfg.cycle_temp, dim=-1).reshape(b, k, b, m)  # type: ignore[union-attr]
        idx = torch.arange(b)
        own.append(float(p[idx, :, idx].sum(-1).mean()))
        top_image = p.reshape(b, k, b * m).argmax(-1) // m
        top_own.append(float((top_image == idx[:, None]).float().mean()))
        uniform.append(1.0 / b)
    return {"own_frame_mass": float(np.mean(own)), "own_frame_top": float(np.mean(top_own)), "uniform": float(np.mean(uniform))}


__all__ += ["audio_embedding_collapse", "walk_locality"]


def baseline_report(run_dir: str | Path, data_dir: str | Path | None = None, n_batches: int = 8, device: str = "cpu") -> dict[str, float]:
    """Does a trained EZ-VSL / Mix-and-Localize run learn? One dict of diagnostics:

    * ``audio_collapse``: :func:`audio_embedding_collapse` on ``n_batches`` training batches;
    * ``loss_over_chance``: the last epoch's training loss over its chance level (EZ-VSL: ``2 ln B``
      for the two directions of the contrastive loss; Mix-and-Localize: ``ln(B K)``, a uniform walk);
    * ``map`` / ``negated`` / ``constant``: :func:`map_orientation` of the ``best`` checkpoint on
      ``val/solo/scene`` (AP of the map, of its negation and of a constant map);
    * Mix-and-Localize only: ``own_frame_mass`` / ``own_frame_top`` / ``uniform`` of
      :func:`walk_locality` (the nodes of the run's own graph).

    A run the store keeps by its evaluations only (no weights: ``"weights_kept": false`` in its
    record, the store's size) has a history but no model: its report is ``loss_over_chance`` alone
    and ``weights = 0`` (``1`` when the model-based entries are there), so that a table says which
    seeds the model-based diagnostics cover.
    """
    from avgn.checkpoint import read_checkpoint_info
    from avgn.experiment import Experiment

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    exp = Experiment.from_dict(run["config"]["experiment"])
    if exp.method not in ("ezvsl", "mal"):
        raise ValueError(f"baseline_report is for EZ-VSL and Mix-and-Localize runs; {run_dir} is a {exp.method} run")
    b = exp.train.batch_size
    chance = 2 * math.log(b) if exp.method == "ezvsl" else math.log(b * exp.model.num_sources)
    out = {"loss_over_chance": float(run["history"]["train/total"].iloc[-1]) / chance, "weights": 0.0}
    if read_checkpoint_info(run_dir, "best") is None:  # kept by its evaluations only
        return out
    model, exp, info = load_trained_model(run_dir, device=device)
    data_dir = Path(data_dir) if data_dir is not None else Path(info["data_dir"])
    batches = training_batches(exp, data_dir, seed=int(info.get("seed") or 0), n=n_batches)
    out.update(weights=1.0, audio_collapse=audio_embedding_collapse(model, batches, device))
    name = "val/solo/scene"
    store = eval_feature_store(exp, data_dir, [name], device=device)
    p = predict_set(MethodPredictor(get_method(exp.method), model, device), load_eval_set(data_dir, name, exp.inputs, store, materialize=False))
    out.update(map_orientation(p, exp.eval))
    if exp.method == "mal":
        out.update(walk_locality(model, batches, device))
    return out


__all__.append("baseline_report")

#: The file the run store keeps of chapter 3's baseline diagnostics (:func:`baseline_study`).
BASELINE_STUDY_FILE = "reports.csv"


def baseline_study(data_dir: str | Path, out_dir: str | Path, profile: str, seed: int, *,
                   sources: Sequence[tuple[str, str, str]], runs: Mapping[str, Mapping[str, Any]], device: str = "cpu") -> None:
    """The run store's ``baseline-reports`` study (:class:`avgn.store.plan.Study` with ``needs``):
    :func:`baseline_report` of every stored seed of each of ``sources`` (``(run-key prefix, label,
    method)``; the seeds are those of ``runs``' keys ``<prefix>/seed<N>``), written to ``reports.csv``
    as long rows ``variant, method, seed, run, set, mode, metric, value`` (the set and mode the maps
    are scored on: ``val/solo/scene``, oracle) — chapter 3's "Do the baselines learn?" table."""
    import pandas as pd

    rows = []
    for prefix, label, method in sources:
        for s, got in stored_seeds(runs, prefix):
            rep = baseline_report(got["run_dir"], data_dir, device=device)
            rows += [{"variant": label, "method": method, "seed": s, "run": got["id"], "set": "val/solo/scene", "mode": "oracle",
                      "metric": k, "value": x} for k, x in rep.items()]
    write_study_table(pd.DataFrame(rows), out_dir, BASELINE_STUDY_FILE)


def read_baseline_study(out_dir: str | Path):
    """The long rows of a :func:`baseline_study` kept in ``out_dir``."""
    return read_study_table(out_dir, BASELINE_STUDY_FILE)


__all__ += ["baseline_study", "read_baseline_study"]
