"""The queue over the plan: what is done, stale or missing; training and storing what is left; and
handing stored runs to the chapters.

* :func:`plan_status` — one row per planned run: ``done`` (a verified record whose id is what the
  current code computes), ``stale`` (a record of another id: changed code, configuration or data),
  ``evals`` (weights current, an evaluation missing or of another protocol version: re-scored from
  the stored weights, no training; its current evaluations are kept as stored), ``missing``; with the estimated 2-core time of what is left.
* :func:`store_run` — train (or resume) one run in the work folder, round its best weights to fp16,
  materialise them, evaluate every planned evaluation *from the stored weights*, write the record.
* :func:`train_queue` — :func:`store_run` over the missing / stale keys with ``workers`` processes
  (one torch thread each), a lock per key (two queues never store one run: the second skips it),
  progress bar and ETA. A ``kill -9`` loses at most the training checkpoint interval
  (``train.checkpoint_minutes``) and the evaluation in progress.
* :func:`checkout` — what a chapter calls: the stored run materialised as a run folder (weights as
  the ``best`` checkpoint, history, evaluations) where the chapter's code reads it, or a one-line
  error naming the missing / stale key and the command that trains it. Chapters never train.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from avgn.io import atomic_write_text, file_sha256
from avgn.store.plan import PlanKeyError, PlannedRun, build_id, build_identity, get_plan, run_id, run_identity
from avgn.store.records import RunStore, StoreError, StoredRun, fp16_weights, train_command

__all__ = ["plan_status", "store_run", "train_queue", "checkout", "compare_stores", "QueueLockedError", "DEFAULT_COST_S", "format_duration"]

ROOT = Path(__file__).resolve().parents[2]
#: Estimated training seconds on one thread of a 2-core machine (two runs side by side) per run of a
#: method at its profile's schedule, when the store holds no finished run of that variant or method
#: to measure from (then the measured mean is used).
DEFAULT_COST_S: dict[str, dict[str, float]] = {
    "smoke": {"avgn": 30.0, "ezvsl": 20.0, "mal": 15.0, "dsol": 20.0, "tvsl": 30.0, "study": 20.0},
    "cpu": {"avgn": 1500.0, "ezvsl": 1200.0, "mal": 600.0, "dsol": 900.0, "tvsl": 900.0, "study": 1500.0},
    "gpu": {"avgn": 1800.0, "ezvsl": 1200.0, "mal": 900.0, "dsol": 900.0, "tvsl": 900.0},
}
#: ... per evaluation tag of a run (loading the sets and predicting them), by profile.
EVAL_COST_S: dict[str, float] = {"smoke": 3.0, "cpu": 60.0, "gpu": 60.0}


class QueueLockedError(RuntimeError):
    """Another queue is storing this key."""


def format_duration(seconds: float) -> str:
    m = int(round(seconds / 60))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


# --------------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------------
def _plan_and_build(profile: str, data_dir: str | Path | None, plan: dict[str, PlannedRun] | None = None
                    ) -> tuple[dict[str, PlannedRun], dict[str, Any]]:
    return plan or get_plan(profile), build_identity(profile, data_dir)


def _current_evals(run: PlannedRun, record: dict[str, Any]) -> set[str]:
    """The tags of ``run``'s planned evaluations that ``record`` holds under the current protocol
    version and over the planned sets (the others are re-scored)."""
    from avgn.evaluate import EVAL_VERSION

    evals = record.get("evals", {})

    def current(e: Any) -> bool:
        have, want = evals.get(e.tag, {}), e.record()
        return have.get("eval_version") == EVAL_VERSION and all(have.get(k) == want.get(k) for k in ("sets", "eval_overrides"))

    return {e.tag for e in run.evals if current(e)}


def _record_state(run: PlannedRun, store: RunStore, want_id: str) -> tuple[str, str | None, str]:
    """``(state, stored id, note)`` of one planned run."""
    if not store.exists(run.key):
        return "missing", None, ""
    try:
        sr = store.read(run.key)
    except StoreError as err:
        return "broken", None, str(err)
    if sr.id != want_id:
        return "stale", sr.id, ""
    current = _current_evals(run, sr.record)
    lacking = [e.tag for e in run.evals if e.tag not in current]
    if lacking:
        return "evals", sr.id, "re-score " + ", ".join(lacking)
    return "done", sr.id, ""


def _cost(run: PlannedRun, store: RunStore, measured: dict[str, list[float]], state: str, lacking: int | None = None) -> float:
    """Estimated seconds left for ``run`` in ``state`` (``lacking``: how many evaluations a re-scoring has left)."""
    n_eval = (len(run.evals) if lacking is None else lacking) * EVAL_COST_S.get(run.profile, 60.0)
    if state == "done":
        return 0.0
    if run.study is not None:
        return 0.0 if state == "done" else DEFAULT_COST_S.get(run.profile, DEFAULT_COST_S["cpu"]).get("study", 600.0)
    if state == "evals" or not run.trains:
        return n_eval
    v = run.variant
    assert v is not None
    times = measured.get(f"variant:{v.name or v.method}")
    if times:
        return sum(times) / len(times) + n_eval
    from avgn.experiment import get_experiment

    epochs, base_epochs = run.experiment().train.epochs, get_experiment(v.method, run.profile).train.epochs
    times = measured.get(f"method:{v.method}")
    per_run = sum(times) / len(times) if times else DEFAULT_COST_S.get(run.profile, DEFAULT_COST_S["cpu"]).get(v.method, 1800.0)
    train_s = per_run * epochs / base_epochs  # a variant on another schedule: in proportion to its epochs
    return train_s + n_eval


def _records(store: RunStore) -> dict[str, dict[str, Any]]:
    """Every readable ``record.json`` of the store by key, read once (files not hashed: what status and
    the twin lookup need; :meth:`RunStore.read` verifies a record before it is used)."""
    out: dict[str, dict[str, Any]] = {}
    for key in store.keys():
        try:
            out[key] = json.loads((store.folder(key) / "record.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _measured(records: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """Measured training wall seconds of the stored runs by ``variant:<name>`` and ``method:<name>``."""
    out: dict[str, list[float]] = {}
    for key, rec in records.items():
        if rec.get("wall_seconds") and rec.get("trains"):
            out.setdefault(f"variant:{key.split('/')[0]}", []).append(rec["wall_seconds"])
            out.setdefault(f"method:{rec['method']}", []).append(rec["wall_seconds"])
    return out


def plan_status(profile: str = "cpu", store: RunStore | None = None, data_dir: str | Path | None = None, keys: Sequence[str] | None = None,
                plan: dict[str, PlannedRun] | None = None):
    """One row per planned run (columns ``key, label, method, seed, chapters, state, id, stored_id,
    est_seconds, wall_seconds, note``), in the plan's priority order (``plan``: default :func:`book_plan`);
    ``wall_seconds``: what a done run's record measured (training, evaluation and storing; 0 otherwise)."""
    import pandas as pd

    store = store or RunStore(profile)
    plan, build = _plan_and_build(profile, data_dir, plan)
    records = _records(store)
    measured = _measured(records)
    rows = []
    for key, run in plan.items():
        if keys is not None and key not in keys:
            continue
        want = run_id(run, plan, build)
        state, stored, note = _record_state(run, store, want)
        twins = _twin_keys(records, key, want) if state in ("missing", "stale") and run.trains else []
        if twins:
            note = f"the same run is stored as {twins[0]}: its weights are taken, its evaluations completed"
        rows.append({"key": key, "label": run.label, "method": run.method, "seed": run.seed, "chapters": " ".join(run.chapters),
                     "state": state, "id": want, "stored_id": stored, "note": note,
                     "est_seconds": _cost(run, store, measured, "evals" if twins else state,
                                          note.count(",") + 1 if state == "evals" else None),
                     "wall_seconds": float(records[key].get("wall_seconds") or 0.0) if state == "done" else 0.0})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# storing one run
# --------------------------------------------------------------------------------------------------
def default_work_dir(store: RunStore) -> Path:
    """Where a store's runs are trained before they are stored: ``data/store-work/<profile>`` for the
    committed store, ``<root>-work/<profile>`` beside any other (a retraining never reuses the
    committed store's training folders)."""
    from avgn.store.records import STORE_DIR

    if store.root.resolve() == STORE_DIR.resolve():
        return ROOT / "data" / "store-work" / store.profile
    return store.root.parent / (store.root.name + "-work") / store.profile


def _machine() -> dict[str, Any]:
    from avgn.env import environment_report

    rep = environment_report("auto")
    return {k: rep.get(k) for k in ("cpu", "cpu flags", "device", "torch", "platform")}


def _write_best_checkpoint(run_dir: Path, config: dict[str, Any], weights: dict[str, Any], epoch: int, step: int,
                           first_stage: dict[str, Any] | None = None) -> None:
    """Materialise ``weights`` (float32) as ``run_dir``'s ``best`` checkpoint of the run described by
    ``config``; a second stage's weights that copy its first stage (:meth:`Method.first_stage_prefixes`,
    not stored twice) are rebuilt from ``first_stage``, the first stage's stored weights."""
    from avgn.checkpoint import save_checkpoint
    from avgn.experiment import Experiment
    from avgn.methods import get_method

    exp = Experiment.from_dict(config["experiment"])
    model = get_method(exp.method).build(exp.model)
    derived = get_method(exp.method).first_stage_prefixes(exp.model)
    if derived and not any(k.startswith(derived) for k in weights):
        if first_stage is None:
            raise StoreError(f"{run_dir}: the stored weights lack {derived} and no first-stage weights were given to rebuild them")
        full = model.complete_state_dict(first_stage)  # type: ignore[operator]
        weights = {**{k: v for k, v in full.items() if k.startswith(derived)}, **weights}
    prefixes = exp.frozen_prefixes()
    own = model.state_dict()
    missing = [k for k in own if k not in weights and not (prefixes and k.startswith(prefixes))]
    if missing:
        raise StoreError(f"{run_dir}: the stored weights lack {missing[:3]} of the model its configuration builds")
    model.load_state_dict(weights, strict=False)
    save_checkpoint(run_dir, model, name="best", epoch=epoch, step=step, include_rng=False, config=config, exclude_prefixes=prefixes)


def _first_stage_weights(sr: StoredRun, store: RunStore) -> dict[str, Any] | None:
    """The stored weights of the first stage ``sr`` was trained from (its record's ``first_stage``), or ``None``."""
    first = sr.record.get("first_stage")
    if not first:
        return None
    fr = store.read(first, expected_id=sr.record.get("first_stage_id"))
    return store.load_weights(fr)


def _materialize_run(sr: StoredRun, store: RunStore, dest: Path, data_dir: Path) -> None:
    """Write a stored training run into the run folder ``dest`` (config with the local data folder,
    history, summary, the ``best`` checkpoint from the stored weights — with what a second stage
    copies from its first rebuilt from the first's record —, evaluations)."""
    from avgn.checkpoint import atomic_write_json

    dest.mkdir(parents=True, exist_ok=True)
    config = json.loads(sr.path("config.json").read_text())
    config["data_dir"] = str(Path(data_dir).resolve())
    summary = json.loads(sr.path("run.json").read_text())
    summary["data_dir"] = config["data_dir"]
    summary["run_dir"] = str(dest)
    if sr.record.get("weights"):  # a run kept by its evaluations only has no checkpoint to load
        _write_best_checkpoint(dest, config, store.load_weights(sr), int(sr.record["checkpoint_epoch"]), int(sr.record.get("steps") or 0),
                               first_stage=_first_stage_weights(sr, store))
    atomic_write_json(dest / "config.json", config)
    (dest / "history.json").write_bytes(sr.path("history.json").read_bytes())
    store.materialize_evals(sr, dest)
    atomic_write_json(dest / "run.json", summary)
    _mark_current(dest, sr)


def _mark_current(dest: Path, sr: StoredRun) -> None:
    """Record in ``dest/store.json`` which stored record ``dest`` was materialised from (:func:`_is_current`)."""
    from avgn.checkpoint import atomic_write_json

    atomic_write_json(dest / "store.json", {"key": sr.key, "id": sr.id, "record_sha256": file_sha256(sr.path("record.json"))})


def _is_current(dest: Path, sr: StoredRun) -> bool:
    p = dest / "store.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("record_sha256") == file_sha256(sr.path("record.json"))
    except (OSError, json.JSONDecodeError):
        return False


def _eval_one(run: PlannedRun, ev: Any, eval_src: Path, out: Path, data_dir: Path, device: str) -> None:
    from avgn.evaluate import evaluate_reference, evaluate_run

    split: Any = ev.split if ev.sets is None else sorted({n.split("/")[0] for n in ev.sets})
    sets = list(ev.sets) if ev.sets else None
    scoring = {f"eval.{k}": v for k, v in ev.eval_overrides} or None
    if run.reference:
        evaluate_reference(run.reference, data_dir, out, profile=run.profile, split=split, sets=sets, device=device, progress=False, tag=ev.tag,
                           overrides=scoring)
    else:
        over = dict(run.variant.eval_overrides) or None  # type: ignore[union-attr]
        evaluate_run(eval_src, split, sets=sets, device=device, progress=False, model_overrides=over, out_dir=out if over else None,
                     tag=ev.tag, data_dir=data_dir, overrides=scoring)


#: The file in a queue's work folder naming the store id the run there trains for.
WORK_ID_FILE = "store_id.txt"


def set_aside_other_run(run_dir: Path, exp: Any, data_dir: Path, want_id: str | None = None) -> Path | None:
    """A work folder that holds a run of *another* configuration of the same key (its ``config.json``
    fingerprint is not :func:`avgn.runs.run_fingerprint` of ``exp`` on ``data_dir``), or one trained for
    another store id (its method's training version changed: the same configuration, other code), is
    renamed ``<name>.replaced-<its fingerprint or id>``, so the key trains afresh instead of resuming
    or reusing it; nothing is deleted. With ``want_id`` the folder is then marked as training for it
    (:data:`WORK_ID_FILE`). Returns the new name, or ``None`` when the folder is absent or holds this
    run (resumable)."""
    from avgn.runs import run_fingerprint

    cfg = run_dir / "config.json"
    marker = run_dir / WORK_ID_FILE
    dest = None
    if cfg.is_file():
        old = json.loads(cfg.read_text()).get("fingerprint")
        old_id = marker.read_text().strip() if marker.is_file() else None
        why = None
        if old != run_fingerprint(exp, data_dir):
            why, tag = f"another configuration (fingerprint {old})", old
        elif want_id is not None and old_id is not None and old_id != want_id:
            why, tag = f"a run of another code version (store id {old_id})", old_id
        if why is not None:
            dest = run_dir.with_name(f"{run_dir.name}.replaced-{tag}")
            if dest.exists():
                shutil.rmtree(dest)
            run_dir.rename(dest)
            print(f"[avgn.store] {run_dir} held {why}: set aside as {dest.name}", flush=True)
    if want_id is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, want_id + "\n")
    return dest


def store_run(key: str, profile: str = "cpu", *, store: RunStore | None = None, data_dir: str | Path | None = None,
              work_dir: str | Path | None = None, device: str = "auto", retrain: bool = False,
              plan: dict[str, PlannedRun] | None = None) -> StoredRun:
    """Train (or resume), evaluate and store the planned run ``key`` (see the module docstring).
    Runs it depends on (DSOL's first stage, the weights an inference-time variant scores) must be
    stored first. Holds the key's lock throughout.

    Raises:
        PlanKeyError: ``key`` is not in the plan.
        QueueLockedError: another queue holds the key.
    """
    from avgn.data.build import build_dataset, dataset_dir
    from avgn.evaluate import EVAL_VERSION
    from avgn.runs import RunLockedError, run_lock

    store = store or RunStore(profile)
    data_dir = Path(data_dir) if data_dir is not None else dataset_dir(ROOT / "data" / "embedded", profile, 0)
    work = Path(work_dir) if work_dir is not None else default_work_dir(store)
    plan = plan or get_plan(profile)
    if key not in plan:
        raise PlanKeyError(f"{key!r} is not a run of the {profile} plan; `avgn runs status --profile {profile}` lists them")
    run = plan[key]
    if not (data_dir / "build.json").is_file():
        build_dataset(profile=profile, seed=0, out=data_dir, progress=False)
    build = build_identity(profile, data_dir)
    want = run_id(run, plan, build)
    try:
        lock = run_lock(work / "locks" / key)
        lock.__enter__()
    except RunLockedError as err:
        raise QueueLockedError(f"{key}: another queue is storing it ({err})") from None
    try:
        state, _, _ = _record_state(run, store, want)
        if state == "done" and not retrain:
            return store.read(key, expected_id=want)
        stage = work / "stage" / key
        record: dict[str, Any] = {"id": want, "identity": run_identity(run, plan, build), "build": build_id(build), "label": run.label,
                                  "method": run.method, "seed": run.seed, "trains": run.trains, "chapters": list(run.chapters),
                                  "command": train_command(key, profile)}
        t0 = time.perf_counter()
        if run.study is not None:  # a study's run: its own trainer writes its files
            return _store_study(run, record, stage, work, data_dir, store, plan, t0)
        weights, keep, reuse, twin = None, False, False, None
        if run.trains:
            reuse = state == "evals" and not retrain and store.read(key).record.get("weights") is not None
            twin = stored_twin(store, key, want) if state in ("missing", "stale") and not retrain else None
            if reuse:  # the weights are current: re-score them, no training
                _reuse_stored(store.read(key, expected_id=want), store, stage, data_dir, record)
                keep = True
            elif twin is not None:  # the same run (same id) is stored under another key: its weights, no training
                _reuse_stored(twin, store, stage, data_dir, record)
                weights = store.load_weights(twin)
                record["same_run_as"] = twin.key
            else:
                weights = _train_into_stage(run, record, stage, work, data_dir, store, plan, build, want, device)
            eval_src, eval_dir, run_files = stage, stage, stage
        elif run.reference:
            eval_src, eval_dir, run_files = stage, stage, None
        else:  # an inference-time variant: the stored weights of another key, scored with its changes
            base = store.read(run.weights_key, expected_id=run_id(plan[run.weights_key], plan, build))  # type: ignore[index,arg-type]
            src = work / "stage" / base.key
            if not _is_current(src, base):
                _materialize_run(base, store, src, data_dir)
            eval_src, eval_dir, run_files = src, stage, None
            record["weights_of"] = base.key
        stage.mkdir(parents=True, exist_ok=True)
        # a re-scoring keeps the stored evaluations that are current and scores only the others
        kept: set[str] = set()
        if (state == "evals" and not retrain and (not run.trains or reuse)) or twin is not None:
            old = twin if twin is not None else store.read(key, expected_id=want)
            kept = _current_evals(run, old.record)
            store.materialize_evals(old, eval_dir)
        for ev in run.evals:
            if ev.tag not in kept:
                _eval_one(run, ev, eval_src, eval_dir, data_dir, device)
        record["evals"] = {ev.tag: {"eval_version": EVAL_VERSION, **ev.record()} for ev in run.evals}
        record["eval_seconds"] = round(time.perf_counter() - t0, 1)
        if not run.trains:
            from avgn.env import git_revision

            record.update({"code_revision": git_revision(), "machine": _machine()})
        if run.trains and not run.keep_weights:  # the plan keeps this run by its evaluations only (the store's size)
            weights, keep = None, False
            record["weights_kept"] = False
        if weights is not None and run.trains:  # what a second stage copies from its first is kept once, there
            from avgn.methods import get_method

            derived = get_method(run.method).first_stage_prefixes(run.experiment().model)
            weights = {k: v for k, v in weights.items() if not (derived and k.startswith(derived))}
        return store.write(key, record, run_files, eval_dir, [ev.tag for ev in run.evals], weights, keep_weights=keep)
    finally:
        lock.__exit__(None, None, None)


def stored_twin(store: RunStore, key: str, want_id: str) -> StoredRun | None:
    """A sound record under another key whose id is ``want_id`` and whose weights the store keeps:
    the same run (the id is the content of its configuration, seed, data build and training code),
    planned again under another name — e.g. after a default changed, the variant that had the new
    default's values (for a key not stored yet, or one whose record is stale: the default's own key). :func:`store_run` takes its weights instead of training (``same_run_as`` in the
    record) and keeps its current evaluations. None when there is none."""
    for other in _twin_keys(_records(store), key, want_id):
        try:
            return store.read(other, expected_id=want_id)
        except StoreError:  # a broken twin is not taken (`avgn runs check` names it)
            continue
    return None


def _twin_keys(records: dict[str, dict[str, Any]], key: str, want_id: str) -> list[str]:
    """The keys other than ``key`` whose record (:func:`_records`) has id ``want_id`` and kept weights."""
    return [other for other, rec in records.items() if other != key and rec.get("id") == want_id and rec.get("weights")]


def _store_study(run: PlannedRun, record: dict[str, Any], stage: Path, work: Path, data_dir: Path, store: RunStore,
                 plan: dict[str, PlannedRun], t0: float) -> StoredRun:
    """Run a :class:`~avgn.store.plan.Study` into ``stage`` (the stored runs it needs checked out
    first) and store its files."""
    from avgn.env import git_revision

    assert run.study is not None
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    kw = dict(run.study.params)
    if run.study.needs:  # the stored runs it reads, materialised where a chapter would read them
        kw["runs"] = {k: checkout(k, run.profile, work / "study-inputs", data_dir, store, plan) for k in run.study.needs}
        record["needs"] = {k: c["id"] for k, c in kw["runs"].items()}
    run.study.train(data_dir, stage, run.profile, run.seed, **kw)
    record.update({"code_revision": git_revision(), "machine": _machine(), "wall_seconds": round(time.perf_counter() - t0, 1), "evals": {}})
    return store.write(run.key, record, None, None, [], None, study_dir=stage)


def _reuse_stored(sr: StoredRun, store: RunStore, stage: Path, data_dir: Path, record: dict[str, Any]) -> None:
    """Materialise the stored, current weights of ``sr`` into ``stage`` to re-score them, and carry
    its training facts into the new ``record``."""
    _materialize_run(sr, store, stage, data_dir)
    record.update({k: sr.record.get(k) for k in ("code_revision", "machine", "wall_seconds", "train_seconds", "samples_per_s",
                                                "presence_threshold", "checkpoint_epoch", "steps", "trainable_parameters")})
    record.update({k: sr.record[k] for k in ("first_stage", "first_stage_id") if k in sr.record})


def _train_into_stage(run: PlannedRun, record: dict[str, Any], stage: Path, work: Path, data_dir: Path, store: RunStore,
                      plan: dict[str, PlannedRun], build: dict[str, Any], want: str, device: str) -> dict[str, Any]:
    """Train (or resume) ``run`` in its work folder — a second stage from its stored first stage —,
    write its ``best`` checkpoint as the store will keep it (fp16-rounded) into ``stage`` with its
    config, history and summary, fill ``record``'s training facts, and return the fp16 weights."""
    from safetensors.torch import load_file

    from avgn.checkpoint import read_checkpoint_info
    from avgn.runs import variant_dirs
    from avgn.train import train

    assert run.variant is not None
    exp = run.experiment()
    run_dir = variant_dirs(run.variant, work / "runs", run.profile, run.seed)[0]
    if run.init_key:  # a second stage starts from the stored first stage, materialised
        first = store.read(run.init_key, expected_id=run_id(plan[run.init_key], plan, build))
        record.update({"first_stage": run.init_key, "first_stage_id": first.id})
        first_dir = work / "stage" / run.init_key
        if not _is_current(first_dir, first):
            _materialize_run(first, store, first_dir, data_dir)
        exp = exp.with_overrides(**{"train.init_from": str(first_dir)})
    set_aside_other_run(run_dir, exp, data_dir, want)
    summary = train(exp, data_dir, run_dir, seed=run.seed, device=device, resume=True, progress=False)
    best = read_checkpoint_info(run_dir, "best")
    assert best is not None, f"{run_dir} finished without a best checkpoint"
    weights = fp16_weights(load_file(str(run_dir / "checkpoints" / best["files"]["weights"])))
    record.update({"code_revision": summary.get("git_revision"), "machine": summary.get("environment"),
                   "wall_seconds": summary.get("wall_seconds"), "train_seconds": summary.get("train_seconds"),
                   "samples_per_s": summary.get("samples_per_s"), "presence_threshold": summary.get("presence_threshold"),
                   "checkpoint_epoch": best["epoch"], "steps": best["step"], "trainable_parameters": summary.get("trainable_parameters")})
    # the evaluations read the fp16-rounded weights, exactly what the store keeps
    stage.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "history.json", "run.json"):
        (stage / name).write_bytes((run_dir / name).read_bytes())
    cfg = json.loads((run_dir / "config.json").read_text())
    _write_best_checkpoint(stage, cfg, {k: (v.float() if v.is_floating_point() else v) for k, v in weights.items()}, best["epoch"], best["step"])
    return weights


# --------------------------------------------------------------------------------------------------
# the queue
# --------------------------------------------------------------------------------------------------
@dataclass
class _Job:
    key: str
    proc: subprocess.Popen
    log: Path
    started: float


def _ready(run: PlannedRun, done: set[str]) -> bool:
    return all(d in done for d in run.dependencies)


def train_queue(profile: str = "cpu", *, keys: Sequence[str] | None = None, workers: int = 2, store_root: str | Path | None = None,
                data_dir: str | Path | None = None, device: str = "auto", dry_run: bool = False, log=print) -> int:
    """Store every missing / stale / re-score run of the plan (or of ``keys``) with ``workers``
    processes, one torch thread each, in the plan's order (a run whose dependency is not stored yet
    waits for it). Returns the number of runs that failed (their logs are named)."""
    import tqdm

    store = RunStore(profile, store_root)
    # the whole plan's status: a run waits for its dependencies (DSOL's first stage, the weights an
    # inference-time variant scores), and those stored already count as done whether or not they are among ``keys``
    whole = plan_status(profile, store, data_dir)
    status = whole if keys is None else whole[whole["key"].isin(list(keys))]
    if keys is not None:
        unknown = sorted(set(keys) - set(status["key"]))
        if unknown:
            raise PlanKeyError(f"not runs of the {profile} plan: {', '.join(unknown)} (`avgn runs status --profile {profile}` lists them)")
    todo = status[status["state"] != "done"]
    log(f"{len(todo)} of {len(status)} runs to store, estimated {format_duration(todo['est_seconds'].sum() / max(1, workers))} "
        f"with {workers} workers")
    if dry_run or todo.empty:
        return 0
    plan = get_plan(profile)
    done = set(whole.loc[whole["state"] == "done", "key"])
    pending = list(todo["key"])
    work_runs = default_work_dir(store) / "runs"

    def trained(key: str) -> bool:  # its training finished in the work folder: only evaluations left
        from avgn.runs import variant_dirs

        r = plan[key]
        return r.trains and (variant_dirs(r.variant, work_runs, profile, r.seed)[0] / "run.json").is_file()

    pending.sort(key=lambda k: not trained(k))  # stable: otherwise the plan's order
    est = dict(zip(todo["key"], todo["est_seconds"]))
    logs = default_work_dir(store) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: list[_Job] = []
    failed: list[str] = []
    bar = tqdm.tqdm(total=float(todo["est_seconds"].sum()), unit="s", desc="runs", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s est. [{elapsed}<{remaining}]")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    while pending or running:
        for job in list(running):
            if job.proc.poll() is None:
                continue
            running.remove(job)
            bar.update(est[job.key])
            if job.proc.returncode == 0:
                done.add(job.key)
                log(f"stored {job.key} ({format_duration(time.perf_counter() - job.started)})")
            elif job.proc.returncode == 3:
                log(f"skipped {job.key}: another queue is storing it")
            else:
                failed.append(job.key)
                log(f"FAILED {job.key} (exit {job.proc.returncode}): see {job.log}")
        while len(running) < workers:
            nxt = next((k for k in pending if _ready(plan[k], done)), None)
            if nxt is None:
                break
            pending.remove(nxt)
            lp = logs / (nxt.replace("/", "__") + ".log")
            cmd = [sys.executable, "-m", "avgn", "runs", "store-one", nxt, "--profile", profile, "--device", device]
            if store_root is not None:
                cmd += ["--store", str(store_root)]
            if data_dir is not None:
                cmd += ["--data", str(data_dir)]
            running.append(_Job(nxt, subprocess.Popen(cmd, stdout=open(lp, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT), lp,
                                time.perf_counter()))
            log(f"started {nxt} (est. {format_duration(est[nxt])}; log {lp})")
        if not running and pending:  # what is left waits for a run that failed or is missing
            for k in pending:
                failed.append(k)
                missing = ", ".join(d for d in plan[k].dependencies if d not in done)
                log(f"NOT STARTED {k}: it needs {missing}, which is not stored")
            break
        time.sleep(2)
    bar.close()
    return len(failed)


# --------------------------------------------------------------------------------------------------
# what chapters call
# --------------------------------------------------------------------------------------------------
def checkout(key: str, profile: str, runs_dir: str | Path, data_dir: str | Path, store: RunStore | None = None,
             plan: dict[str, PlannedRun] | None = None) -> dict[str, Any]:
    """Materialise the stored run ``key`` where a chapter reads it (``runs_dir``'s conventional
    folders, :func:`avgn.runs.variant_dirs` / :func:`avgn.runs.reference_dir`) and return
    ``{"key", "id", "run_dir", "eval_dir", "record", "commands"}``.

    Raises:
        PlanKeyError: the plan does not declare ``key``.
        StoreError: the store has no current record of ``key`` (missing, stale, broken): the
            message names it and the command that trains it.
    """
    store = store or RunStore(profile)
    plan = plan or get_plan(profile)
    if key not in plan:
        raise PlanKeyError(f"{key!r} is not a run of the {profile} plan (avgnbook.plan.book_plan); declare it there first")
    run = plan[key]
    build = build_identity(profile, data_dir)
    sr = store.read(key, expected_id=run_id(run, plan, build), build=build_id(build))
    runs_dir, data_dir = Path(runs_dir), Path(data_dir)
    with _waiting_lock(runs_dir / profile / ".checkout-locks" / key.replace("/", "__")):  # chapters side by side check out one run once
        return _checkout_locked(sr, store, run, key, profile, runs_dir, data_dir, plan)


@contextlib.contextmanager
def _waiting_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path``, waiting for another holder to let go."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def _checkout_locked(sr: StoredRun, store: RunStore, run: PlannedRun, key: str, profile: str, runs_dir: Path, data_dir: Path,
                     plan: dict[str, PlannedRun]) -> dict[str, Any]:
    from avgn.runs import reference_dir, variant_dirs

    commands = [sr.record["command"]]
    if run.study is not None:
        out = runs_dir / profile / "studies" / key
        if not _is_current(out, sr):
            shutil.rmtree(out, ignore_errors=True)
            for name in sr.record["files"]:
                if name.startswith("study/"):
                    (out / name[len("study/"):]).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(sr.path(name), out / name[len("study/"):])
            _mark_current(out, sr)
        return {"key": key, "id": sr.id, "run_dir": out, "eval_dir": out, "record": sr.record, "commands": commands}
    if run.reference:
        out = reference_dir(runs_dir, run.reference, profile)
        if not _is_current(out, sr):
            store.materialize_evals(sr, out)
            _mark_current(out, sr)
        return {"key": key, "id": sr.id, "run_dir": out, "eval_dir": out, "record": sr.record, "commands": commands}
    run_dir, eval_dir = variant_dirs(run.variant, runs_dir, profile, run.seed)  # type: ignore[arg-type]
    if run.trains:
        if not _is_current(run_dir, sr):
            _materialize_run(sr, store, run_dir, data_dir)
    else:
        base = checkout(run.weights_key, profile, runs_dir, data_dir, store, plan)  # type: ignore[arg-type]
        commands = base["commands"] + commands
        if not _is_current(eval_dir, sr):
            store.materialize_evals(sr, eval_dir)
            _mark_current(eval_dir, sr)
    return {"key": key, "id": sr.id, "run_dir": run_dir, "eval_dir": eval_dir, "record": sr.record, "commands": commands}


# --------------------------------------------------------------------------------------------------
# a second store against the committed one
# --------------------------------------------------------------------------------------------------
def compare_stores(profile: str, other_root: str | Path, store_root: str | Path | None = None, tags: Sequence[str] = ("test",),
                   min_tol: float = 0.01):
    """Every metric of the runs in the store at ``other_root`` (e.g. ``make runs``' fresh retraining)
    against the committed store, per (variant, evaluation, set, mode, metric): the committed seeds'
    mean and sd, the other store's value per seed, and ``flag`` when it lies further than
    ``max(2 sd, min_tol)`` from the committed mean. Returns a long :class:`pandas.DataFrame`."""
    import pandas as pd

    ours, theirs = RunStore(profile, store_root), RunStore(profile, other_root)

    def table(store: RunStore) -> "pd.DataFrame":
        frames = []
        for key in store.keys():
            sr = store.read(key)
            for tag in sr.eval_tags():
                if tag in tags:
                    df = pd.read_csv(sr.path(f"eval_{tag}.csv"))
                    frames.append(df.assign(key=key, variant=key.split("/")[0], tag=tag, run=sr.id))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["variant", "tag", "set", "mode", "metric", "value"])

    a, b = table(ours), table(theirs)
    by = ["variant", "tag", "set", "mode", "metric"]
    ref = a.groupby(by)["value"].agg(committed_mean="mean", committed_sd="std", committed_seeds="count").reset_index()
    out = b[by + ["key", "value"]].merge(ref, on=by, how="left")
    tol = (2 * out["committed_sd"].fillna(0)).clip(lower=min_tol)
    out["flag"] = out["committed_mean"].isna() | ((out["value"] - out["committed_mean"]).abs() > tol)
    return out
