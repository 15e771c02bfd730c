"""The chapters' set-up in one call: :func:`chapter_context`.

Every chapter that compares methods starts the same way: seed, plotting style, the data build of its
profile (built if missing), the runs folder, the profile's seeds, the variants' runs and the
references' evaluations *read from the run store* (:mod:`avgn.store`; a chapter never trains: a run
missing from the store is an error naming its key and the command that trains it). After the
``parameters`` cell a chapter writes::

    ctx = chapter_context("03", profile, seed, device, workdir)   # data/, figures/, results/ under workdir
    ctx.run_variants(MAIN_VARIANTS)          # read from the store; the reproducing commands printed
    long = ctx.collect(MAIN_VARIANTS)        # + the references, long format, with each row's run id
    results = ctx.write(long, "03_main")     # results/03_main.csv, read back
    ctx.runs_table()                         # the chapter's last cell: every run it read, and the revision

and reads ``ctx.data``, ``ctx.runs``, ``ctx.seeds``, ``ctx.profile`` (the :class:`avgn.config.Profile`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from avgn.config import Profile, get_profile
from avgn.data.build import build_dataset, dataset_dir
from avgn.env import seed_everything
from avgn.experiment import REFERENCES
from avgnbook.pipeline import collect_references, collect_variants
from avgnbook.results import REPO_ROOT, read_results, to_results, write_results
from avgn.runs import Variant, variant_dirs
from avgn.store.queue import checkout
from avgn.store.records import RunStore
from avgn.viz import save_figure, set_style

__all__ = ["Chapter", "ChapterFigures", "ChapterPaths", "chapter_context", "code_version"]


@dataclass(frozen=True)
class ChapterPaths:
    """Where a chapter reads and writes, all under one folder ``workdir`` (a chapter's papermill
    parameter; ``..`` from ``book/`` is the repository): the benchmark builds ``data/embedded``, the
    runs checked out of the store ``data/runs``, the figures ``figures``, the result tables
    ``results``."""

    workdir: Path

    @classmethod
    def of(cls, workdir: str | Path) -> "ChapterPaths":
        return cls(Path(workdir))

    @property
    def data(self) -> Path:
        return self.workdir / "data" / "embedded"

    @property
    def runs(self) -> Path:
        return self.workdir / "data" / "runs"

    @property
    def figures(self) -> Path:
        return self.workdir / "figures"

    @property
    def results(self) -> Path:
        return self.workdir / "results"


@dataclass(frozen=True)
class ChapterFigures:
    """A chapter's figure writer: ``figures_dir/<name>.png`` and ``.svg``, stamped ``chapter NN, code
    revision REV`` (:attr:`source`), so that a check can tell which chapter wrote a figure on which
    revision (:func:`avgnbook.consistency.check_figure_sources`). Chapters that need no runs (0, 1)
    use it directly; the others through :meth:`Chapter.save_figure`."""

    chapter: str
    figures_dir: Path

    @property
    def source(self) -> str:
        from avgn.env import git_revision

        return f"chapter {self.chapter}, code revision {git_revision()}"

    def save_figure(self, fig: Any, name: str, dpi: int = 150) -> dict[str, Path]:
        if not name.startswith(f"{self.chapter}_"):
            raise ValueError(f"chapter {self.chapter}'s figures are named '{self.chapter}_...', got {name!r}")
        return save_figure(fig, name, self.figures_dir, dpi=dpi, source=self.source)


@dataclass(frozen=True)
class Chapter:
    """What a chapter works with (see the module docstring)."""

    chapter: str
    profile: Profile
    seed: int
    device: str
    data: Path
    runs: Path
    results_dir: Path
    figures_dir: Path
    progress: bool = False
    store_dir: Path | None = None
    #: key -> (label, run id) of every stored run this chapter read (:meth:`runs_table`)
    read: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def store(self) -> RunStore:
        return RunStore(self.profile.name, self.store_dir)

    def key(self, variant: Variant, seed: int) -> str:
        """The run plan's key of ``variant`` / ``seed`` (:class:`avgn.store.plan.PlannedRun`)."""
        return f"{variant.name or variant.method}/seed{seed}"

    def checkout(self, key: str) -> dict[str, Any]:
        """The stored run ``key`` materialised in :attr:`runs` (:func:`avgn.store.queue.checkout`)."""
        res = checkout(key, self.profile.name, self.runs, self.data, self.store)
        self.read[key] = (res["record"].get("label", key), res["id"])
        return res

    @property
    def seeds(self) -> list[int]:
        """The profile's training seeds (the comparison tables' mean ± sd)."""
        return list(self.profile.seeds)

    def run_dir(self, variant: Variant, seed: int | None = None) -> Path:
        """The folder holding ``variant``'s weights for ``seed`` (default: the first seed)."""
        return variant_dirs(variant, self.runs, self.profile.name, self.seeds[0] if seed is None else seed)[0]

    def eval_dir(self, variant: Variant, seed: int | None = None) -> Path:
        """The folder holding ``variant``'s evaluations for ``seed`` (its :meth:`run_dir` unless it only
        changes inference, as EZ-VSL's object prior or T-VSL's anchor maps)."""
        return variant_dirs(variant, self.runs, self.profile.name, self.seeds[0] if seed is None else seed)[1]

    def run_variants(self, variants: Sequence[Variant], seeds: Sequence[int] | None = None, verbose: bool = True,
                     eval_splits: Sequence[str] = (), eval_sets: dict[str, Sequence[str]] | None = None) -> None:
        """Read every variant's run for every seed from the store (:meth:`checkout`), printing the
        command that stored it; ``eval_splits`` / ``eval_sets`` name evaluation tags the chapter
        needs, which the stored run must carry (the plan declares them)."""
        need = list(eval_splits) + list(eval_sets or {})
        for s in self.seeds if seeds is None else seeds:
            for v in variants:
                res = self.checkout(self.key(v, s))
                lacking = [t for t in need if t not in res["record"].get("evals", {})]
                if lacking:
                    raise KeyError(f"{res['key']}: the stored run has no evaluation {lacking}; add them to its entry in "
                                   "avgnbook.plan.book_plan and run `avgn runs train`")
                if verbose:
                    print(f"{v.label} / seed {s}: run {res['id']}\n  " + "\n  ".join(res["commands"]), flush=True)

    def run_references(self, names: Sequence[str] = REFERENCES, verbose: bool = True, **kw: Any) -> None:
        """Read the non-learned references' evaluations from the store (as :meth:`run_variants`)."""
        for n in names:
            res = self.checkout(f"ref-{n}")
            if verbose:
                print(f"{n}: run {res['id']}\n  " + "\n  ".join(res["commands"]), flush=True)

    def save_figure(self, fig: Any, name: str, dpi: int = 150) -> dict[str, Path]:
        """:meth:`ChapterFigures.save_figure` of this chapter."""
        return ChapterFigures(self.chapter, self.figures_dir).save_figure(fig, name, dpi)

    def run_ids(self, frame: Any):
        """The run id of every row of a long ``frame`` (``variant`` label, ``seed``; ``-1``: a reference)
        among the runs this chapter read: for tables the chapter computes itself from checked-out runs."""
        by = {(lab, int(key.rsplit("seed", 1)[1]) if "/seed" in key else -1): rid for key, (lab, rid) in self.read.items()}
        missing = sorted({(v, int(s)) for v, s in zip(frame["variant"], frame["seed"])} - set(by))
        if missing:
            raise KeyError(f"rows of runs this chapter did not read from the store: {missing[:3]}")
        return [by[(v, int(s))] for v, s in zip(frame["variant"], frame["seed"])]

    def run_id(self, variant: Variant, seed: int) -> str:
        """The id of ``variant``'s run for ``seed`` as this chapter read it from the store."""
        key = self.key(variant, seed)
        if key not in self.read:
            raise KeyError(f"{key}: this chapter has not read it from the store (ctx.run_variants first)")
        return self.read[key][1]

    def findings(self, lines: Sequence[str]):
        """The chapter's last section "What this chapter found": ``lines`` (sentences computed from its
        results) shown as a list and written to ``results/findings_<NN>.csv`` with the code revision
        and the ids of the runs the chapter read (:mod:`avgnbook.findings`; chapter 0 collects them)."""
        from avgnbook.findings import show_findings

        return show_findings(self.chapter, lines, self.results_dir, runs=[rid for _, rid in self.read.values()])

    def claims(self, rows: Sequence[dict]):
        """The paper claims this chapter tests, one row per claim and cell
        (:func:`avgnbook.findings.claim_row`), written to ``results/claims_<NN>.csv`` (chapter 0's
        findings table reads them) and returned as the chapter shows them."""
        from avgnbook.findings import claims_table, write_claims

        return claims_table(write_claims(self.chapter, rows, self.results_dir))

    def runs_table(self):
        """The runs this chapter read (key, label, run id) and the code revision it ran on: every
        chapter's last table."""
        import pandas as pd

        from avgn.env import git_revision

        base = Path(self.store.base).resolve()
        root = REPO_ROOT
        where = base.relative_to(root) if base.is_relative_to(root) else base  # the repository's own store, as a reader's clone spells it
        print(f"code revision: {git_revision()}; run store: {where}")
        return pd.DataFrame([{"key": k, "label": lab, "run": rid} for k, (lab, rid) in sorted(self.read.items())])

    def collect(self, variants: Sequence[Variant], references: Sequence[str] = REFERENCES, split: str = "test", samples: bool = False,
                seeds: Sequence[int] | None = None):
        """The long results of ``variants`` over the seeds and of ``references`` (``seed = -1``),
        for evaluation tag ``split`` (per-source rows with ``samples=True``); a missing evaluation is
        an error naming what makes it (:meth:`run_variants`, :meth:`run_references`)."""
        import pandas as pd

        frames = []
        if variants:
            frames.append(collect_variants(variants, self.runs, self.profile.name, self.seeds if seeds is None else seeds, split=split, samples=samples))
        if references:
            frames.append(collect_references(references, self.runs, self.profile.name, split=split, samples=samples))
        return pd.concat(frames, ignore_index=True)

    def collect_where_stored(self, variants: Sequence[Variant], tag: str, references: Sequence[str] = REFERENCES):
        """:meth:`collect` of evaluation ``tag`` for the (variant, seed) runs whose stored record has it
        (the plan gives some evaluations only to the runs whose weights the store keeps): the frame's
        ``attrs["without"]`` lists the ``(variant label, seed)`` left out, so that the chapter can say so."""
        import pandas as pd

        frames, without = [], []
        for v in variants:
            for s in self.seeds:
                if tag in self.checkout(self.key(v, s))["record"].get("evals", {}):
                    frames.append(self.collect([v], (), split=tag, seeds=[s]))
                else:
                    without.append((v.label, int(s)))
        if references:
            frames.append(self.collect([], references, split=tag))
        out = pd.concat(frames, ignore_index=True)
        out.attrs["without"] = without
        return out

    def write(self, long: Any, name: str, fractions: bool = True):
        """Write ``long`` as ``results/<name>.csv`` (:func:`avgnbook.results.write_results`) and read it back."""
        print("wrote", write_results(to_results(long, self.chapter), name, self.results_dir, fractions=fractions))
        return read_results(name, self.results_dir)


def code_version() -> str:
    """``avgn <version> (git <revision>)``: the code a chapter runs on, as :func:`avgn.env.environment_report` spells it."""
    import avgn
    from avgn.env import git_revision

    return f"avgn {avgn.__version__} (git {git_revision()})"


def chapter_context(
    chapter: str,
    profile: str,
    seed: int = 0,
    device: str = "auto",
    workdir: str | Path = "..",
    progress: bool = False,
    store_dir: str | Path | None = None,
) -> Chapter:
    """Seed everything, set the plotting style, build (or reuse) the profile's data under
    ``workdir`` (:class:`ChapterPaths`) and return the chapter's :class:`Chapter`; prints one line
    saying what it uses."""
    prof = get_profile(profile)
    seed_everything(seed)
    set_style()
    paths = ChapterPaths.of(workdir)
    runs_dir, results_dir, figures_dir = paths.runs, paths.results, paths.figures
    data = dataset_dir(paths.data, profile, seed)
    build_dataset(profile=profile, seed=seed, out=data, progress=False)
    ctx = Chapter(str(chapter), prof, int(seed), device, Path(data), Path(runs_dir), Path(results_dir), Path(figures_dir), progress,
                  None if store_dir is None else Path(store_dir))
    # the code this chapter runs, as the environment report spells it (also at the end: Chapter.runs_table)
    print(f"chapter {chapter}: {code_version()}; profile {profile}, seeds {ctx.seeds}; data {data}; runs {ctx.runs}", flush=True)
    return ctx
