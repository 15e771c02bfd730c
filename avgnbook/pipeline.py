"""Train, evaluate and collect the book's variants and references (what the chapters call).

:func:`run_variant` trains (or reuses) a :class:`avgn.runs.Variant`'s run and evaluates it;
:func:`run_reference` evaluates a non-learned reference into its folder; both reuse a finished
evaluation of the same checkpoint and settings and return the shell commands that reproduce them.
:func:`collect_variants` / :func:`collect_references` read the long results tables back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from avgn.checkpoint import read_checkpoint_info
from avgn.evaluate import evaluate_reference, evaluate_run
from avgn.methods import get_method
from avgn.runs import Variant, eval_command, reference_command, reference_dir, reproduce_command, run_presence_threshold, variant_dirs
from avgn.train import train

__all__ = ["run_variant", "run_reference", "collect_variants", "collect_references", "stored_run_id"]


def _jobs(eval_splits: Sequence[str], eval_sets: dict[str, Sequence[str]] | None) -> list[tuple[str, str | list[str], list[str] | None]]:
    """``(tag, split(s), set names or None)`` per evaluation: one per split, one per named group of sets."""
    jobs: list[tuple[str, str | list[str], list[str] | None]] = [(sp, sp, None) for sp in eval_splits]
    jobs += [(tag, sorted({n.split("/")[0] for n in names}), list(names)) for tag, names in (eval_sets or {}).items()]
    return jobs


def _finished(path: Path, sets: Sequence[str] | None, expect: dict[str, tuple[Any, Any]]) -> bool:
    """Whether the evaluation in ``path`` exists, covers ``sets`` (None: the split's) and records
    ``expect`` (``{key: (value, default when absent)}``): then it is reused, not recomputed."""
    if not path.is_file():
        return False
    prev = json.loads(path.read_text())
    if sets is not None and prev.get("sets") != sets:
        return False
    return all(prev.get(k, default) == v for k, (v, default) in expect.items())


def run_variant(
    variant: Variant,
    profile: str,
    seed: int,
    data_dir: str | Path,
    runs_dir: str | Path,
    *,
    device: str = "auto",
    eval_splits: Sequence[str] = ("test",),
    eval_sets: dict[str, Sequence[str]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) the runs of ``variant`` and evaluate them on ``eval_splits`` (all sets of
    each split, written as ``eval_<split>.*``) and on ``eval_sets`` (``{tag: [set names]}``,
    written as ``eval_<tag>.*``). Finished evaluations of the same checkpoint are reused.
    Returns ``{"run_dir", "eval_dir", "commands"}`` with the shell commands that reproduce the run
    and its evaluations."""
    run_dir, eval_dir = variant_dirs(variant, runs_dir, profile, seed)
    overrides = dict(variant.overrides) or None
    data_dir = Path(data_dir)
    if variant.init_from is not None:  # a second stage: the first stage's run of the same seed, trained first
        first = run_variant(variant.init_from, profile, seed, data_dir, runs_dir, device=device, eval_splits=(), progress=progress)
        overrides = {**(overrides or {}), "train.init_from": str(first["run_dir"])}
    train(variant.method, data_dir, run_dir, seed=seed, profile=profile, device=device, resume=True, progress=progress, overrides=overrides)
    best = read_checkpoint_info(run_dir, "best")
    threshold = run_presence_threshold(run_dir) or 0.5
    ev_over = dict(variant.eval_overrides) or None
    commands = [reproduce_command(variant.method, profile, seed, data_dir, run_dir, overrides)]
    expect = {"checkpoint_epoch": (None if best is None else best["epoch"], None), "model_overrides": (ev_over or {}, {}),
              "presence_threshold": (threshold, 0.5)}
    for tag, split, sets in _jobs(eval_splits, eval_sets):
        if best is None or not _finished(eval_dir / f"eval_{tag}.json", sets, expect):
            evaluate_run(run_dir, split, sets=sets, device=device, progress=progress, model_overrides=ev_over,
                         out_dir=eval_dir if ev_over else None, tag=tag)
        commands.append(eval_command(run_dir, split if isinstance(split, str) else split[0], ev_over, eval_dir if ev_over else None, sets=sets, tag=tag))
    return {"run_dir": run_dir, "eval_dir": eval_dir, "commands": commands}


def run_reference(
    name: str,
    profile: str,
    data_dir: str | Path,
    runs_dir: str | Path,
    *,
    device: str = "auto",
    eval_splits: Sequence[str] = ("test",),
    eval_sets: dict[str, Sequence[str]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate reference ``name`` into :func:`avgn.runs.reference_dir` on ``eval_splits`` and
    ``eval_sets`` (as :func:`run_variant`); an existing evaluation of the same sets is reused.
    Returns ``{"eval_dir", "commands"}``."""
    out = reference_dir(runs_dir, name, profile)
    commands = []
    for tag, split, sets in _jobs(eval_splits, eval_sets):
        if not _finished(out / f"eval_{tag}.json", sets, {}):
            evaluate_reference(name, data_dir, out, profile=profile, split=split, sets=sets, device=device, progress=progress, tag=tag)
        commands.append(reference_command(name, profile, data_dir, out, split if isinstance(split, str) else split[0], sets=sets, tag=tag))
    return {"eval_dir": out, "commands": commands}


def stored_run_id(folder: str | Path) -> str:
    """The store's id of the run materialised in ``folder`` (its ``store.json``, written by
    :func:`avgn.store.queue.checkout`), or ``""`` for a run that did not come from the store."""
    p = Path(folder) / "store.json"
    return json.loads(p.read_text())["id"] if p.is_file() else ""


def collect_variants(variants: Sequence[Variant], runs_dir: str | Path, profile: str, seeds: Sequence[int], split: str = "test", samples: bool = False):
    """The long results table (:func:`avgn.evaluate.collect_results` columns, plus ``variant``) of
    ``variants`` over ``seeds``; a missing evaluation is an error naming the command that makes it.
    ``split`` is the evaluation's tag (``eval_<split>.csv``); ``samples=True`` reads the per-source
    rows instead (``eval_<split>_samples.csv``: ``set, mode, scene_id, source, class_id, ap, ciou,
    has_map``)."""
    import pandas as pd

    frames = []
    for v in variants:
        for s in seeds:
            _, eval_dir = variant_dirs(v, runs_dir, profile, s)
            path = eval_dir / (f"eval_{split}_samples.csv" if samples else f"eval_{split}.csv")
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: run `run_variant` for {v.label!r} seed {s} (split {split}) first")
            frames.append(pd.read_csv(path).assign(variant=v.label, seed=s, run=stored_run_id(eval_dir)))
    return pd.concat(frames, ignore_index=True)


def collect_references(names: Sequence[str], runs_dir: str | Path, profile: str, split: str = "test", samples: bool = False):
    """The long results table of references ``names`` (as :func:`collect_variants`, ``variant`` =
    the reference's label, ``seed`` = -1)."""
    import pandas as pd

    frames = []
    for n in names:
        path = reference_dir(runs_dir, n, profile) / (f"eval_{split}_samples.csv" if samples else f"eval_{split}.csv")
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `run_reference({n!r}, ...)` (split {split}) first")
        frames.append(pd.read_csv(path).assign(variant=get_method(n).label, seed=-1, run=stored_run_id(path.parent)))
    return pd.concat(frames, ignore_index=True)
