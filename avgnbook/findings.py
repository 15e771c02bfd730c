"""What each chapter found, in sentences computed from its results, and the book's first page that
collects them.

Every chapter ends with a section "What this chapter found": a few sentences, each built from the
chapter's result tables (never typed), shown as a list and written to
``results/findings_<NN>.csv`` (one row per sentence: ``chapter, item, finding, revision, runs`` —
the code revision the chapter ran on and the ids of the stored runs it read). Chapter 0, executed
after the others, prints every chapter's findings (:func:`read_findings`, :func:`findings_markdown`)
and says which chapter has none yet or ran on another revision.

The learning targets of the book's AVGN (:data:`LEARNING_TARGETS`, :func:`learning_targets`) are
checked per seed on the test split: chapter 2 reports them, chapter 0 repeats the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["claim_row", "write_claims", "read_claims", "claims_table", "versus", "FINDINGS_GLOB", "findings_path", "write_findings", "read_findings", "findings_markdown", "show_findings",
           "Target", "LEARNING_TARGETS", "learning_targets", "targets_sentence"]

#: The chapters' findings files in a results folder.
FINDINGS_GLOB = "findings_[0-9][0-9].csv"


def findings_path(chapter: str, results_dir: str | Path) -> Path:
    """``results_dir/findings_<chapter>.csv``."""
    if not (len(chapter) == 2 and chapter.isdigit()):
        raise ValueError(f"a chapter is named by two digits ('03'), got {chapter!r}")
    return Path(results_dir) / f"findings_{chapter}.csv"


def write_findings(chapter: str, lines: Sequence[str], results_dir: str | Path, runs: Sequence[str] = (), revision: str | None = None):
    """Write chapter ``chapter``'s findings (``lines``, one sentence each) atomically to
    :func:`findings_path` with the code revision (default: the working tree's) and the run ids it read;
    returns the table."""
    import pandas as pd

    from avgn.checkpoint import atomic_write_text
    from avgn.env import git_revision

    lines = [str(x).strip() for x in lines]
    if not lines or any(not x for x in lines):
        raise ValueError(f"chapter {chapter}: findings are non-empty sentences, got {list(lines)!r}")
    rev = revision or git_revision()
    df = pd.DataFrame({"chapter": chapter, "item": range(1, len(lines) + 1), "finding": lines, "revision": rev,
                       "runs": " ".join(sorted(set(runs)))})
    path = findings_path(chapter, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, df.to_csv(index=False))
    return df


def read_findings(results_dir: str | Path):
    """Every chapter's findings in ``results_dir`` (chapter order), one row per sentence."""
    import pandas as pd

    files = sorted(Path(results_dir).glob(FINDINGS_GLOB))
    if not files:
        return pd.DataFrame(columns=["chapter", "item", "finding", "revision", "runs"])
    df = pd.concat([pd.read_csv(p, dtype={"chapter": str, "revision": str, "runs": str}, keep_default_na=False) for p in files],
                   ignore_index=True)
    return df.sort_values(["chapter", "item"], kind="stable").reset_index(drop=True)


def findings_markdown(df, chapters: Sequence[str] = (), titles: dict[str, str] | None = None, revision: str | None = None) -> str:
    """Markdown of :func:`read_findings`' table: per chapter a heading and its sentences; a chapter of
    ``chapters`` without findings, or whose findings were written on another revision than
    ``revision``, is said so in its place."""
    titles = titles or {}
    out: list[str] = []
    have = set(df["chapter"]) if len(df) else set()
    for ch in sorted(set(chapters) | have):
        name = f"Chapter {int(ch)}" + (f" — {titles[ch]}" if ch in titles else "")
        if ch not in have:
            out.append(f"**{name}**: not executed on this run store yet (no `findings_{ch}.csv`).")
            continue
        part = df[df["chapter"] == ch]
        revs = sorted(set(part["revision"]))
        note = "" if revision is None or revs == [revision] else f" *(executed on revision {', '.join(revs)}, not {revision})*"
        out.append(f"**{name}**{note}\n" + "\n".join(f"- {x}" for x in part["finding"]))
    return "\n\n".join(out)


def show_findings(chapter: str, lines: Sequence[str], results_dir: str | Path, runs: Sequence[str] = ()):
    """Write the findings (:func:`write_findings`) and display them as a list (a chapter's last
    section); returns the table."""
    from IPython.display import Markdown, display

    df = write_findings(chapter, lines, results_dir, runs)
    display(Markdown("\n".join(f"- {x}" for x in df["finding"])))
    return df


def versus(c: dict, scale: float = 100.0, unit: str = " points") -> str:
    """A :func:`avgnbook.analysis.compare_seeds` result as a phrase about ``a``: ``above EZ-VSL (+3.1
    points, 4.2 sd)``, ``below ...``, ``within noise of ...`` (the book's rule: beyond 2 sd, 3 seeds)."""
    m = c["margin_sd"]
    sd = "" if m != m else (", every seed alike" if m in (float("inf"), float("-inf")) else f", {abs(m):.1f} sd")
    head = {"above": "above", "below": "below"}.get(c["verdict"], "within noise of")
    return f"{head} {c['b']} ({scale * c['diff']:+.1f}{unit}{sd})"


# --------------------------------------------------------------------------------------------------
# the papers' claims, one row per claim and cell
# --------------------------------------------------------------------------------------------------
CLAIMS_GLOB = "claims_[0-9][0-9].csv"
_CLAIM_COLUMNS = ("chapter", "paper", "claim", "cell", "a", "b", "mean_a", "mean_b", "diff", "sd", "margin_sd", "seeds", "verdict",
                  "revision")


def claim_row(paper: str, claim: str, c: dict, mode: str | None = None) -> dict:
    """One row of the claims table from a :func:`avgnbook.analysis.compare_seeds` result ``c`` (``a``
    against ``b`` on one cell, paired by seed): the paper, the claim, the cell (set, metric and
    selection mode) and the verdict by the book's rule (beyond 2 sd with at least 3 seeds)."""
    cell = f"{c['set']} {c['metric']}" + (f" ({mode})" if mode else "")
    return {"paper": paper, "claim": claim, "cell": cell, **{k: c[k] for k in ("a", "b", "mean_a", "mean_b", "diff", "sd", "margin_sd",
                                                                                "seeds", "verdict")}}


def write_claims(chapter: str, rows: Sequence[dict], results_dir: str | Path, revision: str | None = None):
    """Write chapter ``chapter``'s claim rows (:func:`claim_row`) to ``results/claims_<NN>.csv``
    atomically, with the code revision; returns the table."""
    import pandas as pd

    from avgn.checkpoint import atomic_write_text
    from avgn.env import git_revision

    if not rows:
        raise ValueError(f"chapter {chapter}: no claim rows to write")
    df = pd.DataFrame(list(rows)).assign(chapter=chapter, revision=revision or git_revision())
    df = df[list(_CLAIM_COLUMNS)]
    path = findings_path(chapter, results_dir).with_name(f"claims_{chapter}.csv")
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))
    return df


def read_claims(results_dir: str | Path):
    """Every chapter's claim rows in ``results_dir`` (chapter order)."""
    import pandas as pd

    files = sorted(Path(results_dir).glob(CLAIMS_GLOB))
    if not files:
        return pd.DataFrame(columns=list(_CLAIM_COLUMNS))
    return pd.concat([pd.read_csv(p, dtype={"chapter": str, "revision": str}) for p in files], ignore_index=True)


def mixed_verdict(above: int, within: int, below: int) -> str:
    """The verdict of a claim whose cells disagree, with the counts: ``partly`` when some cells hold
    beyond noise and none fails beyond it, ``does not reproduce where beyond noise`` when some fail
    beyond noise and none holds beyond it, ``mixed`` when both happen."""
    parts = ", ".join(f"{n} {k}" for n, k in ((above, "above"), (within, "within noise"), (below, "below")) if n)
    if above and not below:
        return f"partly ({parts})"
    if below and not above:
        return f"does not reproduce where beyond noise ({parts})"
    return f"mixed ({parts})"


def _claim_verdict(verdicts: Sequence[str]) -> str:
    v = set(verdicts)
    if v == {"above"}:
        return "reproduces"
    if v == {"below"}:
        return "does not reproduce (the opposite, beyond noise)"
    if v == {"within noise"}:
        return "within noise"
    return mixed_verdict(*(sum(x == k for x in verdicts) for k in ("above", "within noise", "below")))


def claims_table(df, scale: float = 100.0):
    """The first page's table: one row per (paper, claim) — its chapter, the verdict over its cells
    (``reproduces`` only when every cell is above beyond 2 sd with at least 3 seeds; ``within noise``
    when none is beyond; ``partly`` otherwise, with the counts), the cells' differences as
    ``diff ± sd`` in points (with the rival named when a claim has several) and the fewest seeds."""
    import pandas as pd

    if df.empty:
        return pd.DataFrame(columns=["paper", "claim", "chapter", "verdict", "difference ± sd (points), per cell", "seeds"])
    rows = []
    for (paper, claim), g in df.groupby(["paper", "claim"], sort=False):
        rivals = g["b"].nunique() > 1  # name the rival of each cell when the claim has several
        cells = "; ".join(f"{r.cell}" + (f" vs {r.b}" if rivals else "") + f": {scale * r.diff:+.1f}"
                          + ("" if pd.isna(r.sd) else f" ± {scale * r.sd:.1f}") for r in g.itertuples())
        rows.append({"paper": paper, "claim": claim, "chapter": int(g["chapter"].iloc[0]), "verdict": _claim_verdict(list(g["verdict"])),
                     "difference ± sd (points), per cell": cells, "seeds": int(g["seeds"].min())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# the learning targets of the book's AVGN
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One learning target on a test set: ``metric`` (``presence_f1``, ``gap``: oracle minus
    predicted CAP, ``over_object``: oracle CAP minus the object prior's) compared with ``bound``
    (``at_least`` or ``at_most``), in fractions."""

    name: str
    metric: str
    bound: float
    sense: str = "at_least"

    def met(self, value: float) -> bool:
        return bool(value >= self.bound) if self.sense == "at_least" else bool(value <= self.bound)


#: Issue 31's targets for the book's AVGN, on the test duets (scene and concat), every seed.
LEARNING_TARGETS: tuple[Target, ...] = (
    Target("presence F1 >= 0.85", "presence_f1", 0.85),
    Target("predicted-to-oracle CAP gap <= 5 points", "gap", 0.05, "at_most"),
    Target("oracle CAP >= object prior + 15 points", "over_object", 0.15),
)


def learning_targets(results, variant: str = "AVGN", object_label: str = "object prior",
                     sets: Sequence[str] = ("test/duet/scene", "test/duet/concat"), targets: Sequence[Target] = LEARNING_TARGETS):
    """Each target on each set for each seed of ``variant`` in the long results table ``results``
    (rows ``variant, seed, set, mode, metric, value``; the object prior a reference row of
    ``object_label``): ``target, set, seed, value, bound, met``."""
    import pandas as pd

    def cell(v: str, s: str, mode: str, metric: str):
        sel = results[(results["variant"] == v) & (results["set"] == s) & (results["mode"] == mode) & (results["metric"] == metric)]
        return sel.groupby("seed")["value"].mean()

    rows = []
    for s in sets:
        obj = cell(object_label, s, "oracle", "cap")
        if len(obj) != 1:
            raise ValueError(f"learning_targets: the results have {len(obj)} rows of {object_label!r} CAP on {s}; expected the one reference row")
        oracle, pred, f1 = cell(variant, s, "oracle", "cap"), cell(variant, s, "predicted", "cap"), cell(variant, s, "predicted", "presence_f1")
        if oracle.empty:
            raise ValueError(f"learning_targets: no {variant!r} rows on {s}")
        values = {"presence_f1": f1, "gap": oracle - pred, "over_object": oracle - float(obj.iloc[0])}
        for t in targets:
            for seed, x in values[t.metric].items():
                rows.append({"target": t.name, "set": s, "seed": int(seed), "value": float(x), "bound": t.bound, "met": t.met(float(x))})
    return pd.DataFrame(rows)


def targets_sentence(table, variant: str = "AVGN") -> str:
    """One sentence of :func:`learning_targets`' table: which targets every seed meets on every set,
    and for the others the per-seed values (points or F1)."""
    met, missed = [], []
    for (name, s), g in table.groupby(["target", "set"], sort=False):
        scale, unit = (1.0, "") if "F1" in name else (100.0, " points")
        vals = "/".join(f"{scale * v:.3f}" if not unit else f"{scale * v:.1f}" for v in g.sort_values("seed")["value"])
        (met if g["met"].all() else missed).append(f"{name} on {s.split('/')[-1]} ({vals}{unit}, seeds {'/'.join(map(str, sorted(g['seed'])))})")
    n = table["seed"].nunique()
    head = f"{variant} on {n} seed{'s' if n != 1 else ''}: "
    parts = []
    if met:
        parts.append("meets " + "; ".join(met))
    if missed:
        parts.append(("misses " if not met else "but misses ") + "; ".join(missed))
    return head + ", ".join(parts) + "."
