"""Training engine: one loop for every registered method (AVGN, EZ-VSL, Mix-and-Localize, DSOL, T-VSL).

:func:`train` runs one (method, profile, seed) experiment into a run folder:

* **Device and numerics**: CUDA when present (``device="auto"``), CPU otherwise; optional bfloat16
  autocast (CPU and CUDA) and channels-last memory format (:class:`avgn.experiment.TrainConfig`).
* **Data**: every epoch draws fresh mixtures (:class:`avgn.data.datasets.OnTheFlyMixtureDataset`):
  single-source scenes, ``concat`` duets and ``scene`` duets. A batch never mixes ``concat``
  (224x448) and 224x224 frames (:class:`GroupedBatchSampler`). With a frozen backbone the cached
  features are read instead of images (:mod:`avgn.features`).
* **Determinism**: Python / NumPy / torch are seeded from ``seed``; each epoch's batch order comes
  from a generator seeded with ``(seed, epoch)``, every item's mixture from
  ``(seed, component, epoch, index)`` (:meth:`OnTheFlyMixtureDataset.recipe`); a batch is rendered at
  once by :class:`avgn.data.batching.MixtureBatcher`, optionally a few batches ahead in a thread
  (``num_workers``). The result does not depend on the prefetch depth.
* **Method**: everything method-specific comes from the registry (:mod:`avgn.methods`): the model
  (``build``), the loss (``loss(model, outputs, batch)``), the maps (``predict``), the selection
  modes and the extra per-epoch diagnostics; this loop never branches on a method's name.
* **Model selection**: after every epoch the model is evaluated on the validation sets
  (``val/solo/scene``, ``val/duet/concat``, ``val/duet/scene``; never on test); the selection
  score is the mean of their primary metrics (AP for solo, CAP for duets) over the method's
  selection modes (a method that selects its sources itself is also scored on its own selection).
  The best epoch is saved as checkpoint ``best``; optional early stopping.
* **Checkpoints and resuming** (:mod:`avgn.checkpoint`): checkpoint ``last`` after every epoch, and
  within epochs every ``checkpoint_minutes`` / ``checkpoint_steps``, holds weights, optimiser,
  scheduler, RNG states, the history and (within an epoch) the epoch's position and running loss
  sums. ``resume=True`` continues an interrupted run — killed at any moment, ``kill -9`` included —
  from its last checkpoint, skipping the batches already trained on without rendering them, and
  reaches the same weights and metrics as an uninterrupted run (tested through the command line);
  on a finished run it just returns its results.
* **Micro-batches and data parallelism**: ``micro_batches`` cuts each batch into shares whose
  gradients are accumulated before one step; under ``torchrun`` each process trains on its share of
  every global batch through DistributedDataParallel, rank 0 alone validating and writing
  (:mod:`avgn.distributed`). N processes train exactly the model of one process with
  ``micro_batches=N`` (tested).
* **Results** in the run folder: ``config.json`` (configuration, seed, data identity, command line),
  ``history.json`` / ``history.csv`` (per epoch: losses, learning rate, samples/s, validation
  metrics in both source-selection modes, AVGN's presence and token-classifier precision / recall /
  F1), and when finished ``run.json`` / ``run.csv`` (git revision, environment, wall time,
  samples/s, best epoch and its validation metrics). Test-set evaluation is separate
  (:func:`avgn.evaluate.evaluate_run`, ``avgn eval RUN_DIR --split test``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler
from tqdm.auto import tqdm

from avgn import distributed
from avgn.checkpoint import (
    atomic_write_json, atomic_write_text, capture_rng_state, load_checkpoint, read_checkpoint_info, restore_rng_state, save_checkpoint,
)
from avgn.data.batching import MixtureBatcher
from avgn.data.datasets import OnTheFlyMixtureDataset
from avgn.data.manifest import load_build_info
from avgn.distributed import DistInfo
from avgn.env import environment_report, epoch_seed, git_revision, resolve_device, seed_everything
from avgn.evaluate import SELECTION_MIN_SOURCES, EvalSet, choose_presence_threshold, evaluate_sets, load_eval_set, selection_score
from avgn.experiment import Experiment, TrainConfig, get_experiment
from avgn.features import FeatureStore, compute_features
from avgn.methods import EpochContext, Method, MethodPredictor, get_method, model_inputs
from avgn.runs import RunLockedError, check_data, experiment_overrides, flatten, reproduce_command, run_lock

__all__ = [
    "epoch_seed",
    "GroupedBatchSampler",
    "build_train_data",
    "prefetch",
    "WarmupCosine",
    "train",
]


# --------------------------------------------------------------------------------------------------
# seeding and batching
# --------------------------------------------------------------------------------------------------
class GroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches that never mix groups (index ranges of a :class:`ConcatDataset`).

    Per epoch, each group's indices are permuted and cut into batches, then the batches of all groups
    are shuffled together; everything is drawn from a generator seeded with ``(seed, epoch)``, so an
    epoch's order is a pure function of the two (:meth:`set_epoch`). A group's last, partial batch
    is kept if it has at least half a batch (and 2 samples), dropped otherwise.
    """

    def __init__(self, groups: Sequence[tuple[int, int]], batch_size: int, seed: int = 0, shuffle: bool = True):
        self.groups = [(int(a), int(n)) for a, n in groups if n > 0]
        self.batch_size, self.seed, self.shuffle, self.epoch = int(batch_size), int(seed), shuffle, 0
        if not self.groups:
            raise ValueError("no training data: every group is empty")
        if len(self) == 0:
            raise ValueError(f"batch_size {batch_size} is larger than twice every group {self.groups}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _sizes(self, n: int) -> list[int]:
        full, rest = divmod(n, self.batch_size)
        keep_rest = rest >= max(2, self.batch_size // 2)
        return [self.batch_size] * full + ([rest] if keep_rest else [])

    def __len__(self) -> int:
        return sum(len(self._sizes(n)) for _, n in self.groups)

    def __iter__(self):
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 7))
        batches: list[list[int]] = []
        for start, n in self.groups:
            order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
            pos = 0
            for size in self._sizes(n):
                batches.append((order[pos : pos + size] + start).tolist())
                pos += size
        perm = torch.randperm(len(batches), generator=g).tolist() if self.shuffle else range(len(batches))
        for i in perm:
            yield batches[i]


def build_train_data(exp: Experiment, data_dir: str | Path, seed: int, store: Any = None,
                     device: str | torch.device | None = None) -> tuple[Any, list[tuple[int, int]], dict[str, int]]:
    """The epoch's training items: ``(batcher, groups for GroupedBatchSampler, items per component)``.

    Components (:class:`avgn.data.datasets.OnTheFlyMixtureDataset` on the train split): ``solo``
    (one source), ``concat`` (two solo scenes of different classes side by side) and ``scene``
    (pre-built two-source scenes); each draws its items from its own seed stream. The
    :class:`avgn.data.batching.MixtureBatcher` renders a whole batch of them at once (clips in
    memory, one batched mix + STFT; cached features instead of frames when ``store`` is given, else
    the frames decoded once). ``device`` is the training device: when it is a CUDA device the batches
    are mixed and transformed there (the CPU only draws the recipes); elsewhere on the CPU (MPS has
    no float64, which the gains and the exact path use).
    """
    t = exp.train
    specs = [("solo", "concat", 1, t.solo_items), ("scene", "scene", 2, t.scene_items), ("concat", "concat", 2, t.concat_items)]
    parts: list[tuple[str, Dataset]] = []
    for k, (name, layout, n_src, items) in enumerate(specs):
        if items == 0:
            continue
        base = OnTheFlyMixtureDataset(
            data_dir, split="train", layout=layout, n_sources=n_src, seed=epoch_seed(seed, k) % 2**31, resample_audio=t.resample_audio,
            length=items, spec=exp.inputs.spec,
        )
        parts.append((name, base))
    if not parts:
        raise ValueError("the training configuration selects no data (solo_items = concat_items = scene_items = 0)")
    ds = ConcatDataset([p for _, p in parts])
    sizes = {name: len(p) for name, p in parts}  # type: ignore[arg-type]
    # groups by frame shape: 224x224 (solo + scene duets) and 224x448 (concat duets)
    square = sizes.get("solo", 0) + sizes.get("scene", 0)
    groups = [(0, square), (square, sizes.get("concat", 0))]
    render_on = device if device is not None and torch.device(device).type == "cuda" else None
    return MixtureBatcher(ds, store if exp.inputs.cached_features else None, render=exp.inputs.train_render, device=render_on), groups, sizes


def prefetch(batches: Iterator[dict[str, Any]], depth: int) -> Iterator[dict[str, Any]]:
    """Iterate ``batches`` with up to ``depth`` of them rendered ahead in a background thread
    (``depth=0``: in the caller's thread). Rendering is NumPy / torch work that releases the GIL;
    an exception in the thread is raised in the caller."""
    if depth <= 0:
        yield from batches
        return
    q: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put(b)
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    th = threading.Thread(target=work, daemon=True, name="avgn-prefetch")
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.01)


class WarmupCosine:
    """LR multiplier per step: linear warm-up, then constant or cosine decay to ``min_ratio``
    (a plain object: :class:`torch.optim.lr_scheduler.LambdaLR` stores its ``__dict__``)."""

    def __init__(self, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float):
        self.total, self.warmup, self.schedule, self.min_ratio = int(total_steps), int(warmup_steps), schedule, float(min_ratio)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.total - self.warmup)
        frac = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


# --------------------------------------------------------------------------------------------------
# the loop, in steps
# --------------------------------------------------------------------------------------------------
def _log_fn(progress: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    return log


def _frozen_prefixes(exp: Experiment) -> tuple[str, ...]:
    """Frozen backbone weights that are reproducible from the installed package or the weights file."""
    enc = exp.model.encoder
    if enc.freeze_visual and (enc.pretrained_path or (enc.visual_backbone == "efficientnet_lite0" and enc.use_packaged_weights)):
        return ("visual.backbone.",)
    return ()


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    import pandas as pd

    atomic_write_json(run_dir / "history.json", history)
    atomic_write_text(run_dir / "history.csv", pd.DataFrame([flatten(h) for h in history]).to_csv(index=False))


def _run_config(exp: Experiment, data_dir: Path, run_dir: Path, seed: int) -> dict[str, Any]:
    """``config.json`` of a run: the experiment (with the build's class count), its fingerprint,
    the seed, the build's identity (checked against the profile) and the reproducing command."""
    build_info = load_build_info(data_dir)
    identity = check_data(data_dir, exp.profile)
    overrides = experiment_overrides(exp)  # what the command line needs to rebuild exactly this run
    exp = exp.for_build(build_info)
    return {
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


def _check_resumable(run_dir: Path, config: dict[str, Any], last: dict[str, Any], resume: bool) -> None:
    if not resume:
        raise FileExistsError(f"{run_dir} already holds a run; resume it (resume=True / --resume) or choose another folder")
    old = last["config"]
    for key in ("fingerprint", "seed", "data"):
        if old.get(key) != config[key]:
            raise ValueError(f"cannot resume {run_dir}: its {key} differs ({old.get(key)!r} vs {config[key]!r}); use another run folder")


@dataclass
class _Inputs:
    """What a run reads: the feature store (cached backbone features), the training batcher, its
    batch sampler, the items per component and the materialised validation sets."""

    store: FeatureStore | None
    batcher: MixtureBatcher
    sampler: GroupedBatchSampler
    sizes: dict[str, int]
    val_sets: list[EvalSet]
    features: dict[str, Any] = field(default_factory=dict)


def _inputs(exp: Experiment, data_dir: Path, seed: int, device: str, progress: bool, log: Callable[[str], None],
            dist_info: DistInfo = DistInfo()) -> _Inputs:
    store, feat_info = None, {}
    if exp.inputs.cached_features:
        splits = sorted({"train"} | {n.split("/")[0] for n in exp.inputs.val_sets})
        if not dist_info.is_main:  # rank 0 completes the feature cache, the others then read it
            distributed.barrier(dist_info)
        feat_info = compute_features(data_dir, exp.inputs.features, device=device, progress=progress, splits=splits)
        if dist_info.is_main:
            distributed.barrier(dist_info)
        if feat_info["n_computed"]:
            log(f"[avgn.train] cached {feat_info['n_computed']} images' features in {feat_info['seconds']:.1f} s")
        store = FeatureStore(data_dir, exp.inputs.features, preload=True, splits=splits)
    batcher, groups, sizes = build_train_data(exp, data_dir, seed, store, device=device)
    sampler = GroupedBatchSampler(groups, exp.train.batch_size, seed=seed)
    val_sets = [load_eval_set(data_dir, n, exp.inputs, store, max_items=exp.inputs.val_max_items, materialize=True) for n in exp.inputs.val_sets]
    return _Inputs(store, batcher, sampler, sizes, val_sets, feat_info)


@dataclass
class _Optimisation:
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR


def _epoch_plan(inputs: _Inputs, epoch: int, skip: int = 0, dist_info: DistInfo = DistInfo()) -> Iterator[list[int]]:
    """The index lists of ``epoch``'s batches in its order, less the first ``skip`` (skipped as
    index lists: they are never rendered); under data parallelism this rank's share of each
    (:func:`avgn.distributed.shard`)."""
    inputs.sampler.set_epoch(epoch)
    inputs.batcher.set_epoch(epoch)
    return (distributed.shard(b, dist_info) for b in itertools.islice(iter(inputs.sampler), skip, None))


def _epoch_batches(inputs: _Inputs, epoch: int) -> Iterator[dict[str, Any]]:
    """The training batches of ``epoch`` in its order, whole (what :meth:`Method.on_epoch_start` reads)."""
    return inputs.batcher.iterate(_epoch_plan(inputs, epoch))


def _epoch_steps(inputs: _Inputs, epoch: int, micro_batches: int, skip: int = 0, dist_info: DistInfo = DistInfo()) -> Iterator[list[dict[str, Any]]]:
    """The optimiser steps of ``epoch``: per step, this rank's share of the batch cut into
    ``micro_batches`` (``share[i::k]``), each rendered as one batch."""
    for share in _epoch_plan(inputs, epoch, skip, dist_info):
        yield [inputs.batcher.batch(share[i::micro_batches]) for i in range(micro_batches)]


class _TrainStep(torch.nn.Module):
    """The model's forward and the method's loss as one module (what DistributedDataParallel wraps,
    so that every parameter the loss touches is synchronised): ``forward(batch) -> (loss, parts)``."""

    def __init__(self, method: Method, model: torch.nn.Module, device: torch.device, channels_last: bool):
        super().__init__()
        self.method, self.model, self.device, self.channels_last = method, model, device, channels_last

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        out = self.model(**model_inputs(batch, self.device, self.channels_last))
        return self.method.loss(self.model, out, batch)


@dataclass
class EpochProgress:
    """How far the current epoch has got: what a within-epoch checkpoint stores (as
    ``state["partial"]``) and a resumed run starts from.

    Attributes:
        epoch: the epoch (0-based) in progress.
        batches: its batches already trained on.
        sums: per loss part, the sum of ``value x batch size`` so far.
        samples: samples trained on so far; ``seconds``: training time so far.
        before: what the method's ``on_epoch_start`` reported (it is not run again on resume).
    """

    epoch: int
    batches: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0
    before: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches": self.batches, "sums": dict(self.sums), "samples": self.samples,
                "seconds": self.seconds, "before": dict(self.before)}


class _Lap:
    """Seconds since the previous :meth:`lap` (or since creation)."""

    def __init__(self) -> None:
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt


class _Checkpointer:
    """Decides when a within-epoch checkpoint is due (every ``minutes`` of training and / or every
    ``steps`` optimiser steps) and writes it through ``save(progress, step)``."""

    def __init__(self, minutes: float | None, steps: int | None, save: Callable[[EpochProgress, int], None],
                 dist_info: DistInfo = DistInfo()):
        self.every_s = None if minutes is None else 60.0 * minutes
        self.every_steps, self.save, self.dist_info = steps, save, dist_info
        self.t_last = time.perf_counter()

    def after_step(self, progress: EpochProgress, step: int, epoch_len: int) -> None:
        if progress.batches >= epoch_len:  # the end-of-epoch checkpoint follows
            return
        due = bool(self.every_steps and step % self.every_steps == 0)
        if self.every_s is not None:  # rank 0's clock decides for every rank
            due |= distributed.broadcast_object(time.perf_counter() - self.t_last >= self.every_s, self.dist_info)
        if due:
            self.save(progress, step)
            self.t_last = time.perf_counter()


def _init_from(model: torch.nn.Module, run: str, dev: torch.device) -> dict[str, Any]:
    """Load the ``best`` weights of the finished run ``run`` into ``model`` (``TrainConfig.init_from``)."""
    src = Path(run)
    if not (src / "run.json").is_file():
        raise FileNotFoundError(f"train.init_from={run}: no finished run there (no run.json); train it first")
    info = load_checkpoint(src, model, name="best", map_location=dev)
    if info is None:
        raise FileNotFoundError(f"train.init_from={run}: the run has no 'best' checkpoint")
    return {"run": str(src), "epoch": info["epoch"], "fingerprint": info["config"].get("fingerprint")}


def make_optimizer(params: list[torch.nn.Parameter], t: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``t`` names (``adam`` / ``adamw``, its learning rate, weight decay and kernel)."""
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(params, lr=t.lr, weight_decay=t.weight_decay, fused=t.fused_optimizer or None)


def _optimisation(model: torch.nn.Module, exp: Experiment, steps_per_epoch: int) -> _Optimisation:
    t = exp.train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, t)
    schedule = WarmupCosine(t.epochs * steps_per_epoch, int(round(t.warmup_epochs * steps_per_epoch)), t.schedule, t.min_lr_ratio)
    return _Optimisation(params, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule))


def _train_epoch(
    train_step: torch.nn.Module, exp: Experiment, inputs: _Inputs, opt: _Optimisation, dev: torch.device,
    progress: EpochProgress, step: int, show: bool, checkpointer: _Checkpointer | None = None, dist_info: DistInfo = DistInfo(),
) -> tuple[dict[str, float], int, int, float]:
    """One pass over the epoch's fresh mixtures, from ``progress`` (a fresh one, or where a
    within-epoch checkpoint left it): ``(mean loss parts, samples, step, seconds)``, the means and
    the samples over every rank."""
    t = exp.train
    epoch, n_batches = progress.epoch, len(inputs.sampler)
    loader = prefetch(_epoch_steps(inputs, epoch, t.micro_batches, skip=progress.batches, dist_info=dist_info), t.num_workers)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=t.bf16)
    train_step.train()
    t0 = time.perf_counter() - progress.seconds
    bar = tqdm(loader, total=n_batches, initial=progress.batches, desc=f"{exp.method} epoch {epoch + 1}/{t.epochs}", disable=not show,
               leave=False)
    for micro in bar:
        opt.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(micro):
            # under DDP the gradients are averaged over the ranks once per step, with the last micro-batch
            defer = i < len(micro) - 1 and isinstance(train_step, torch.nn.parallel.DistributedDataParallel)
            # buffers (batch-norm running statistics) follow the first micro-batch only, as DDP's follow rank 0's share
            kept = [b.detach().clone() for b in train_step.buffers()] if i > 0 else None
            with train_step.no_sync() if defer else contextlib.nullcontext(), autocast:  # type: ignore[operator]
                loss, parts = train_step(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {step} "
                                             f"({ {k: float(v) for k, v in parts.items()} })")
                (loss / len(micro) if len(micro) > 1 else loss).backward()
            if kept is not None:
                with torch.no_grad():
                    for b, k in zip(train_step.buffers(), kept):
                        b.copy_(k)
            bsz = int(batch["spec"].shape[0])
            progress.samples += bsz
            for k, v in parts.items():
                progress.sums[k] = progress.sums.get(k, 0.0) + float(v) * bsz
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(opt.params, t.grad_clip)
        opt.optimizer.step()
        opt.scheduler.step()
        step += 1
        progress.batches += 1
        progress.seconds = time.perf_counter() - t0
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if checkpointer is not None:
            checkpointer.after_step(progress, step, n_batches)
    total = distributed.all_reduce_sums({**progress.sums, "__samples": progress.samples}, dist_info)
    n_seen = int(total.pop("__samples"))
    return {k: v / max(1, n_seen) for k, v in total.items()}, n_seen, step, time.perf_counter() - t0


def _summary(exp: Experiment, seed: int, run_dir: Path, data_dir: Path, config: dict[str, Any], state: dict[str, Any], step: int,
             n_params: int, inputs: _Inputs, threshold: float | None, curve: Any, device: str) -> dict[str, Any]:
    best_row = next((h for h in state["history"] if h["epoch"] == state["best_epoch"]), None)
    return {
        "method": exp.method,
        "profile": exp.profile,
        "seed": int(seed),
        "finished": True,
        "git_revision": git_revision(),
        "environment": environment_report(device),
        "run_dir": str(run_dir),
        "data_dir": str(data_dir.resolve()),
        "data": config["data"],
        "command": config["command"],
        "fingerprint": config["fingerprint"],
        "epochs_run": len(state["history"]),
        "steps": step,
        "best_epoch": state["best_epoch"],
        "best_val_score": state["best_score"],
        "selection_modes": list(get_method(exp.method).modes),
        "presence_threshold": threshold,
        "threshold_curve": curve,
        "stopped_early": state["stopped_early"],
        "train_seconds": state["train_seconds"],
        "wall_seconds": state["wall_seconds"],
        "samples": state["samples"],
        "samples_per_s": state["samples"] / state["train_seconds"] if state["train_seconds"] else math.nan,
        "trainable_parameters": n_params,
        "features": inputs.features,
        "val": best_row["val"] if best_row else {},
        "config": exp.to_dict(),
    }


def train(
    exp: Experiment | str,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    seed: int = 0,
    profile: str | None = None,
    device: str = "auto",
    resume: bool = True,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one run; returns its summary (the content of ``run.json``, or the partial state).

    Args:
        exp: an :class:`Experiment`, or a method name (then ``profile`` and ``overrides`` pick it).
        data_dir: the built benchmark (``avgn data build``), built for the experiment's profile.
        run_dir: the run folder (created).
        seed: the run's seed (model init, data order, mixtures).
        resume: continue the run in ``run_dir`` if it has a checkpoint (a finished run is returned
            as is). With ``resume=False`` an existing run is an error, never overwritten.
        stop_after_epochs: stop after this many epochs *in this call* as if interrupted (tests,
            budgeted sessions); the run stays resumable.

    Raises:
        RunLockedError: another process is training in ``run_dir`` (:func:`avgn.runs.run_lock`).
    """
    if isinstance(exp, str):
        exp = get_experiment(exp, profile or "cpu", **dict(overrides or {}))
    done = finished_summary(exp, Path(data_dir), Path(run_dir), int(seed), resume)
    if done is not None:  # read back without the lock: chapters run side by side read the same runs
        return done
    dist_info = distributed.from_env(resolve_device(device))
    try:
        with contextlib.ExitStack() as stack:
            refused = None
            if dist_info.is_main:  # one lock per run folder, held by rank 0 for every rank
                try:
                    stack.enter_context(run_lock(run_dir))
                except RunLockedError as err:
                    refused = str(err)
            refused = distributed.broadcast_object(refused, dist_info)
            if refused:
                raise RunLockedError(refused)
            return _train(exp, Path(data_dir), Path(run_dir), int(seed), device, resume, progress, stop_after_epochs, dist_info)
    finally:
        distributed.shutdown(dist_info)


def _weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's parameters (every tensor's bytes, in name order). Buffers
    are left out: under data parallelism each rank's batch-norm running statistics follow its own
    last batch, and rank 0's are broadcast before every forward (and are the ones checkpointed)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.named_parameters():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]


def finished_summary(exp: Experiment, data_dir: Path, run_dir: Path, seed: int, resume: bool) -> dict[str, Any] | None:
    """``run.json`` of the finished run in ``run_dir`` when it is the run :func:`train` would train
    (same experiment fingerprint, seed and build), else ``None`` (nothing there, or still running).
    A finished run is never written again, so this reads it without taking the run's lock.

    Raises:
        FileExistsError / ValueError: the run there cannot be this one (as :func:`train`).
    """
    summary = run_dir / "run.json"
    last = read_checkpoint_info(run_dir, "last") if summary.is_file() else None
    if last is None or not last["state"].get("finished"):
        return None
    _check_resumable(run_dir, _run_config(exp, data_dir, run_dir, seed), last, resume)
    return json.loads(summary.read_text())


def _train(exp: Experiment, data_dir: Path, run_dir: Path, seed: int, device: str, resume: bool, progress: bool,
           stop_after_epochs: int | None, dist_info: DistInfo = DistInfo()) -> dict[str, Any]:
    """The body of :func:`train`, under the run folder's lock (on every rank of a data-parallel run;
    rank 0 alone validates and writes)."""
    t_wall = time.perf_counter()
    main = dist_info.is_main
    log = _log_fn(progress and main)
    dev = resolve_device(device)
    if dist_info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", dist_info.local_rank)
    t = exp.train
    if dist_info.enabled and t.batch_size // 2 < 2 * dist_info.world_size:
        raise ValueError(f"train.batch_size={t.batch_size} is too small for {dist_info.world_size} processes: a batch (at least half of "
                         f"it for a group's last one) must give every rank 2 samples; use batch_size >= {4 * dist_info.world_size}")
    if t.torch_threads:
        torch.set_num_threads(t.torch_threads)
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    config = _run_config(exp, data_dir, run_dir, seed)
    exp = Experiment.from_dict(config["experiment"])
    method = get_method(exp.method)

    last = read_checkpoint_info(run_dir, "last")
    if last is not None:
        _check_resumable(run_dir, config, last, resume)
        if last["state"].get("finished") and (run_dir / "run.json").is_file():
            log(f"[avgn.train] {run_dir} is finished (epoch {last['epoch']}); nothing to do")
            return json.loads((run_dir / "run.json").read_text())
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", config)

    inputs = _inputs(exp, data_dir, seed, str(dev), progress and main, log, dist_info)
    # seeded here, after the inputs: computing the feature cache or loading the validation sets
    # draws from the global RNG only when they are not cached yet
    seed_everything(seed)
    model = method.build(exp.model).to(dev)
    if t.init_from:
        config["init_from"] = _init_from(model, t.init_from, dev)
        if main:
            atomic_write_json(run_dir / "config.json", config)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(inputs.sampler)
    opt = _optimisation(model, exp, steps_per_epoch)
    prefixes = _frozen_prefixes(exp)
    modes = method.modes
    train_step: torch.nn.Module = _TrainStep(method, model, dev, t.channels_last)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_step = DistributedDataParallel(train_step, device_ids=[dev.index] if dev.type == "cuda" else None,
                                             find_unused_parameters=True)

    state: dict[str, Any] = {
        "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0, "finished": False, "stopped_early": False,
        "train_seconds": 0.0, "wall_seconds": 0.0, "samples": 0, "history": [],
    }
    start_epoch, step, partial = 0, 0, None
    if last is not None:
        info = load_checkpoint(run_dir, model, name="last", optimizer=opt.optimizer, scheduler=opt.scheduler, restore_rng=True, map_location=dev)
        assert info is not None
        ranks = info["extra"].get("ranks")
        if ranks is not None:  # a data-parallel checkpoint: this rank's RNG states and epoch position
            if len(ranks) != dist_info.world_size:
                raise ValueError(f"cannot resume {run_dir} on {dist_info.world_size} process(es): it was trained on {len(ranks)}")
            restore_rng_state(ranks[dist_info.rank]["rng"])
        state.update(info["state"])
        start_epoch, step = int(info["epoch"]), int(info["step"])
        if state.get("partial"):
            partial = EpochProgress(**(ranks[dist_info.rank]["partial"] if ranks is not None else state["partial"]))
            log(f"[avgn.train] resuming {run_dir} in epoch {partial.epoch + 1}, after {partial.batches} of its batches (step {step})")
        else:
            log(f"[avgn.train] resuming {run_dir} after epoch {start_epoch} (step {step})")
        state.pop("partial", None)
    log(
        f"[avgn.train] {exp.method} / {exp.profile} / seed {seed} on {dev}"
        f"{f' x {dist_info.world_size} processes ({dist_info.backend})' if dist_info.enabled else ''}: "
        f"{sum(p.numel() for p in opt.params):,} trainable parameters, "
        f"{len(inputs.batcher)} items/epoch ({inputs.sizes}), {steps_per_epoch} steps/epoch"
    )

    predictor = MethodPredictor(method, model, dev, bf16=t.bf16, channels_last=t.channels_last)
    wall = _Lap()
    epochs_this_call = 0

    def save_last(epoch_done: int, at_step: int, st: dict[str, Any], p: EpochProgress | None = None) -> None:
        """Checkpoint ``last`` (every rank takes part: their RNG states and positions are gathered)."""
        extra = None
        if dist_info.enabled:
            extra = {"ranks": distributed.gather_objects({"rng": capture_rng_state(), "partial": None if p is None else p.to_dict()}, dist_info)}
        if main:
            save_checkpoint(run_dir, model, name="last", epoch=epoch_done, step=at_step, optimizer=opt.optimizer, scheduler=opt.scheduler,
                            state=st if p is None else {**st, "partial": p.to_dict()}, config=config, exclude_prefixes=prefixes, extra=extra)

    def save_partial(p: EpochProgress, at_step: int) -> None:
        # completed epochs, the global step, and where the epoch in progress stands
        state["wall_seconds"] += wall.lap()
        save_last(p.epoch, at_step, state, p)

    checkpointer = _Checkpointer(t.checkpoint_minutes, t.checkpoint_steps, save_partial, dist_info)
    for epoch in range(start_epoch, t.epochs):
        if state["finished"]:
            break
        if partial is not None and partial.epoch == epoch:  # within-epoch resume: on_epoch_start already ran
            progress_e, partial = partial, None
        else:
            ctx = EpochContext(exp, int(seed), dev, lambda e=epoch: _epoch_batches(inputs, e), inputs.val_sets)
            progress_e = EpochProgress(epoch, before=method.on_epoch_start(model, epoch, ctx))
        means, n_seen, step, train_s = _train_epoch(train_step, exp, inputs, opt, dev, progress_e, step, progress and main, checkpointer,
                                                    dist_info)
        if main:
            row = _end_epoch(method, model, exp, inputs, opt, predictor, state, progress_e, means, n_seen, step, train_s, dev)
            if row["is_best"]:
                save_checkpoint(run_dir, model, name="best", epoch=epoch + 1, step=step, include_rng=False,
                                state={"val_score": row["val_score"]}, config=config, exclude_prefixes=prefixes)
        state = distributed.broadcast_object(state, dist_info)  # rank 0's decisions (best, early stop) for every rank
        state["wall_seconds"] += wall.lap()
        save_last(epoch + 1, step, state)
        if main:
            _write_history(run_dir, state["history"])
            log(
                f"[avgn.train] epoch {epoch + 1}/{t.epochs}: loss {means.get('total', math.nan):.4f}, "
                f"val score {row['val_score']:.4f}{' (best)' if row['is_best'] else ''}, {row['samples_per_s']:.0f} samples/s, "
                f"train {train_s:.1f} s, val {row['val_seconds']:.1f} s"
            )
        epochs_this_call += 1
        if state["stopped_early"]:
            log(f"[avgn.train] early stop: no improvement for {state['bad_epochs']} epochs")
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs and not state["finished"]:
            log(f"[avgn.train] stopping after {epochs_this_call} epoch(s) as asked; resume to continue")
            return {"finished": False, "epoch": epoch + 1, "step": step, "state": state}

    # ---- finished: the presence threshold of the selected epoch, chosen on validation -----------
    digests = distributed.gather_objects(_weights_digest(model), dist_info)  # the ranks hold one model
    if not main:
        distributed.barrier(dist_info)  # rank 0 writes run.json
        return json.loads((run_dir / "run.json").read_text())
    threshold, curve = None, None
    if "predicted" in modes:
        load_checkpoint(run_dir, model, name="best", map_location=dev)
        threshold, curve = choose_presence_threshold(predictor, inputs.val_sets)
        log(f"[avgn.train] presence threshold {threshold:.2f} (chosen on {', '.join(exp.inputs.val_sets)})")
    summary = _summary(exp, seed, run_dir, data_dir, config, state, step, int(sum(p.numel() for p in opt.params)), inputs, threshold, curve, device)
    if dist_info.enabled:
        summary["distributed"] = {"world_size": dist_info.world_size, "backend": dist_info.backend, "last_weights_sha256": digests}
    atomic_write_json(run_dir / "run.json", summary)
    import pandas as pd

    flat = flatten({k: v for k, v in summary.items() if k not in ("environment", "config", "features", "threshold_curve", "distributed")})
    atomic_write_text(run_dir / "run.csv", pd.DataFrame([flat]).to_csv(index=False))
    distributed.barrier(dist_info)
    log(f"[avgn.train] done: best epoch {state['best_epoch']} (val score {state['best_score']:.4f}), "
        f"{summary['samples_per_s']:.0f} samples/s, {time.perf_counter() - t_wall:.0f} s in this call")
    return summary


def _end_epoch(method: Method, model: torch.nn.Module, exp: Experiment, inputs: _Inputs, opt: _Optimisation, predictor: MethodPredictor,
               state: dict[str, Any], progress: EpochProgress, means: dict[str, float], n_seen: int, step: int, train_s: float,
               dev: torch.device) -> dict[str, Any]:
    """Validate after an epoch (model selection), append its row to ``state["history"]`` and update
    the training state (best epoch, early stopping, finished); returns the row."""
    t, modes = exp.train, method.modes
    ev = evaluate_sets(predictor, inputs.val_sets, exp.eval, modes, min_sources=SELECTION_MIN_SOURCES)
    score = selection_score(ev["results"], modes)
    row: dict[str, Any] = {
        "epoch": progress.epoch + 1,
        "step": step,
        "lr": opt.optimizer.param_groups[0]["lr"],
        "train": means,
        "train_seconds": train_s,
        "samples_per_s": n_seen / train_s if train_s > 0 else math.nan,
        "val_seconds": ev["seconds"],
        "val": ev["results"],
        "val_score": score,
    }
    row.update(progress.before)
    row.update(method.epoch_diagnostics(model, inputs.val_sets, dev))
    improved = score > state["best_score"] + t.min_delta
    row["is_best"] = bool(improved)
    state["history"].append(row)
    state["train_seconds"] += train_s
    state["samples"] += n_seen
    if improved:
        state["best_score"], state["best_epoch"], state["bad_epochs"] = score, progress.epoch + 1, 0
    else:
        state["bad_epochs"] += 1
    if t.early_stopping_patience and state["bad_epochs"] >= t.early_stopping_patience:
        state["stopped_early"] = True
    state["finished"] = progress.epoch + 1 >= t.epochs or state["stopped_early"]
    return row
