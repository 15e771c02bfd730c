"""Evaluating a trained run or a non-learned reference on disk: predict, score and write
``eval_<split>.json`` / ``.csv`` / ``_samples.csv`` into its folder; read them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from avgn.checkpoint import atomic_write_json, atomic_write_text
from avgn.env import git_revision, resolve_device
from avgn.evaluate.negative import CALIBRATION_SPLIT, evaluate_negative
from avgn.evaluate.scoring import MODES, PREDICTED_MIN_SOURCES, Predictor, evaluate_sets
from avgn.evaluate.sets import (
    NEGATIVE_TASKS,
    SetName,
    is_negative,
    list_sets,
    load_eval_set,
)
from avgn.experiment import get_experiment
from avgn.features import (
    FeatureStore,
    compute_features,
)
from avgn.methods import MethodPredictor, get_method, list_methods
from avgn.runs import check_data, load_trained_model


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
    overrides: dict[str, Any] | None = None,
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

    ``overrides``: dotted fields of the run's :class:`avgn.experiment.Experiment` that change how it is
    scored, e.g. ``{"eval.binarize_rule": "fixed", "eval.binarize_value": 0.5}`` (give such an
    evaluation its own ``tag``).
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
    if overrides:
        bad = [k for k in overrides if not k.startswith("eval.")]
        if bad:
            raise ValueError(f"evaluate_run({run_dir}): overrides change the scoring only (eval.*), not {', '.join(bad)}; "
                             "use model_overrides for inference-time model changes")
        exp = exp.with_overrides(**overrides)
    data_dir = Path(data_dir) if data_dir is not None else Path(info["data_dir"])
    dev = resolve_device(device)
    names = list(sets) if sets is not None else list_sets(data_dir, split)
    store = eval_feature_store(exp, data_dir, _with_calibration(names), progress=progress, device=device)
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


def eval_feature_store(exp: Any, data_dir: Path, names: Sequence[str], progress: bool = False, device: str = "auto") -> FeatureStore | None:
    """The feature store of ``exp``'s cached backbone features: the splits of ``names`` computed now
    where missing (batched), any other frame of the build when first read; None when the experiment
    reads images."""
    if not exp.inputs.cached_features:
        return None
    splits = sorted({SetName.parse(n).split for n in names})
    compute_features(data_dir, exp.inputs.features, progress=progress, splits=splits, device=device)
    return FeatureStore(data_dir, exp.inputs.features, preload=False, compute_missing=True, device=device)


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
    store = eval_feature_store(exp, Path(data_dir), names, progress=progress, device=device)
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
