"""Consistency of the book with its run store (what ``make test`` checks on the committed files).

* :func:`check_run_ids` — (a) across all ``results/*.csv``, each (method, variant, seed) of a
  learned method comes from exactly one run id;
* :func:`check_runs_current` — (b) every run id in the results has a record in the store whose id is
  what the current code and plan compute for its key (a stale run names the command that retrains it);
* :func:`check_reevaluation` — (c) re-evaluating a stored run from its stored weights reproduces its
  record's numbers; :func:`check_chapter_reproduces` — a chapter executed from the committed store
  reproduces its committed results tables;
* :func:`check_clean_revisions` — (d) every committed chapter printed the code revision it ran on,
  and it was a clean one.

Each returns a list of one-line problems (empty: consistent); ``tests/test_consistency.py`` runs them
on the committed book and shows that each fails on a deliberately broken copy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from avgnbook.results import REPO_ROOT, read_table

__all__ = ["check_run_ids", "check_runs_current", "check_reevaluation", "check_clean_revisions", "check_figure_sources", "check_chapter_reproduces",
           "REVISION_LINE", "FIGURE_REFERENCE", "FIGURE_SOURCE"]

#: What :meth:`avgnbook.chapter.Chapter.runs_table` prints (and chapters without runs print themselves).
REVISION_LINE = re.compile(r"code revision: ([0-9a-f]{7,40}(?:-dirty)?|unknown)")


def _results(results_dir: Path):
    import pandas as pd

    frames = []
    for p in sorted(Path(results_dir).glob("[0-9][0-9]_*.csv")):  # the chapters' tables (not papers.csv)
        df = read_table(p)
        frames.append(df.assign(file=p.name, has_run="run" in df.columns))
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    out["run"] = out["run"].fillna("").astype(str) if "run" in out.columns else ""
    return out


def check_run_ids(results_dir: str | Path) -> list[str]:
    """(a) Each (method, variant, seed) of a learned method has exactly one, non-empty run id."""
    from avgn.methods import list_methods

    df = _results(Path(results_dir))
    problems: list[str] = []
    if df.empty:
        return problems
    for name, part in df.groupby("file"):
        if not part["has_run"].iloc[0]:
            problems.append(f"{results_dir}/{name}: no 'run' column (written before the run store): execute its chapter from the store")
    learned = df[df["method"].isin(list_methods(learned=True)) & df["has_run"]]
    for (method, variant, seed), g in learned.groupby(["method", "variant", "seed"]):
        ids = sorted(set(g["run"]) - {""})
        files = ", ".join(sorted(set(g["file"])))
        if "" in set(g["run"]):
            problems.append(f"{files}: rows of {variant!r} seed {seed} without a run id")
        if len(ids) > 1:
            problems.append(f"{files}: {variant!r} ({method}) seed {seed} comes from {len(ids)} runs ({', '.join(ids)}); "
                            "execute the chapters from one store")
    return problems


def check_runs_current(results_dir: str | Path, profile: str, store: Any = None, data_dir: str | Path | None = None,
                       plan: dict[str, Any] | None = None) -> list[str]:
    """(b) Every run id in the results belongs to a sound store record that is current."""
    from avgn.store.queue import plan_status
    from avgn.store.records import RunStore, train_command

    df = _results(Path(results_dir))
    if df.empty:
        return []
    store = store or RunStore(profile)
    status = plan_status(profile, store, data_dir, plan=plan)
    by_stored = {r["stored_id"]: r for _, r in status.iterrows() if r["stored_id"]}
    problems = []
    for rid, g in df[df["run"] != ""].groupby("run"):
        files = ", ".join(sorted(set(g["file"])))
        row = by_stored.get(rid)
        if row is None:
            problems.append(f"{files}: run {rid} has no record in {store.base}: execute the chapter from the store")
        elif row["state"] in ("stale", "broken"):
            problems.append(f"{files}: run {rid} ({row['key']}) is {row['state']}: `{train_command(row['key'], profile)}`, "
                            "then execute the chapter again")
    return problems


def check_reevaluation(key: str, profile: str, data_dir: str | Path, runs_dir: str | Path, tag: str = "test", store: Any = None,
                       tol: float = 1e-4, device: str = "cpu", plan: dict[str, Any] | None = None) -> list[str]:
    """(c) Re-evaluate the stored run ``key`` on its evaluation ``tag`` from its stored weights; every
    metric must equal the record's to ``tol``."""
    from avgn.evaluate import evaluate_run
    from avgn.store.queue import checkout

    res = checkout(key, profile, runs_dir, data_dir, store, plan)
    kept = json.loads((Path(res["run_dir"]) / f"eval_{tag}.json").read_text())
    sets = kept["sets"]
    again = evaluate_run(res["run_dir"], kept["split"].split("+") if "+" in kept["split"] else kept["split"], sets=sets, device=device,
                         progress=False, write=False, data_dir=data_dir)
    problems = []
    for name, modes in kept["results"].items():
        for mode, metrics in modes.items():
            for metric, v in metrics.items():
                if not isinstance(v, (int, float)) or v != v:
                    continue
                w = again["results"].get(name, {}).get(mode, {}).get(metric)
                if w is None or abs(float(w) - float(v)) > tol:
                    problems.append(f"{key} ({res['id']}) {name}/{mode}/{metric}: stored {v:.6g}, re-evaluated {w}")
    return problems


def check_clean_revisions(book_dir: str | Path, names: Sequence[str] | None = None) -> list[str]:
    """(d) Every executed chapter in ``book_dir`` printed ``code revision: <rev>`` and ``rev`` is clean."""
    problems = []
    for p in sorted(Path(book_dir).glob("*.ipynb")):
        if names is not None and p.stem not in names:
            continue
        revs = _notebook_revisions(json.loads(p.read_text()))
        if not revs:
            problems.append(f"{p}: prints no 'code revision:' line (execute it with the current chapter code)")
        for r in sorted(revs):
            if r.endswith("-dirty") or r == "unknown":
                problems.append(f"{p}: executed on {r}: commit the code, then execute the chapter on the clean revision")
        if len({r.removesuffix('-dirty') for r in revs}) > 1:
            problems.append(f"{p}: executed on several revisions ({', '.join(sorted(revs))})")
    return problems


#: A figure a chapter shows: ``../figures/<name>.png`` in a markdown cell.
FIGURE_REFERENCE = re.compile(r"\.\./figures/([A-Za-z0-9][A-Za-z0-9_.-]*\.png)")
#: What :meth:`avgnbook.chapter.Chapter.save_figure` stamps into a figure.
FIGURE_SOURCE = re.compile(r"^chapter (\d\d), code revision (\S+)$")


def _notebook_revisions(nb: dict[str, Any]) -> set[str]:
    revs: set[str] = set()
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", [])) + "".join(out.get("data", {}).get("text/plain", []))
            revs |= set(REVISION_LINE.findall(text))
    return revs


def check_figure_sources(book_dir: str | Path, figures_dir: str | Path, names: Sequence[str] | None = None) -> list[str]:
    """(e) Every figure an executed chapter of ``book_dir`` shows (``../figures/<name>.png`` in its
    markdown) exists in ``figures_dir`` and was written by that chapter on the revision the chapter
    printed (the figure's ``Source`` stamp, :meth:`avgnbook.chapter.Chapter.save_figure`)."""
    from avgn.viz import figure_source

    problems = []
    for p in sorted(Path(book_dir).glob("*.ipynb")):
        if names is not None and p.stem not in names:
            continue
        nb = json.loads(p.read_text())
        chapter = p.stem[:2]
        revs = _notebook_revisions(nb)
        shown = sorted({m for cell in nb.get("cells", []) if cell.get("cell_type") == "markdown"
                        for m in FIGURE_REFERENCE.findall("".join(cell.get("source", [])))})
        for fig in shown:
            path = Path(figures_dir) / fig
            if not path.is_file():
                problems.append(f"{p}: shows {path}, which does not exist: execute the chapter ({p.stem})")
                continue
            m = FIGURE_SOURCE.match(figure_source(path) or "")
            if m is None:
                problems.append(f"{p}: {path} carries no 'chapter NN, code revision REV' stamp: execute the chapter ({p.stem}), saving through avgnbook.chapter (ctx.save_figure)")
            elif m.group(1) != chapter:
                problems.append(f"{p}: {path} was written by chapter {m.group(1)}, not {chapter}: execute chapter {chapter} ({p.stem})")
            elif m.group(2) not in revs:
                problems.append(f"{p}: {path} was written on revision {m.group(2)}, the chapter ran on {', '.join(sorted(revs)) or 'no printed revision'}: "
                                f"execute the chapter ({p.stem}) again")
    return problems


def check_chapter_reproduces(stem: str, profile: str, work: str | Path, root: str | Path | None = None, tol: float = 1e-6) -> list[str]:
    """(c) Execute chapter ``stem`` (``notebooks/<stem>.py``) with papermill on ``profile`` from the
    committed store, writing its results into ``work/results``, and compare every table it writes
    with the committed ``results/<name>.csv``: the same rows (chapter, variant, method, seed, run,
    set, mode, metric) and values to ``tol`` (its ``findings_`` / ``claims_`` files are derived from
    those tables and not compared)."""
    import jupytext
    import papermill

    root = Path(root) if root is not None else REPO_ROOT
    work = Path(work)
    (work / "results").mkdir(parents=True, exist_ok=True)
    nb = work / f"{stem}.ipynb"
    jupytext.write(jupytext.read(root / "notebooks" / f"{stem}.py"), nb)
    data = work / "data" / "embedded"  # the repository's data builds, read in place (avgnbook.chapter.ChapterPaths)
    data.parent.mkdir(parents=True, exist_ok=True)
    if not data.exists():
        data.symlink_to((root / "data" / "embedded").resolve(), target_is_directory=True)
    params = {"profile": profile, "workdir": str(work)}
    papermill.execute_notebook(str(nb), str(work / f"{stem}.out.ipynb"), parameters=params, cwd=str(work), progress_bar=False,
                               kernel_name="python3", language="python")
    problems = []
    # the findings and claims a chapter writes are sentences and verdicts computed from these tables (and stamped
    # with the revision): the tables are what must reproduce
    written = sorted(p for p in (work / "results").glob("*.csv") if not p.name.startswith(("findings_", "claims_")))
    if not written:
        problems.append(f"{stem}: wrote no results table")
    keys = ["chapter", "variant", "method", "seed", "run", "set", "mode", "metric"]
    for p in written:
        committed = root / "results" / p.name
        if not committed.is_file():
            problems.append(f"{stem}: wrote {p.name}, which is not committed in results/")
            continue
        a, b = read_table(committed), read_table(p)
        m = a.merge(b, on=keys, how="outer", suffixes=("_committed", "_now"), indicator=True)
        only = m[m["_merge"] != "both"]
        if len(only):
            problems.append(f"results/{p.name}: {len(only)} rows differ between the committed table and the re-execution "
                            f"(e.g. {only.iloc[0][keys].to_dict()})")
        both = m[m["_merge"] == "both"]
        diff = (both["value_committed"] - both["value_now"]).abs()
        bad = both[(diff > tol) | (both["value_committed"].isna() != both["value_now"].isna())]
        if len(bad):
            r = bad.iloc[0]
            problems.append(f"results/{p.name}: {len(bad)} values differ (e.g. {r['variant']} {r['set']} {r['mode']} {r['metric']}: "
                            f"{r['value_committed']} committed, {r['value_now']} now)")
    return problems
