"""The book's tables as data: one long CSV format under ``results/``, written and read by the chapters.

Every table a chapter shows is first written here and then read back, so the numbers of the book are
files a reader can load (``pandas.read_csv("results/03_main.csv")``) and a rerun can diff. One row
per number, columns :data:`COLUMNS`:

==========  ===============================================================================
chapter     the chapter that wrote it (``"02"`` ... ``"06"``)
variant     the row label of the table (``AVGN``, ``EZ-VSL + object prior``, ``depth 3`` ...)
method      the code name: ``avgn``, ``ezvsl``, ``mal``, ``centre``, ``object``, ``perfect``, ...
seed        the training seed (``-1`` for the non-learned references)
run         the id of the stored run the number comes from (:mod:`avgn.store`; empty for a number
            that no run gives, e.g. chapter 0's synthetic protocol demonstrations)
set         ``split/task/layout`` (``test/duet/scene``)
mode        ``oracle`` (ground-truth sources) or ``predicted`` (the method's own selection)
metric      as the metric summaries name it: ``ap``, ``cap``, ``piap``, ``ciou@0.3``, ``auc``,
            ``presence_f1``, ... (with a binarisation suffix such as ``ciou@0.3|fixed 0.5``)
value       a fraction in ``[0, 1]``
==========  ===============================================================================

Counts (``n``, ``n_empty``) and timings are not results and are not written. Writes are atomic.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "REPO_ROOT", "RESULTS_DIR", "write_study_table", "read_study_table", "stored_seeds", "NON_FRACTION_METRICS", "to_results", "write_results", "read_results"]

COLUMNS = ("chapter", "variant", "method", "seed", "run", "set", "mode", "metric", "value")
#: The repository (the checkout that holds ``avgnbook/``, ``results/``, ``book/`` and ``store/``).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: ``results/`` at the repository root (chapters pass their own relative path).
RESULTS_DIR = REPO_ROOT / "results"
#: Summary entries that are counts or times, never written as results.
NON_FRACTION_METRICS = frozenset({"n", "n_empty", "n_pairs", "n_samples", "n_sources", "seconds", "items"})


def to_results(df: Any, chapter: str, **fixed: Any):
    """A long table (e.g. :func:`avgn.train.collect_variants` or :func:`avgn.evaluate.results_frame`
    output) in the results format: ``fixed`` fills missing columns (``variant="centre prior"``,
    ``seed=-1``), count metrics are dropped, columns are ordered as :data:`COLUMNS`."""
    import pandas as pd

    out = df.copy()
    out["chapter"] = str(chapter)
    if "run" not in out.columns and "run" not in fixed:
        out["run"] = ""
    for k, v in fixed.items():
        out[k] = v
    missing = [c for c in COLUMNS if c not in out.columns]
    if missing:
        raise KeyError(f"results need columns {missing} (give them as keyword arguments, e.g. variant='AVGN')")
    out = out[~out["metric"].isin(NON_FRACTION_METRICS)]
    out = out[list(COLUMNS)].copy()
    out["seed"] = out["seed"].astype(int)
    out["run"] = out["run"].fillna("").astype(str)
    out["value"] = pd.to_numeric(out["value"], errors="raise").astype(float)
    return out.reset_index(drop=True)


def write_results(df: Any, name: str, results_dir: str | Path = RESULTS_DIR, fractions: bool = True) -> Path:
    """Validate ``df`` (columns :data:`COLUMNS`; with ``fractions`` every finite value in ``[0, 1]``,
    as every metric of the protocol is; ``fractions=False`` for diagnostics such as a mean cosine or a
    loss over its chance level) and write it to ``<results_dir>/<name>.csv`` atomically. Returns the path."""
    from avgn.io import atomic_write_text

    cols = tuple(df.columns)
    if cols != COLUMNS:
        raise ValueError(f"results columns must be {COLUMNS}, got {cols}; build the table with to_results()")
    vals = df["value"].astype(float)
    bad = df[vals.notna() & ((vals < 0) | (vals > 1))]
    if fractions and len(bad):
        raise ValueError(f"{name}: {len(bad)} values outside [0, 1], e.g. {bad.iloc[0].to_dict()}")
    if not all(isinstance(x, str) and x.count("/") == 2 for x in df["set"]):
        raise ValueError(f"{name}: every set must be named split/task/layout")
    path = Path(results_dir) / f"{name}.csv"
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))
    return path


def write_study_table(df: Any, out_dir: str | Path, name: str) -> Path:
    """Write a run-store study's table ``out_dir/name`` (CSV) atomically; returns its path."""
    from avgn.io import atomic_write_text

    return atomic_write_text(Path(out_dir) / name, df.to_csv(index=False))


def read_study_table(out_dir: str | Path, name: str):
    """A study table written by :func:`write_study_table` (``run`` as text, ``""`` for a non-learned source)."""
    import pandas as pd

    df = pd.read_csv(Path(out_dir) / name, keep_default_na=False, na_values=[""], dtype={"run": str})
    return df.assign(run=df["run"].fillna("")) if "run" in df.columns else df


def stored_seeds(runs: Any, prefix: str) -> list[tuple[int, Any]]:
    """``(seed, checkout)`` of the stored runs ``<prefix>/seed<N>`` among a study's ``runs``, by seed."""
    found = [(int(k.rsplit("/seed", 1)[1]), v) for k, v in runs.items() if k.split("/")[0] == prefix]
    return sorted(found, key=lambda sv: sv[0])


def read_table(path: str | Path):
    """A results CSV as written, without checking its columns: ``chapter`` and ``run`` as text (an
    empty run id stays ``""``), ``value`` as floats (NaN where empty)."""
    import pandas as pd

    return pd.read_csv(path, dtype={"chapter": str, "run": str}, keep_default_na=False, na_values={"value": ["", "nan", "NaN"]})


__all__.append("read_table")


def read_results(name: str, results_dir: str | Path = RESULTS_DIR):
    """Read ``<results_dir>/<name>.csv`` back (a missing file is an error naming the chapter to run)."""

    path = Path(results_dir) / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: execute the chapter that writes it (results/README.md)")
    df = read_table(path)
    if tuple(df.columns) != COLUMNS:
        raise ValueError(f"{path} is not a results table (columns {tuple(df.columns)})")
    return df


def mean_sd(df: Any, by: tuple[str, ...] = ("variant", "set", "mode", "metric")):
    """Mean, sample sd and number of seeds of ``value`` per group (NaN sd for a single seed)."""
    g = df.groupby(list(by), sort=False)["value"]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].where(out["count"] > 1, math.nan)
    return out


__all__.append("mean_sd")


def with_set_parts(df: Any):
    """``df`` with ``split``, ``task`` and ``layout`` columns taken from ``set`` (``split/task/layout``)."""
    parts = df["set"].str.split("/", expand=True)
    if parts.shape[1] != 3:
        raise ValueError("every set must be named split/task/layout")
    return df.assign(split=parts[0], task=parts[1], layout=parts[2])


__all__.append("with_set_parts")


def papers(paper: str | None = None):
    """The committed table of the papers' numbers (``results/papers.csv``: paper, source, table,
    dataset, method, metric, value in %), optionally the rows of papers whose name starts with ``paper``."""
    import pandas as pd

    df = pd.read_csv(RESULTS_DIR / "papers.csv")
    return df if paper is None else df[df["paper"].str.startswith(paper)].reset_index(drop=True)


__all__.append("papers")
