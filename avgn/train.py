"""Training runs: one (method, profile, seed) experiment into a run folder, for every registered method.

:func:`train` sets a run up (its configuration, data and model), fits it with the engine
(:class:`avgn.engine.Trainer` and its callbacks) and writes its summary:

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
* **Results** in the run folder (:class:`avgn.runs.RunFolder`): ``config.json`` (configuration, seed, data identity, command line),
  ``history.json`` / ``history.csv`` (per epoch: losses, learning rate, samples/s, validation
  metrics in both source-selection modes, AVGN's presence and token-classifier precision / recall /
  F1), and when finished ``run.json`` / ``run.csv`` (git revision, environment, wall time,
  samples/s, best epoch and its validation metrics). Test-set evaluation is separate
  (:func:`avgn.evaluate.evaluate_run`, ``avgn eval RUN_DIR --split test``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler

from avgn import distributed
from avgn.checkpoint import load_checkpoint
from avgn.data.batching import MixtureBatcher
from avgn.data.datasets import OnTheFlyMixtureDataset
from avgn.distributed import DistInfo
from avgn.engine import (
    Callback, Checkpointing, HistoryLog, ModelSelection, ProgressBar, StopAfter, Trainer, TrainInputs, WarmupCosine, make_optimizer,
    prefetch,
)
from avgn.env import epoch_seed, resolve_device, seed_everything
from avgn.evaluate import choose_presence_threshold, load_eval_set
from avgn.experiment import Experiment, get_experiment
from avgn.features import FeatureStore, compute_features
from avgn.methods import get_method
from avgn.runs import RunFolder, RunLockedError, run_lock

__all__ = [
    "epoch_seed",
    "GroupedBatchSampler",
    "build_train_data",
    "make_optimizer",
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
    if t.negative_items > 0 and not get_method(exp.method).trains_on_negatives:
        raise ValueError(f"train.negative_items={t.negative_items}: {exp.method}'s loss does not read the labels for its sources, so an item "
                         "with nothing sounding would train it as a positive pair; set train.negative_items=0")
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
    batcher = MixtureBatcher(ds, store if exp.inputs.cached_features else None, render=exp.inputs.train_render, device=render_on,
                             negative_items=t.negative_items)
    return batcher, groups, sizes


# --------------------------------------------------------------------------------------------------
# the loop, in steps
# --------------------------------------------------------------------------------------------------
def _log_fn(progress: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    return log


def _inputs(exp: Experiment, data_dir: Path, seed: int, device: str, progress: bool, log: Callable[[str], None],
            dist_info: DistInfo = DistInfo()) -> TrainInputs:
    """The run's inputs: the feature cache completed (rank 0) and read, the training batcher and
    its sampler, the validation sets materialised."""
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
    return TrainInputs(store, batcher, sampler, sizes, val_sets, feat_info)


def _init_from(model: torch.nn.Module, run: str, dev: torch.device) -> dict[str, Any]:
    """Load the ``best`` weights of the finished run ``run`` into ``model`` (``TrainConfig.init_from``)."""
    src = Path(run)
    if not (src / "run.json").is_file():
        raise FileNotFoundError(f"train.init_from={run}: no finished run there (no run.json); train it first")
    info = load_checkpoint(src, model, name="best", map_location=dev)
    if info is None:
        raise FileNotFoundError(f"train.init_from={run}: the run has no 'best' checkpoint")
    return {"run": str(src), "epoch": info["epoch"], "fingerprint": info["config"].get("fingerprint")}


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
    callbacks: Sequence[Callback] = (),
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
        callbacks: more :class:`avgn.engine.Callback` hooks, run after the engine's own (model
            selection, checkpoints, progress bar, history, stop-after).

    Raises:
        RunLockedError: another process is training in ``run_dir`` (:func:`avgn.runs.run_lock`).
    """
    if isinstance(exp, str):
        exp = get_experiment(exp, profile or "cpu", **dict(overrides or {}))
    folder = RunFolder.of(exp, data_dir, run_dir, int(seed))
    done = folder.finished(resume)
    if done is not None:  # read back without the lock: chapters run side by side read the same runs
        return done
    dist_info = distributed.from_env(resolve_device(device))
    try:
        with contextlib.ExitStack() as stack:
            refused = None
            if dist_info.is_main:  # one lock per run folder, held by rank 0 for every rank
                try:
                    stack.enter_context(run_lock(folder.run_dir))
                except RunLockedError as err:
                    refused = str(err)
            refused = distributed.broadcast_object(refused, dist_info)
            if refused:
                raise RunLockedError(refused)
            return _train(folder, device, resume, progress, stop_after_epochs, dist_info, callbacks)
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


def _train(folder: RunFolder, device: str, resume: bool, progress: bool, stop_after_epochs: int | None,
           dist_info: DistInfo = DistInfo(), extra_callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """The body of :func:`train`, under the run folder's lock (on every rank of a data-parallel run;
    rank 0 alone validates and writes): set the run up, fit it (:class:`avgn.engine.Trainer`),
    then write its summary."""
    t_wall = time.perf_counter()
    main = dist_info.is_main
    log = _log_fn(progress and main)
    dev = resolve_device(device)
    if dist_info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", dist_info.local_rank)
    exp, seed, run_dir = folder.experiment, folder.seed, folder.run_dir
    t = exp.train
    if dist_info.enabled and t.batch_size // 2 < 2 * dist_info.world_size:
        raise ValueError(f"train.batch_size={t.batch_size} is too small for {dist_info.world_size} processes: a batch (at least half of "
                         f"it for a group's last one) must give every rank 2 samples; use batch_size >= {4 * dist_info.world_size}")
    if t.torch_threads:
        torch.set_num_threads(t.torch_threads)
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    config = dict(folder.config)
    method = get_method(exp.method)

    last = folder.last_checkpoint(resume)
    if folder.holds_finished(last):
        assert last is not None
        log(f"[avgn.train] {run_dir} is finished (epoch {last['epoch']}); nothing to do")
        return folder.read_summary()
    if main:
        folder.write_config(config)

    inputs = _inputs(exp, folder.data_dir, seed, str(dev), progress and main, log, dist_info)
    # seeded here, after the inputs: computing the feature cache or loading the validation sets
    # draws from the global RNG only when they are not cached yet
    seed_everything(seed)
    model = method.build(exp.model).to(dev)
    if t.init_from:
        config["init_from"] = _init_from(model, t.init_from, dev)
        if main:
            folder.write_config(config)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)

    checkpoints = Checkpointing(run_dir, config, minutes=t.checkpoint_minutes, steps=t.checkpoint_steps,
                                exclude_prefixes=exp.frozen_prefixes())
    callbacks: list[Callback] = [ModelSelection(t.min_delta, t.early_stopping_patience), checkpoints, ProgressBar(progress), HistoryLog(run_dir)]
    if stop_after_epochs is not None:
        callbacks.append(StopAfter(stop_after_epochs))
    callbacks += extra_callbacks
    trainer = Trainer(method, model, exp, inputs, dev, seed=seed, callbacks=callbacks, dist_info=dist_info, log=log)
    if last is not None:
        checkpoints.resume(trainer)
    log(
        f"[avgn.train] {exp.method} / {exp.profile} / seed {seed} on {dev}"
        f"{f' x {dist_info.world_size} processes ({dist_info.backend})' if dist_info.enabled else ''}: "
        f"{sum(p.numel() for p in trainer.opt.params):,} trainable parameters, "
        f"{len(inputs.batcher)} items/epoch ({inputs.sizes}), {trainer.steps_per_epoch} steps/epoch"
    )
    state = trainer.fit()
    if trainer.should_stop:
        return {"finished": False, "epoch": trainer.epoch, "step": trainer.step, "state": state.to_dict()}
    summary = _finish(trainer, folder, device)
    log(f"[avgn.train] done: best epoch {state.best_epoch} (val score {state.best_score:.4f}), "
        f"{summary['samples_per_s']:.0f} samples/s, {time.perf_counter() - t_wall:.0f} s in this call")
    return summary


def _finish(trainer: Trainer, folder: RunFolder, device: str) -> dict[str, Any]:
    """A finished run's summary, written by rank 0 as ``run.json`` / ``run.csv`` (read back by the
    other ranks), with the presence threshold of the selected epoch, chosen on validation."""
    dist_info, exp = trainer.dist_info, trainer.exp
    digests = distributed.gather_objects(_weights_digest(trainer.model), dist_info)  # the ranks hold one model
    if not dist_info.is_main:
        distributed.barrier(dist_info)  # rank 0 writes run.json
        return folder.read_summary()
    threshold, curve = None, None
    if "predicted" in trainer.method.modes:
        load_checkpoint(folder.run_dir, trainer.model, name="best", map_location=trainer.device)
        threshold, curve = choose_presence_threshold(trainer.predictor, trainer.inputs.val_sets)
        trainer.log(f"[avgn.train] presence threshold {threshold:.2f} (chosen on {', '.join(exp.inputs.val_sets)})")
    n_params = int(sum(p.numel() for p in trainer.opt.params))
    summary = folder.summary(trainer.state, trainer.step, n_params, trainer.inputs.features, threshold, curve, device)
    if dist_info.enabled:
        summary["distributed"] = {"world_size": dist_info.world_size, "backend": dist_info.backend, "last_weights_sha256": digests}
    folder.write_summary(summary)
    distributed.barrier(dist_info)
    return summary
