"""Collect the book's variants and references: the long results tables of the runs a chapter
materialised from the run store (:meth:`avgnbook.chapter.Chapter.run_variants`,
:func:`avgn.store.queue.checkout`), each row with the store's run id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from avgn.methods import get_method
from avgn.runs import Variant, reference_dir, variant_dirs

__all__ = ["collect_variants", "collect_references", "stored_run_id"]


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
                raise FileNotFoundError(f"{path} is missing: materialise {v.label!r} seed {s} (evaluation {split}) from the run store first "
                                        "(Chapter.run_variants; `avgn runs train` stores what the store lacks)")
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
            raise FileNotFoundError(f"{path} is missing: materialise reference {n!r} (evaluation {split}) from the run store first "
                                    "(Chapter.run_references; `avgn runs train` stores what the store lacks)")
        frames.append(pd.read_csv(path).assign(variant=get_method(n).label, seed=-1, run=stored_run_id(path.parent)))
    return pd.concat(frames, ignore_index=True)
