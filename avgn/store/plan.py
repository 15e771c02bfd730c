"""The run plan: one declaration of every run the book reads, and each run's identity.

A :class:`PlannedRun` is one (variant, seed) of a profile with the evaluations the chapters read
from it. Its **key** is a name a chapter asks for (``"avgn/seed0"``, ``"ezvsl-ogl/seed1"``,
``"ref-centre"``); its **id** is a content hash of what the run *is*:

* the variant's full resolved experiment (:meth:`avgn.experiment.Experiment.fingerprint`'s dict:
  every model, training, input and protocol field, not only the overrides),
* the seed,
* the identity of the data build it trains on (:func:`build_identity`: profile, build seed, the
  build's settings, the installed assets' hash, the build format),
* the method's training-code version (:attr:`avgn.methods.base.Method.version`; bumped when a
  method's behaviour changes, guarded by ``tests/test_store.py``'s smoke-history digests),
* for a second stage (DSOL), the id of the run it starts from; for an inference-time variant, the
  id of the run whose weights it scores and its changes.

So the same key under changed code, configuration or data is a different run, and a stored record
whose id differs from what the current plan computes is *stale*.

Evaluations are versioned separately (:data:`avgn.evaluate.EVAL_VERSION`): a new metric re-scores
stored weights without retraining.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from avgn.data.config import DATA_PROFILES
from avgn.experiment import REFERENCES, get_experiment
from avgn.methods import get_method
from avgn.runs import (
    ASSIGNMENT_VARIANTS,
    BASELINE_DESIGN_VARIANTS,
    DEPTH_VARIANTS,
    DSOL_STAGE1_VARIANT,
    DSOL_VARIANT,
    LOSS_VARIANTS,
    MAIN_VARIANTS,
    PAPER_DESIGN_VARIANT,
    SHORT_VARIANT,
    TVSL_HELDOUT_CANDIDATES,
    TVSL_VARIANTS,
    WIDTH_VARIANTS,
    Variant,
)

__all__ = ["Evaluation", "PlannedRun", "build_identity", "build_id", "book_plan", "run_identity", "run_id", "PlanKeyError",
           "SHIFT_SPLITS", "COMPOSED_SETS", "ZEROSHOT_SPLIT"]

#: Chapter 5: the domain-shift test splits.
SHIFT_SPLITS: tuple[str, ...] = ("test_style", "test_audio", "test_real")
#: Chapters 5 and 7: 3 and 4 sources side by side, composed from test scenes.
COMPOSED_SETS: tuple[str, ...] = ("test/trio/concat", "test/quartet/concat")
#: Chapter 9: the held-out (zero-shot) classes' test split.
ZEROSHOT_SPLIT = "test_zeroshot"


class PlanKeyError(KeyError):
    """A key the plan does not declare."""

    def __str__(self) -> str:  # KeyError quotes its argument; this one is a sentence
        return str(self.args[0])


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run: ``eval_<tag>.*`` over ``split``'s sets, or over ``sets`` only."""

    tag: str
    split: str
    sets: tuple[str, ...] | None = None


def _evals(*tags: str, composed: bool = False) -> tuple[Evaluation, ...]:
    out = [Evaluation(t, t) for t in tags]
    if composed:
        out.append(Evaluation("composed", "test", COMPOSED_SETS))
    return tuple(out)


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan.

    Attributes:
        variant: what is trained (or, for an inference-time variant, how stored weights are scored).
        seed: the training seed (-1 for a reference).
        profile: the profile (``smoke`` | ``cpu`` | ``gpu``).
        evals: the evaluations the chapters read from it.
        chapters: the chapters that read it (for ``avgn runs status`` and the chapters' run tables).
        reference: a non-learned reference's name (then ``variant`` is None).
    """

    variant: Variant | None
    seed: int
    profile: str
    evals: tuple[Evaluation, ...]
    chapters: tuple[str, ...] = ()
    reference: str | None = None

    @property
    def key(self) -> str:
        if self.reference:
            return f"ref-{self.reference}"
        assert self.variant is not None
        return f"{self.variant.name or self.variant.method}/seed{self.seed}"

    @property
    def label(self) -> str:
        return get_method(self.reference).label if self.reference else self.variant.label  # type: ignore[union-attr]

    @property
    def method(self) -> str:
        return self.reference or self.variant.method  # type: ignore[union-attr]

    @property
    def trains(self) -> bool:
        """Whether the run trains weights of its own (not a reference, not an inference-time variant)."""
        return self.reference is None and not self.variant.eval_overrides  # type: ignore[union-attr]

    @property
    def weights_key(self) -> str | None:
        """The key whose weights this run scores (itself when it trains; None for a reference)."""
        if self.reference:
            return None
        if self.trains:
            return self.key
        tv = self.variant.training  # type: ignore[union-attr]
        return f"{tv.name or tv.method}/seed{self.seed}"

    @property
    def init_key(self) -> str | None:
        """The key of the run this one starts from (a second training stage), else None."""
        v = self.variant
        if v is None or v.init_from is None:
            return None
        return f"{v.init_from.name or v.init_from.method}/seed{self.seed}"

    def experiment(self):
        """The resolved :class:`avgn.experiment.Experiment` this run trains (None for a reference)."""
        if self.reference:
            return None
        tv = self.variant.training  # type: ignore[union-attr]
        return get_experiment(tv.method, self.profile, **dict(tv.overrides))


# --------------------------------------------------------------------------------------------------
# identities
# --------------------------------------------------------------------------------------------------
def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@lru_cache(maxsize=8)
def _catalog_sha(profile: str) -> str:
    from avgn.data.build import CatalogProvider, catalog_fingerprint, collect_universe

    return catalog_fingerprint(collect_universe(DATA_PROFILES[profile], CatalogProvider()))


def build_identity(profile: str, data_dir: str | Path | None = None, *, config: Any = None, provider: Any = None) -> dict[str, Any]:
    """What identifies the data build of ``profile`` (seed 0): exactly the fields
    :func:`avgn.data.build.build_dataset` records (format, profile, seed, settings, the installed
    assets' hash). Read from ``data_dir/build.json`` when it is given and exists, computed from the
    installed assets otherwise (the two agree: ``tests/test_store.py``); ``config`` / ``provider``
    replace the profile's :class:`~avgn.data.config.DataConfig` and the asset provider (tests)."""
    from avgn.data.build import FORMAT_VERSION, catalog_fingerprint, collect_universe

    if data_dir is not None and (Path(data_dir) / "build.json").is_file():
        info = json.loads((Path(data_dir) / "build.json").read_text())
        return {k: info.get(k) for k in ("format_version", "profile", "seed", "config", "catalog_sha256")}
    cfg = config if config is not None else DATA_PROFILES[profile]
    sha = _catalog_sha(profile) if config is None and provider is None else catalog_fingerprint(collect_universe(cfg, provider))
    return {"format_version": FORMAT_VERSION, "profile": profile, "seed": 0, "config": cfg.to_dict(), "catalog_sha256": sha}


def build_id(identity: dict[str, Any]) -> str:
    """16 hex digits of :func:`build_identity`."""
    return _sha(identity)[:16]


def run_identity(run: PlannedRun, plan: dict[str, PlannedRun], build: dict[str, Any]) -> dict[str, Any]:
    """The content :func:`run_id` hashes (see the module docstring)."""
    from avgn.evaluate import EVAL_VERSION

    if run.reference:
        return {"reference": run.reference, "profile": run.profile, "build": build_id(build), "eval_version": EVAL_VERSION}
    if not run.trains:
        base = plan[run.weights_key]  # type: ignore[index]
        return {"weights_of": run_id(base, plan, build), "eval_overrides": [list(kv) for kv in run.variant.eval_overrides]}  # type: ignore[union-attr]
    exp = run.experiment()
    d = exp.to_dict()
    ident = {
        "method": run.method,
        "method_version": get_method(run.method).version,
        "experiment": _fingerprint_dict(exp),
        "seed": int(run.seed),
        "build": build_id(build),
    }
    if run.init_key:
        ident["init_from"] = run_id(plan[run.init_key], plan, build)
    del d
    return ident


def _fingerprint_dict(exp: Any) -> dict[str, Any]:
    """The experiment as :meth:`~avgn.experiment.Experiment.fingerprint` hashes it (what changes a
    run; how it is loaded or checkpointed does not)."""
    return json.loads(exp.fingerprint_json())


def run_id(run: PlannedRun, plan: dict[str, PlannedRun], build: dict[str, Any]) -> str:
    """16 hex digits of :func:`run_identity`."""
    return _sha(run_identity(run, plan, build))[:16]


# --------------------------------------------------------------------------------------------------
# the book's plan
# --------------------------------------------------------------------------------------------------
def book_plan(profile: str = "cpu") -> dict[str, PlannedRun]:
    """Every run chapters 00-09 read under ``profile``, by key, in training priority order (the
    main comparison first, then what each later chapter adds)."""
    from avgn.config import get_profile

    seeds = tuple(get_profile(profile).seeds)
    main_evals = _evals("test", *SHIFT_SPLITS, ZEROSHOT_SPLIT, composed=True)
    runs: list[PlannedRun] = []

    def add(variants: tuple[Variant, ...], evals: tuple[Evaluation, ...], chapters: tuple[str, ...], seed_list=seeds) -> None:
        for s in seed_list:
            for v in variants:
                runs.append(PlannedRun(v, int(s), profile, evals, chapters))

    # priority: what the book's next changes cannot make stale first (the references, the class-agnostic
    # baselines), then AVGN, its variants, and DSOL / T-VSL (being fixed) last
    for name in REFERENCES:
        runs.append(PlannedRun(None, -1, profile, main_evals, ("03", "04", "05", "07", "08", "09"), reference=name))
    baselines = tuple(v for v in MAIN_VARIANTS if v.method != "avgn")
    add(baselines, main_evals, ("03", "04", "05", "06", "07", "08", "09"))
    add(BASELINE_DESIGN_VARIANTS, _evals("test"), ("03",))
    add(tuple(v for v in MAIN_VARIANTS if v.method == "avgn"), main_evals, ("02", "03", "04", "05", "06", "07", "08", "09"))
    add((SHORT_VARIANT,), _evals("test"), ("02", "04"))
    add((PAPER_DESIGN_VARIANT,), _evals("test"), ("02",))
    add(DEPTH_VARIANTS + ASSIGNMENT_VARIANTS + LOSS_VARIANTS + WIDTH_VARIANTS, _evals("test"), ("04",))
    add((DSOL_STAGE1_VARIANT,), _evals("test"), ("07",))
    add((DSOL_VARIANT,), _evals("test", composed=True), ("07",))
    add(TVSL_VARIANTS, _evals("test", ZEROSHOT_SPLIT), ("09",))
    add((TVSL_HELDOUT_CANDIDATES,), _evals(ZEROSHOT_SPLIT), ("09",))
    plan: dict[str, PlannedRun] = {}
    for r in runs:
        if r.key in plan:
            raise ValueError(f"the plan declares {r.key!r} twice")
        plan[r.key] = r
    for r in plan.values():  # every run it depends on is declared
        for dep in (r.weights_key, r.init_key):
            if dep is not None and dep not in plan:
                raise ValueError(f"{r.key!r} needs {dep!r}, which the plan does not declare")
    return plan
