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

Which runs a plan holds is the plan's business (the book's is :func:`avgnbook.plan.book_plan`, found
through the entry point group :data:`PLAN_GROUP`: :func:`get_plan`); this module only defines what a
planned run is and what identifies it.

Evaluations are versioned separately (:data:`avgn.evaluate.EVAL_VERSION`): a new metric re-scores
stored weights without retraining.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from avgn.data.config import DATA_PROFILES
from avgn.experiment import get_experiment
from avgn.methods import get_method
from avgn.runs import Variant

__all__ = ["Evaluation", "PlannedRun", "Study", "build_identity", "build_id", "run_identity", "run_id", "PlanKeyError", "get_plan",
           "list_plans", "PLAN_GROUP"]

#: The entry-point group under which packages register run plans (``name = "module:function"``, the
#: function taking a profile name and returning ``{key: PlannedRun}``); the book's is ``book``
#: (:func:`avgnbook.plan.book_plan`, declared in ``pyproject.toml``).
PLAN_GROUP = "avgn.plans"

class PlanKeyError(KeyError):
    """A key the plan does not declare."""

    def __str__(self) -> str:  # KeyError quotes its argument; this one is a sentence
        return str(self.args[0])


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run: ``eval_<tag>.*`` over ``split``'s sets, or over ``sets`` only;
    ``eval_overrides``: fields of :class:`avgn.experiment.EvalConfig` the scoring changes (e.g. the
    binarisation rule of cIoU), ``(field, value)`` pairs."""

    tag: str
    split: str
    sets: tuple[str, ...] | None = None
    eval_overrides: tuple[tuple[str, Any], ...] = ()

    def record(self) -> dict[str, Any]:
        """What a run's record keeps of this evaluation (beside the protocol version)."""
        out: dict[str, Any] = {"split": self.split, "sets": list(self.sets) if self.sets else None}
        if self.eval_overrides:
            out["eval_overrides"] = [list(kv) for kv in self.eval_overrides]
        return out


@dataclass(frozen=True)
class Study:
    """A run of a study that is not a localization method (e.g. a reference model a chapter compares
    with): ``train(data_dir, out_dir, profile, seed, **params)`` writes its files into ``out_dir``
    (everything there is stored and checked out as it is). ``version`` is bumped when what it trains
    changes (part of the run's id, as a method's version is).

    ``needs``: keys of stored runs the study reads (e.g. the runs whose maps it segments). They are
    part of its identity (their ids: retraining one makes the study stale), it waits for them in the
    queue, and ``train`` is called with ``runs={key: checkout}`` (:func:`avgn.store.queue.checkout`'s
    dictionaries: ``run_dir``, ``eval_dir``, ``id`` ...)."""

    name: str
    version: int
    train: Callable[..., None]
    params: tuple[tuple[str, Any], ...] = ()
    needs: tuple[str, ...] = ()


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
        study: a :class:`Study` run (then ``variant`` is None and ``evals`` empty).
        keep_weights: whether the store keeps the run's weights (storage policy, not part of the
            run's identity): a run kept without them is read by its evaluations only, and
            re-scoring it with a new protocol version retrains it.
    """

    variant: Variant | None
    seed: int
    profile: str
    evals: tuple[Evaluation, ...]
    chapters: tuple[str, ...] = ()
    reference: str | None = None
    keep_weights: bool = True
    study: Study | None = None

    @property
    def key(self) -> str:
        if self.reference:
            return f"ref-{self.reference}"
        if self.study:
            return f"{self.study.name}/seed{self.seed}"
        assert self.variant is not None
        return f"{self.variant.name or self.variant.method}/seed{self.seed}"

    @property
    def label(self) -> str:
        if self.study:
            return self.study.name
        return get_method(self.reference).label if self.reference else self.variant.label  # type: ignore[union-attr]

    @property
    def method(self) -> str:
        if self.study:
            return f"study:{self.study.name}"
        return self.reference or self.variant.method  # type: ignore[union-attr]

    @property
    def trains(self) -> bool:
        """Whether the run trains weights of its own (not a reference, not an inference-time variant)."""
        return self.reference is None and self.study is None and not self.variant.eval_overrides  # type: ignore[union-attr]

    @property
    def weights_key(self) -> str | None:
        """The key whose weights this run scores (itself when it trains; None for a reference)."""
        if self.reference or self.study:
            return None
        if self.trains:
            return self.key
        tv = self.variant.training  # type: ignore[union-attr]
        return f"{tv.name or tv.method}/seed{self.seed}"

    @property
    def dependencies(self) -> tuple[str, ...]:
        """The keys that must be stored before this run: its first stage, the weights an
        inference-time variant scores, the runs a study reads."""
        if self.study is not None:
            return tuple(self.study.needs)
        deps = [self.init_key] + ([] if self.trains or self.reference else [self.weights_key])
        return tuple(d for d in deps if d)

    @property
    def init_key(self) -> str | None:
        """The key of the run this one starts from (a second training stage), else None."""
        v = self.variant
        if v is None or v.init_from is None:
            return None
        return f"{v.init_from.name or v.init_from.method}/seed{self.seed}"

    def experiment(self):
        """The resolved :class:`avgn.experiment.Experiment` this run trains (None for a reference)."""
        if self.reference or self.study:
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
    if run.study:
        ident = {"study": run.study.name, "version": run.study.version, "params": [list(kv) for kv in run.study.params],
                 "profile": run.profile, "seed": int(run.seed), "build": build_id(build)}
        if run.study.needs:  # a study of stored runs is another study when one of them is retrained
            ident["needs"] = {k: run_id(plan[k], plan, build) for k in run.study.needs}
        return ident
    if not run.trains:
        base = plan[run.weights_key]  # type: ignore[index]
        return {"weights_of": run_id(base, plan, build), "eval_overrides": [list(kv) for kv in run.variant.eval_overrides]}  # type: ignore[union-attr]
    exp = run.experiment()
    d = exp.to_dict()
    ident = {
        "method": run.method,
        "method_version": get_method(run.method).training_version(exp.model),
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
# plans by name
# --------------------------------------------------------------------------------------------------
def list_plans() -> dict[str, Any]:
    """The installed run plans: ``{name: entry point}`` of the group :data:`PLAN_GROUP`."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=PLAN_GROUP)}


def get_plan(profile: str = "cpu", name: str = "book") -> dict[str, PlannedRun]:
    """The run plan ``name`` (an entry point of :data:`PLAN_GROUP`) for ``profile``.

    Raises:
        PlanKeyError: no plan of that name is installed (naming the ones that are and the fix).
    """
    plans = list_plans()
    if name not in plans:
        raise PlanKeyError(f"no run plan {name!r} is installed (plans: {', '.join(sorted(plans)) or 'none'}); "
                           f"declare it as an entry point of {PLAN_GROUP!r} in your package's pyproject.toml and reinstall it")
    return plans[name].load()(profile)
