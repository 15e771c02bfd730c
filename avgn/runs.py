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

from avgn.checkpoint import load_checkpoint
from avgn.data.config import DataConfig
from avgn.data.manifest import load_build_info
from avgn.env import resolve_device
from avgn.experiment import METHODS, Experiment, get_experiment
from avgn.methods import get_method, list_methods
from avgn.models.config import PAPER_DESIGN

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
    "Variant",
    "MAIN_VARIANTS",
    "BASELINE_DESIGN_VARIANTS",
    "PAPER_DESIGN_VARIANT",
    "DEPTH_VARIANTS",
    "ASSIGNMENT_VARIANTS",
    "LOSS_VARIANTS",
    "DSOL_STAGE1_VARIANT",
    "DSOL_VARIANT",
    "TVSL_VARIANTS",
    "TVSL_HELDOUT_CANDIDATES",
    "VARIANT_GROUPS",
    "WIDTH_VARIANTS",
    "SHORT_VARIANT",
    "ABLATION_SCHEDULE",
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
# the variants the book compares
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


#: Chapter 4's ablations and chapter 2's paper design train on the 6-epoch schedule with early stopping (:data:`SHORT_VARIANT`, their
#: reference row), not the profile's 16 epochs: 27 ablation runs (9 variants x 3 seeds) at 16 epochs
#: would cost ~19 h of 2-core time, at 6 epochs about 40 % of it.
ABLATION_SCHEDULE: tuple[tuple[str, Any], ...] = (("train.epochs", 6), ("train.early_stopping_patience", 3))
#: Chapter 3: every method, and the two readings of AVGN's and EZ-VSL's public code.
MAIN_VARIANTS: tuple[Variant, ...] = (
    Variant("AVGN", "avgn"),
    Variant("AVGN (public-code target)", "avgn", overrides=(("model.loc_target", "public"),), name="avgn-public"),
    Variant("EZ-VSL", "ezvsl"),
    Variant("EZ-VSL + object prior", "ezvsl", eval_overrides=(("object_prior_alpha", 0.4),), name="ezvsl-ogl"),
    Variant("Mix-and-Localize", "mal"),
)
#: Chapter 3, "Do the baselines learn?": the baselines as their public code builds them (EZ-VSL at the
#: public contrastive temperature 0.03) or as this book's earlier defaults did (EZ-VSL with a batch norm
#: on the audio embedding; Mix-and-Localize walking over every frame of the batch), against which the
#: defaults' departures are measured.
BASELINE_DESIGN_VARIANTS: tuple[Variant, ...] = (
    Variant("EZ-VSL (public code: temperature 0.03)", "ezvsl", overrides=(("model.tau", 0.03),), name="ezvsl-tau003"),
    Variant("EZ-VSL (audio batch norm)", "ezvsl", overrides=(("model.audio_norm", "batchnorm"),), name="ezvsl-batchnorm"),
    Variant("Mix-and-Localize (batch frame graph)", "mal", overrides=(("model.graph", "frames"),), name="mal-frames"),
)
#: Chapter 2: AVGN exactly as the paper and its released code design it (shared presence head, every
#: loss weight 1), against which chapter 2 diagnoses why it does not learn from the audio.
PAPER_DESIGN_VARIANT = Variant(
    "AVGN (paper design)", "avgn", overrides=ABLATION_SCHEDULE + tuple((f"model.{k}", v) for k, v in PAPER_DESIGN.items()), name="avgn-paper-design",
)
#: Chapter 2: what training buys: AVGN on the profile's earlier schedule, 6 epochs with early stopping
#: after 3 epochs without a better validation score (the profile trains 16 epochs, every one).
SHORT_VARIANT = Variant("AVGN, 6 epochs (early stopping)", "avgn", overrides=(("train.epochs", 6), ("train.early_stopping_patience", 3)),
                        name="avgn-6ep", factor="training epochs", level=6)
#: Chapter 4: depth of the per-modality transformers (the profile's own depth is :data:`SHORT_VARIANT`).
DEPTH_VARIANTS: tuple[Variant, ...] = tuple(
    Variant(f"depth {d}", "avgn", overrides=ABLATION_SCHEDULE + (("model.depth", d),), name=f"avgn-depth{d}", factor="depth", level=d) for d in (1, 3, 6, 12)
)
#: Chapter 4: how features are assigned to class tokens (Softmax is the plain AVGN run).
ASSIGNMENT_VARIANTS: tuple[Variant, ...] = (
    Variant("Hard-Softmax", "avgn", overrides=ABLATION_SCHEDULE + (("model.assignment", "hard"),), name="avgn-hard", factor="assignment", level="hard"),
    Variant("Gumbel-Softmax", "avgn", overrides=ABLATION_SCHEDULE + (("model.assignment", "gumbel"),), name="avgn-gumbel", factor="assignment", level="gumbel"),
)
#: Chapter 4: losses removed (Eq. 10 against the public-code target is in :data:`MAIN_VARIANTS`).
LOSS_VARIANTS: tuple[Variant, ...] = (
    Variant("without token loss", "avgn", overrides=ABLATION_SCHEDULE + (("model.w_token", 0.0),), name="avgn-no-token", factor="loss", level="no token"),
    Variant("without presence losses", "avgn", overrides=ABLATION_SCHEDULE + (("model.w_audio_cls", 0.0), ("model.w_visual_cls", 0.0)), name="avgn-no-presence",
            factor="loss", level="no presence"),
)
#: Chapter 4: the width of the audio ResNet-18 (the ``cpu`` profile's is 0.5, the paper's 1.0; the
#: profile's own width is the plain AVGN run). Not a claim of the paper: how much the audio side's
#: capacity limits presence prediction and label-free selection at this budget.
WIDTH_VARIANTS: tuple[Variant, ...] = (
    Variant("audio width 0.25", "avgn", overrides=ABLATION_SCHEDULE + (("model.encoder.audio_width", 0.25),), name="avgn-audio-width0.25", factor="audio width",
            level=0.25),
)
#: Chapter 7: DSOL's two stages — stage 1 on single-source scenes only, stage 2 on mixtures only,
#: initialised from stage 1's run of the same seed.
DSOL_STAGE1_VARIANT = Variant("DSOL stage 1", "dsol", overrides=(("model.stage", 1), ("train.concat_items", 0), ("train.scene_items", 0)),
                              name="dsol-stage1")
DSOL_VARIANT = Variant("DSOL", "dsol", overrides=(("model.stage", 2), ("train.solo_items", 0)), name="dsol", init_from=DSOL_STAGE1_VARIANT)
#: Chapter 9: T-VSL with this book's MiniLM anchors (two prompt templates averaged) and with the bare
#: class name as its only prompt (the public code prompts its text tower with the bare name).
TVSL_VARIANTS: tuple[Variant, ...] = (
    Variant("T-VSL (MiniLM anchors)", "tvsl", factor="templates", level="sound + photo"),
    Variant("T-VSL (MiniLM, bare name)", "tvsl", overrides=(("model.templates", ("{}",)),), name="tvsl-bare",
            factor="templates", level="bare name"),
)
#: Chapter 9: the default T-VSL weights, ``predicted`` selection choosing among the held-out classes only
#: (the classic zero-shot protocol; the plain run chooses among all classes: generalised zero-shot).
#: Meant for the ``test_zeroshot`` split.
TVSL_HELDOUT_CANDIDATES = Variant(
    "T-VSL (MiniLM anchors), held-out candidates", "tvsl", eval_overrides=(("candidate_classes", DataConfig().heldout_classes),),
    name="tvsl-heldout-candidates", factor="candidates", level="held-out classes",
)
#: The groups of variants by name (``scripts/run_variants.py --group``, the chapters).
VARIANT_GROUPS: dict[str, tuple[Variant, ...]] = {
    "main": MAIN_VARIANTS,
    "baselines": BASELINE_DESIGN_VARIANTS,
    "paper": (PAPER_DESIGN_VARIANT,),
    "depth": DEPTH_VARIANTS,
    "assignment": ASSIGNMENT_VARIANTS,
    "loss": LOSS_VARIANTS,
    "width": WIDTH_VARIANTS,
    "short": (SHORT_VARIANT,),
    "ablations": DEPTH_VARIANTS + ASSIGNMENT_VARIANTS + LOSS_VARIANTS + WIDTH_VARIANTS,
    "dsol": (DSOL_STAGE1_VARIANT, DSOL_VARIANT),
    "text": TVSL_VARIANTS + (TVSL_HELDOUT_CANDIDATES,),
}
