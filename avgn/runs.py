"""Runs on disk: folders, named variants, reproduce commands, loading a trained run.

Conventions (everything that reads or writes a run folder goes through these):

* a method's plain run: ``<runs>/<profile>/<method>-seed<S>`` (:func:`run_dir_for`);
* a :class:`Variant` that changes the training configuration: ``<runs>/variants/<name>/<profile>/
  <method>-seed<S>``; one that only changes inference evaluates the plain run's weights into its own
  folder (:func:`variant_dirs`);
* a non-learned reference: ``<runs>/<profile>/reference-<name>`` (:func:`reference_dir`), with the
  evaluations of a tag ``<tag>`` as ``eval_<tag>.*``.

A run folder holds ``config.json`` (the experiment, the seed, the data identity, the command line),
checkpoints (:mod:`avgn.checkpoint`), ``history.json`` and, when finished, ``run.json``.
:func:`load_trained_model` rebuilds a run's model through the method registry and refuses a build
other than the one it was trained on (:func:`check_data`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from avgn.checkpoint import atomic_write_json, atomic_write_text, load_checkpoint, read_checkpoint_info
from avgn.data.manifest import load_build_info
from avgn.env import environment_report, git_revision, resolve_device
from avgn.experiment import METHODS, Experiment, get_experiment
from avgn.methods import get_method, list_methods

__all__ = [
    "run_dir_for",
    "reference_dir",
    "RunLockedError",
    "run_lock",
    "variant_dirs",
    "reproduce_command",
    "eval_command",
    "reference_command",
    "experiment_overrides",
    "data_identity",
    "check_data",
    "load_run",
    "load_trained_model",
    "run_presence_threshold",
    "flatten",
    "run_fingerprint",
    "RunFolder",
    "Variant",
]

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# folders and command lines
# --------------------------------------------------------------------------------------------------
def run_dir_for(runs_dir: str | Path, method: str, profile: str, seed: int) -> Path:
    """The conventional run folder ``<runs_dir>/<profile>/<method>-seed<seed>``."""
    return Path(runs_dir) / profile / f"{method}-seed{seed}"


def reference_dir(runs_dir: str | Path, name: str, profile: str) -> Path:
    """The evaluation folder of a non-learned reference: ``<runs_dir>/<profile>/reference-<name>``."""
    if name not in list_methods(learned=False):
        raise ValueError(f"{name!r} is not a reference; choose one of {', '.join(list_methods(learned=False))}")
    return Path(runs_dir) / profile / f"reference-{name}"


class RunLockedError(RuntimeError):
    """Another process is training in the same run folder."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``<run_dir>/.lock`` (``fcntl.flock``; the folder is created) while
    a run is trained, so that two processes never write one run. The operating system releases it
    when the holder exits, however it exits (a ``kill -9`` included).

    Raises:
        RunLockedError: naming the holder's process id and start time, and the fix.
    """
    import fcntl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "an unknown process"
            raise RunLockedError(f"{run_dir} is being trained by another process ({holder}): wait for it to finish, "
                                 "or train into another folder (--out)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        yield path
    finally:
        fh.close()  # releases the lock


def _rel(p: Path) -> str:
    """``p`` relative to the repository root when it lies inside it (for printed command lines)."""
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p.resolve())


def _set_args(overrides: dict[str, Any] | None) -> list[str]:
    out: list[str] = []
    for k, v in (overrides or {}).items():
        out += ["--set", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    return out


def reproduce_command(method: str, profile: str, seed: int, data_dir: str | Path, run_dir: str | Path, overrides: dict[str, Any] | None = None) -> str:
    """The ``avgn train`` command line that reproduces a run (paths relative to the repository root)."""
    cmd = ["avgn", "train", "--method", method, "--profile", profile, "--seed", str(seed), "--data", _rel(Path(data_dir)), "--out", _rel(Path(run_dir))]
    return " ".join(shlex.quote(c) for c in cmd + _set_args(overrides))


def eval_command(
    run_dir: str | Path, split: str = "test", model_overrides: dict[str, Any] | None = None, out_dir: str | Path | None = None,
    sets: Sequence[str] | None = None, tag: str | None = None,
) -> str:
    """The ``avgn eval`` command line that evaluates a run on ``split`` (optionally with
    inference-time model changes, written to ``out_dir``)."""
    cmd = ["avgn", "eval", _rel(Path(run_dir)), "--split", split, *_set_args(model_overrides)]
    if out_dir is not None:
        cmd += ["--out", _rel(Path(out_dir))]
    if sets:
        cmd += ["--sets", *sets]
    if tag and tag != split:
        cmd += ["--tag", tag]
    return " ".join(shlex.quote(c) for c in cmd)


def reference_command(name: str, profile: str, data_dir: str | Path, out_dir: str | Path, split: str = "test",
                      sets: Sequence[str] | None = None, tag: str | None = None) -> str:
    """The ``avgn eval --reference`` command line of a reference's evaluation."""
    cmd = ["avgn", "eval", "--reference", name, "--profile", profile, "--data", _rel(Path(data_dir)), "--out", _rel(Path(out_dir)), "--split", split]
    if sets:
        cmd += ["--sets", *sets]
    if tag and tag != split:
        cmd += ["--tag", tag]
    return " ".join(shlex.quote(c) for c in cmd)


def flatten(d: dict[str, Any], prefix: str = "", sep: str = "/", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nested dicts to one level, keys joined by ``sep`` (``{"a": {"b": 1}}`` -> ``{"a/b": 1}``)."""
    out = {} if out is None else out
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, dict):
            flatten(v, key, sep, out)
        else:
            out[key] = v
    return out


def experiment_overrides(exp: Experiment) -> dict[str, Any]:
    """The dotted fields in which ``exp`` differs from its profile's defaults (``--set`` arguments)."""
    base = flatten(get_experiment(exp.method, exp.profile).to_dict(), sep=".")
    mine = flatten(exp.to_dict(), sep=".")
    return {k: v for k, v in mine.items() if json.dumps(base.get(k)) != json.dumps(v) and k != "model.num_classes"}


# --------------------------------------------------------------------------------------------------
# the data a run belongs to
# --------------------------------------------------------------------------------------------------
_IDENTITY_KEYS = ("profile", "seed", "catalog_sha256", "config_sha256", "n_scenes", "format_version")


def config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of a build's :class:`~avgn.data.config.DataConfig` as a dict (``build.json``'s
    ``config``): two builds of one profile with other settings (e.g. more clips per source) differ."""
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def data_identity(data_dir: str | Path) -> dict[str, Any]:
    """What identifies a build (``build.json``): its profile, seed, catalogue hash, the hash of its
    settings, size, format."""
    info = load_build_info(data_dir)
    ident = {k: info.get(k) for k in _IDENTITY_KEYS if k != "config_sha256"}
    ident["config_sha256"] = config_sha256(info.get("config") or {})
    return {k: ident[k] for k in _IDENTITY_KEYS}


def check_data(data_dir: str | Path, profile: str, expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """The identity of the build in ``data_dir`` after checking that it was built for ``profile``
    and, if ``expected`` is given (a run's recorded identity), that it is that very build.

    Raises:
        ValueError: naming the folder, what differs and the fix.
    """
    ident = data_identity(data_dir)
    if ident["profile"] != profile:
        raise ValueError(
            f"{data_dir} was built for the {ident['profile']!r} profile, not {profile!r}: build the data for this profile "
            f"(`avgn data build --profile {profile}`) or run the {ident['profile']!r} experiment"
        )
    if expected is not None:
        diff = {k: (expected.get(k), ident[k]) for k in _IDENTITY_KEYS if k in expected and expected.get(k) != ident[k]}
        if diff:
            raise ValueError(
                f"{data_dir} is not the build this run was trained on ({', '.join(f'{k}: run {a!r} vs data {b!r}' for k, (a, b) in diff.items())}); "
                "evaluate it on its own build (leave data_dir unset) or retrain it on this one"
            )
    return ident


# --------------------------------------------------------------------------------------------------
# one training run's folder
# --------------------------------------------------------------------------------------------------
def run_fingerprint(exp: Experiment, data_dir: str | Path) -> str:
    """The fingerprint a run of ``exp`` on the build ``data_dir`` carries in its ``config.json``: that
    of the experiment for the build (:meth:`Experiment.for_build`: the build's class count, ...)."""
    return exp.for_build(load_build_info(Path(data_dir))).fingerprint()


@dataclass(frozen=True)
class RunFolder:
    """The folder of one training run and what it is a run of, resolved once: ``config`` is its
    ``config.json`` (the experiment for the build, its fingerprint, the seed, the build's identity
    checked against the profile, the ``avgn train`` command that reproduces it).

    The training loop (:func:`avgn.train.train`) asks it whether the folder already holds this run
    (:meth:`finished`, :meth:`last_checkpoint`) and hands it the summary to write (:meth:`summary`,
    :meth:`write_summary`); everything a run folder holds is written here or by the engine's
    checkpoint and history callbacks.
    """

    run_dir: Path
    data_dir: Path
    seed: int
    config: dict[str, Any]

    @classmethod
    def of(cls, exp: Experiment, data_dir: str | Path, run_dir: str | Path, seed: int) -> RunFolder:
        """The folder ``run_dir`` for a run of ``exp`` on the build ``data_dir`` with ``seed``.

        Raises:
            ValueError: the build was made for another profile (:func:`check_data`).
        """
        data_dir, run_dir = Path(data_dir), Path(run_dir)
        build_info = load_build_info(data_dir)
        identity = check_data(data_dir, exp.profile)
        overrides = experiment_overrides(exp)  # what the command line needs to rebuild exactly this run
        exp = exp.for_build(build_info)
        config = {
            "experiment": exp.to_dict(),
            "fingerprint": exp.fingerprint(),
            "method": exp.method,
            "profile": exp.profile,
            "seed": int(seed),
            "data_dir": str(data_dir.resolve()),
            "data": identity,
            "class_names": list(build_info["classes"]),
            "overrides": overrides,
            "command": reproduce_command(exp.method, exp.profile, seed, data_dir, run_dir, overrides),
        }
        return cls(run_dir, data_dir, int(seed), config)

    @property
    def experiment(self) -> Experiment:
        """The experiment as the run trains it (for its build)."""
        return Experiment.from_dict(self.config["experiment"])

    def _check(self, last: dict[str, Any], resume: bool) -> None:
        if not resume:
            raise FileExistsError(f"{self.run_dir} already holds a run; resume it (resume=True / --resume) or choose another folder")
        old = last["config"]
        for key in ("fingerprint", "seed", "data"):
            if old.get(key) != self.config[key]:
                raise ValueError(f"cannot resume {self.run_dir}: its {key} differs ({old.get(key)!r} vs {self.config[key]!r}); "
                                 "use another run folder")

    def last_checkpoint(self, resume: bool) -> dict[str, Any] | None:
        """The folder's ``last`` checkpoint info (:func:`avgn.checkpoint.read_checkpoint_info`), or
        ``None`` in a new folder.

        Raises:
            FileExistsError: the folder holds a run and ``resume`` is False.
            ValueError: the run there is another one (fingerprint, seed or build differ).
        """
        last = read_checkpoint_info(self.run_dir, "last")
        if last is not None:
            self._check(last, resume)
        return last

    def finished(self, resume: bool) -> dict[str, Any] | None:
        """``run.json`` when the folder holds this run, finished; else ``None`` (nothing there, or
        still running). A finished run is never written again, so this reads it without its lock.

        Raises:
            FileExistsError / ValueError: as :meth:`last_checkpoint`.
        """
        last = read_checkpoint_info(self.run_dir, "last") if (self.run_dir / "run.json").is_file() else None
        if not self.holds_finished(last):
            return None
        assert last is not None
        self._check(last, resume)
        return self.read_summary()

    def holds_finished(self, last: dict[str, Any] | None) -> bool:
        """Whether the folder, whose ``last`` checkpoint info is ``last``, holds a finished run: the
        checkpoint says so and ``run.json`` is written."""
        return last is not None and bool(last["state"].get("finished")) and (self.run_dir / "run.json").is_file()

    def write_config(self, config: dict[str, Any]) -> None:
        """Write ``config.json`` (``config``: :attr:`config`, plus what the run adds, e.g. ``init_from``)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "config.json", config)

    def summary(self, state: Any, step: int, n_params: int, features: dict[str, Any], threshold: float | None, curve: Any,
                device: str) -> dict[str, Any]:
        """``run.json`` of the finished run: identity, environment, time, the selected epoch and its
        validation metrics (``state``: the engine's :class:`avgn.engine.TrainState`)."""
        exp = self.experiment
        best_row = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
        return {
            "method": exp.method,
            "profile": exp.profile,
            "seed": self.seed,
            "finished": True,
            "git_revision": git_revision(),
            "environment": environment_report(device),
            "run_dir": str(self.run_dir),
            "data_dir": str(self.data_dir.resolve()),
            "data": self.config["data"],
            "command": self.config["command"],
            "fingerprint": self.config["fingerprint"],
            "epochs_run": len(state.history),
            "steps": step,
            "best_epoch": state.best_epoch,
            "best_val_score": state.best_score,
            "selection_modes": list(get_method(exp.method).modes),
            "presence_threshold": threshold,
            "threshold_curve": curve,
            "stopped_early": state.stopped_early,
            "train_seconds": state.train_seconds,
            "wall_seconds": state.wall_seconds,
            "samples": state.samples,
            "samples_per_s": state.samples / state.train_seconds if state.train_seconds else float("nan"),
            "trainable_parameters": n_params,
            "features": features,
            "val": best_row["val"] if best_row else {},
            "config": exp.to_dict(),
        }

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``run.json`` and its flat one-row ``run.csv`` (atomically, ``run.json`` first)."""
        import pandas as pd

        atomic_write_json(self.run_dir / "run.json", summary)
        skip = ("environment", "config", "features", "threshold_curve", "distributed")
        flat = flatten({k: v for k, v in summary.items() if k not in skip})
        atomic_write_text(self.run_dir / "run.csv", pd.DataFrame([flat]).to_csv(index=False))

    def read_summary(self) -> dict[str, Any]:
        """``run.json`` as written (another rank's, under data parallelism)."""
        return json.loads((self.run_dir / "run.json").read_text())


# --------------------------------------------------------------------------------------------------
# reading runs
# --------------------------------------------------------------------------------------------------
def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything a notebook reads from a run folder: ``config``, ``history`` (DataFrame), ``run``
    (final summary or None while unfinished) and ``eval`` (``{tag: payload}`` of finished evaluations)."""
    import pandas as pd

    run_dir = Path(run_dir)
    out: dict[str, Any] = {"run_dir": run_dir}
    out["config"] = json.loads((run_dir / "config.json").read_text())
    hist = run_dir / "history.json"
    out["history"] = pd.json_normalize(json.loads(hist.read_text()), sep="/") if hist.is_file() else pd.DataFrame()
    rj = run_dir / "run.json"
    out["run"] = json.loads(rj.read_text()) if rj.is_file() else None
    out["eval"] = {p.stem[len("eval_") :]: json.loads(p.read_text()) for p in sorted(run_dir.glob("eval_*.json"))}
    return out


def run_presence_threshold(run_dir: str | Path) -> float | None:
    """The presence threshold of the ``predicted`` selection that a finished run chose on its
    validation sets (``run.json``); None for an unfinished run or a method without that selection."""
    summary = Path(run_dir) / "run.json"
    if not summary.is_file():
        return None
    th = json.loads(summary.read_text()).get("presence_threshold")
    return None if th is None else float(th)


def load_trained_model(
    run_dir: str | Path, checkpoint: str = "best", device: str = "auto", model_overrides: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, Experiment, dict[str, Any]]:
    """Rebuild a run's model from ``config.json`` (through the method registry) and load checkpoint
    ``checkpoint`` (eval mode).

    ``model_overrides`` changes inference-time fields of the model configuration before the
    weights are loaded, e.g. ``{"object_prior_alpha": 0.4}`` scores a trained EZ-VSL with the
    object-prior fusion of its test script. A field that changes the architecture makes the
    checkpoint fail to load (a clear error naming the missing / unexpected weights).

    Returns ``(model, experiment, info)`` with ``info``: ``seed``, ``data_dir``, ``data`` (the
    build's identity), ``checkpoint_epoch``, ``config`` and, for a finished run that selects its
    sources, ``presence_threshold``.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json); train it first with `avgn train`")
    cfg = json.loads(cfg_path.read_text())
    exp = Experiment.from_dict(cfg["experiment"])
    if model_overrides:
        exp = exp.with_overrides(**{f"model.{k}": v for k, v in model_overrides.items()})
    model = get_method(exp.method).build(exp.model)
    info = load_checkpoint(run_dir, model, name=checkpoint)
    if info is None:
        raise FileNotFoundError(f"{run_dir} has no '{checkpoint}' checkpoint yet (is the run finished? `avgn train ... --resume`)")
    model.to(resolve_device(device)).eval()
    out = {"seed": cfg["seed"], "data_dir": cfg["data_dir"], "data": cfg.get("data"), "checkpoint_epoch": info["epoch"], "config": cfg}
    threshold = run_presence_threshold(run_dir)
    if threshold is not None:
        out["presence_threshold"] = threshold
    return model, exp, out


# --------------------------------------------------------------------------------------------------
# named variants (the book's catalogue of them: avgnbook.variants)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A named configuration compared in the book.

    Attributes:
        label: the name in tables and figures.
        method: a learned method of the registry (``avgn``, ``ezvsl``, ``mal``, ...).
        overrides: training-time changes to the profile's experiment, as ``(dotted field, value)``
            pairs (:meth:`avgn.experiment.Experiment.with_overrides`, checked when the variant is
            made); a variant with overrides trains its own runs.
        eval_overrides: inference-time changes to the model configuration, ``(field, value)``
            pairs, applied to the *trained weights of the variant without them* (e.g. EZ-VSL's
            object-prior fusion ``alpha``): no extra training.
        name: the folder of the variant's runs / evaluations, ``<runs>/variants/<name>``; ``None``
            for the method's plain runs (``<runs>/<profile>/<method>-seed<S>``).
        factor / level: what an ablation varies and its value (e.g. ``"depth"``, ``6``), typed,
            so tables never parse labels back into values; ``None`` outside an ablation.
        init_from: a variant whose run (same profile and seed) initialises this one's weights
            (``train.init_from``): a second training stage. It is trained first if missing.
    """

    label: str
    method: str
    overrides: tuple[tuple[str, Any], ...] = ()
    eval_overrides: tuple[tuple[str, Any], ...] = ()
    name: str | None = None
    factor: str | None = None
    level: Any = None
    init_from: "Variant | None" = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if (self.overrides or self.eval_overrides or self.init_from) and not self.name:
            raise ValueError(f"variant {self.label!r} changes the configuration, so it needs its own folder name")
        if self.overrides:  # a typo in a dotted field fails here, not hours later in a queue
            get_experiment(self.method, "smoke", **dict(self.overrides))

    @property
    def training(self) -> "Variant":
        """The variant whose runs hold the weights (itself, less any inference-time change)."""
        if not self.eval_overrides:
            return self
        return Variant(self.label, self.method, self.overrides, (), self.name if (self.overrides or self.init_from) else None, self.factor,
                       self.level, self.init_from)


def variant_dirs(variant: Variant, runs_dir: str | Path, profile: str, seed: int) -> tuple[Path, Path]:
    """``(run_dir, eval_dir)`` of a :class:`Variant`: where its weights are trained and where its
    evaluations are written (the same folder unless it only changes inference)."""
    runs_dir = Path(runs_dir)
    tv = variant.training
    root = runs_dir / "variants" / tv.name if tv.name else runs_dir
    run_dir = run_dir_for(root, variant.method, profile, seed)
    if not variant.eval_overrides:
        return run_dir, run_dir
    return run_dir, run_dir_for(runs_dir / "variants" / str(variant.name), variant.method, profile, seed)
