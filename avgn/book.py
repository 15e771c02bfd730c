"""The chapters' set-up in one call: :func:`chapter_context`.

Every chapter that compares methods starts the same way: seed, plotting style, the data build of its
profile (built if missing), the runs folder, the profile's seeds, the variants' runs trained or
reused, the references evaluated. After the ``parameters`` cell a chapter writes::

    ctx = chapter_context("03", profile, seed, device, data_dir, runs_dir, results_dir, figures_dir)
    ctx.run_variants(MAIN_VARIANTS)          # trained or reused; the reproducing commands printed
    long = ctx.collect(MAIN_VARIANTS)        # + the references, long format
    results = ctx.write(long, "03_main")     # results/03_main.csv, read back

and reads ``ctx.data``, ``ctx.runs``, ``ctx.seeds``, ``ctx.profile`` (the :class:`avgn.config.Profile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from avgn.config import Profile, get_profile
from avgn.data.build import build_dataset, dataset_dir
from avgn.env import seed_everything
from avgn.experiment import REFERENCES
from avgn.pipeline import collect_references, collect_variants, run_reference, run_variant
from avgn.results import RESULTS_DIR, read_results, to_results, write_results
from avgn.runs import Variant, variant_dirs
from avgn.viz import set_style

__all__ = ["Chapter", "chapter_context"]


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

    @property
    def seeds(self) -> list[int]:
        """The profile's training seeds (the comparison tables' mean ± sd)."""
        return list(self.profile.seeds)

    def run_dir(self, variant: Variant, seed: int | None = None) -> Path:
        """The folder holding ``variant``'s weights for ``seed`` (default: the first seed)."""
        return variant_dirs(variant, self.runs, self.profile.name, self.seeds[0] if seed is None else seed)[0]

    def run_variants(self, variants: Sequence[Variant], seeds: Sequence[int] | None = None, verbose: bool = True, **kw: Any) -> None:
        """Train (or reuse) and evaluate every variant for every seed, seed by seed
        (:func:`avgn.pipeline.run_variant`; ``kw``: ``eval_splits``, ``eval_sets``), printing the
        commands that reproduce each run and its evaluations."""
        for s in self.seeds if seeds is None else seeds:
            for v in variants:
                res = run_variant(v, self.profile.name, s, self.data, self.runs, device=self.device, progress=self.progress, **kw)
                if verbose:
                    print(f"{v.label} / seed {s}:\n  " + "\n  ".join(res["commands"]), flush=True)

    def run_references(self, names: Sequence[str] = REFERENCES, verbose: bool = True, **kw: Any) -> None:
        """Evaluate the non-learned references (:func:`avgn.pipeline.run_reference`; ``kw``:
        ``eval_splits``, ``eval_sets``), printing their commands."""
        for n in names:
            res = run_reference(n, self.profile.name, self.data, self.runs, device=self.device, progress=self.progress, **kw)
            if verbose:
                print(f"{n}:\n  " + "\n  ".join(res["commands"]), flush=True)

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

    def write(self, long: Any, name: str, fractions: bool = True):
        """Write ``long`` as ``results/<name>.csv`` (:func:`avgn.results.write_results`) and read it back."""
        print("wrote", write_results(to_results(long, self.chapter), name, self.results_dir, fractions=fractions))
        return read_results(name, self.results_dir)


def chapter_context(
    chapter: str,
    profile: str,
    seed: int = 0,
    device: str = "auto",
    data_dir: str | Path = "../data/embedded",
    runs_dir: str | Path = "../data/runs",
    results_dir: str | Path = RESULTS_DIR,
    figures_dir: str | Path = "../figures",
    progress: bool = False,
) -> Chapter:
    """Seed everything, set the plotting style, build (or reuse) the profile's data and return the
    chapter's :class:`Chapter`; prints one line saying what it uses."""
    prof = get_profile(profile)
    seed_everything(seed)
    set_style()
    data = dataset_dir(data_dir, profile, seed)
    build_dataset(profile=profile, seed=seed, out=data, progress=False)
    ctx = Chapter(str(chapter), prof, int(seed), device, Path(data), Path(runs_dir), Path(results_dir), Path(figures_dir), progress)
    print(f"chapter {chapter}: profile {profile}, seeds {ctx.seeds}; data {data}; runs {ctx.runs}", flush=True)
    return ctx
