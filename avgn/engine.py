"""The training engine: one loop for every method, with hooks (d2l's ``Trainer.fit`` / ``fit_epoch``).

:class:`Trainer` trains a built model on a run's inputs and knows nothing else::

    fit()                                   for each epoch from trainer.epoch
      on_epoch_start (the method's hook)    Method.on_epoch_start, or the resumed epoch's progress
      fit_epoch()                           for each optimiser step of the epoch
        training_step(micro-batches)        forward + loss + backward per micro-batch, one step
        callbacks.on_batch_end
      validate()                            rank 0: the validation sets -> the epoch's history row
        callbacks.on_validation_end         model selection, early stopping
      callbacks.on_epoch_end                checkpoints, history files, progress, stop requests

Everything around the loop is a :class:`Callback` (:class:`ModelSelection`, :class:`Checkpointing`
— which also resumes —, :class:`ProgressBar`, :class:`HistoryLog`, :class:`StopAfter`); data
parallelism is the wrapped :class:`TrainStep` (:mod:`avgn.distributed`). Every rank runs every hook;
validation, and with it ``on_validation_end``, runs on rank 0 alone, whose :class:`TrainState` is
then broadcast. The run around the engine (its folder, configuration, data and summary) is
:mod:`avgn.train`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from avgn import distributed
from avgn.checkpoint import atomic_write_json, atomic_write_text, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from avgn.data.batching import MixtureBatcher
from avgn.distributed import DistInfo
from avgn.evaluate import SELECTION_MIN_SOURCES, EvalSet, evaluate_sets, selection_score
from avgn.experiment import Experiment, TrainConfig
from avgn.features import FeatureStore
from avgn.methods import EpochContext, Method, MethodPredictor, model_inputs
from avgn.runs import flatten

__all__ = [
    "Callback", "Checkpointing", "EpochProgress", "HistoryLog", "ModelSelection", "Optimisation", "ProgressBar", "StopAfter",
    "TrainInputs", "TrainState", "TrainStep", "Trainer", "WarmupCosine", "make_optimizer", "prefetch",
]

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------------
# what the loop reads: the epoch's batches
# --------------------------------------------------------------------------------------------------
class EpochSampler(Protocol):
    """A batch sampler whose order is a function of its epoch (:class:`avgn.train.GroupedBatchSampler`)."""

    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[list[int]]: ...
    def __len__(self) -> int: ...


@dataclass
class TrainInputs:
    """What a run reads: the feature store (cached backbone features), the training batcher, its
    batch sampler, the items per component and the materialised validation sets."""

    store: FeatureStore | None
    batcher: MixtureBatcher
    sampler: EpochSampler
    sizes: dict[str, int]
    val_sets: list[EvalSet]
    features: dict[str, Any] = field(default_factory=dict)

    def plan(self, epoch: int, skip: int = 0, dist_info: DistInfo = DistInfo()) -> Iterator[list[int]]:
        """The index lists of ``epoch``'s batches in its order, less the first ``skip`` (skipped as
        index lists: they are never rendered); under data parallelism this rank's share of each
        (:func:`avgn.distributed.shard`)."""
        self.sampler.set_epoch(epoch)
        self.batcher.set_epoch(epoch)
        return (distributed.shard(b, dist_info) for b in itertools.islice(iter(self.sampler), skip, None))

    def batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        """The training batches of ``epoch`` in its order, whole (what :meth:`Method.on_epoch_start` reads)."""
        return self.batcher.iterate(self.plan(epoch))

    def steps(self, epoch: int, micro_batches: int, skip: int = 0, dist_info: DistInfo = DistInfo()) -> Iterator[list[dict[str, Any]]]:
        """The optimiser steps of ``epoch``: per step, this rank's share of the batch cut into
        ``micro_batches`` (``share[i::k]``), each rendered as one batch."""
        for share in self.plan(epoch, skip, dist_info):
            yield [self.batcher.batch(share[i::micro_batches]) for i in range(micro_batches)]


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


# --------------------------------------------------------------------------------------------------
# what the loop steps: the optimiser and its schedule
# --------------------------------------------------------------------------------------------------
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


def make_optimizer(params: list[torch.nn.Parameter], t: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``t`` names (``adam`` / ``adamw``, its learning rate, weight decay and kernel)."""
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(params, lr=t.lr, weight_decay=t.weight_decay, fused=t.fused_optimizer or None)


@dataclass
class Optimisation:
    """The trainable parameters, their optimiser and its per-step learning-rate schedule."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR

    @classmethod
    def build(cls, model: torch.nn.Module, t: TrainConfig, steps_per_epoch: int) -> Optimisation:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, t)
        schedule = WarmupCosine(t.epochs * steps_per_epoch, int(round(t.warmup_epochs * steps_per_epoch)), t.schedule, t.min_lr_ratio)
        return cls(params, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule))


class TrainStep(torch.nn.Module):
    """The model's forward and the method's loss as one module (what DistributedDataParallel wraps,
    so that every parameter the loss touches is synchronised): ``forward(batch) -> (loss, parts)``,
    ``loss`` a scalar tensor, ``parts`` its named terms."""

    def __init__(self, method: Method, model: torch.nn.Module, device: torch.device, channels_last: bool):
        super().__init__()
        self.method, self.model, self.device, self.channels_last = method, model, device, channels_last

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        out = self.model(**model_inputs(batch, self.device, self.channels_last))
        return self.method.loss(self.model, out, batch)


# --------------------------------------------------------------------------------------------------
# the state of a run and of its epoch in progress
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What a run has done so far: model selection, early stopping, time and samples, the history
    (one row per epoch). Checkpointed as a checkpoint's ``state`` (:meth:`to_dict`)."""

    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    finished: bool = False
    stopped_early: bool = False
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    samples: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


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


@dataclass
class EpochResult:
    """An epoch's training over every rank: mean loss parts (per sample), samples, seconds."""

    means: dict[str, float]
    samples: int
    seconds: float


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
class Callback:
    """A hook into :meth:`Trainer.fit`; every method does nothing unless overridden. Hooks run on
    every rank of a data-parallel run, in the order of the trainer's callbacks, except
    :meth:`on_validation_end` (rank 0 alone validates)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of this call."""

    def on_epoch_start(self, trainer: Trainer, progress: EpochProgress) -> None:
        """After the method's ``on_epoch_start`` (or the resumed epoch's progress), before training."""

    def on_batch_end(self, trainer: Trainer, progress: EpochProgress, loss: torch.Tensor) -> None:
        """After an optimiser step (``trainer.step`` counts it; ``loss``: the last micro-batch's, a scalar)."""

    def on_validation_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Rank 0, after validation: ``row`` is the epoch's history row, not yet in the history."""

    def on_epoch_end(self, trainer: Trainer, progress: EpochProgress, row: dict[str, Any] | None) -> None:
        """After the epoch's row joined the history and rank 0's state was broadcast (``row``:
        ``None`` on the other ranks); ``trainer.epoch`` counts the epoch."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch of this call (finished, or stopped on request)."""


class Trainer:
    """Trains ``model`` with ``method``'s loss on ``inputs`` for the epochs of ``exp.train``.

    State a callback may read or set: ``state`` (:class:`TrainState`), ``epoch`` (epochs done),
    ``step`` (optimiser steps done), ``partial`` (the interrupted epoch to continue, set by a
    resume), ``should_stop`` (end :meth:`fit` after the current epoch).
    """

    def __init__(self, method: Method, model: torch.nn.Module, exp: Experiment, inputs: TrainInputs, device: torch.device, *,
                 seed: int, callbacks: Sequence[Callback] = (), dist_info: DistInfo = DistInfo(), log: Log = lambda msg: None):
        self.method, self.model, self.exp, self.inputs, self.device = method, model, exp, inputs, device
        self.seed, self.callbacks, self.dist_info, self.log = int(seed), list(callbacks), dist_info, log
        t = exp.train
        self.opt = Optimisation.build(model, t, len(inputs.sampler))
        self.train_step: torch.nn.Module = TrainStep(method, model, device, t.channels_last)
        if dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.train_step = DistributedDataParallel(self.train_step, device_ids=[device.index] if device.type == "cuda" else None,
                                                      find_unused_parameters=True)
        self.predictor = MethodPredictor(method, model, device, bf16=t.bf16, channels_last=t.channels_last)
        self.state = TrainState()
        self.epoch, self.step = 0, 0
        self.partial: EpochProgress | None = None
        self.should_stop = False

    @property
    def is_main(self) -> bool:
        return self.dist_info.is_main

    @property
    def steps_per_epoch(self) -> int:
        return len(self.inputs.sampler)

    def _hook(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(self, *args)

    def fit(self) -> TrainState:
        """Train from epoch ``self.epoch`` until the run is finished or a callback stops it."""
        self._hook("on_fit_start")
        for epoch in range(self.epoch, self.exp.train.epochs):
            if self.state.finished or self.should_stop:
                break
            progress = self._start_epoch(epoch)
            self._hook("on_epoch_start", progress)
            result = self.fit_epoch(progress)
            row = self.validate(progress, result) if self.is_main else None
            self.state = distributed.broadcast_object(self.state, self.dist_info)  # rank 0's decisions for every rank
            self.epoch = epoch + 1
            self._hook("on_epoch_end", progress, row)
        self._hook("on_fit_end")
        return self.state

    def _start_epoch(self, epoch: int) -> EpochProgress:
        if self.partial is not None and self.partial.epoch == epoch:  # within-epoch resume: on_epoch_start already ran
            progress, self.partial = self.partial, None
            return progress
        ctx = EpochContext(self.exp, self.seed, self.device, lambda: self.inputs.batches(epoch), self.inputs.val_sets)
        return EpochProgress(epoch, before=self.method.on_epoch_start(self.model, epoch, ctx))

    def fit_epoch(self, progress: EpochProgress) -> EpochResult:
        """One pass over the epoch's fresh mixtures, from ``progress`` (a fresh one, or where a
        within-epoch checkpoint left it); the means and samples are summed over every rank."""
        t = self.exp.train
        loader = prefetch(self.inputs.steps(progress.epoch, t.micro_batches, skip=progress.batches, dist_info=self.dist_info),
                          t.num_workers)
        self.train_step.train()
        t0 = time.perf_counter() - progress.seconds
        for micro in loader:
            loss = self.training_step(micro, progress)
            self.step += 1
            progress.batches += 1
            progress.seconds = time.perf_counter() - t0
            self._hook("on_batch_end", progress, loss)
        total = distributed.all_reduce_sums({**progress.sums, "__samples": progress.samples}, self.dist_info)
        n_seen = int(total.pop("__samples"))
        return EpochResult({k: v / max(1, n_seen) for k, v in total.items()}, n_seen, time.perf_counter() - t0)

    def training_step(self, micro: list[dict[str, Any]], progress: EpochProgress) -> torch.Tensor:
        """One optimiser step on a batch cut into micro-batches (each ``spec`` ``(B_i, 1, F, T)``),
        whose gradients are accumulated; adds the loss parts to ``progress``. Returns the last
        micro-batch's loss (a scalar)."""
        t, train_step = self.exp.train, self.train_step
        autocast = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=t.bf16)
        self.opt.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(micro):
            # under DDP the gradients are averaged over the ranks once per step, with the last micro-batch
            defer = i < len(micro) - 1 and isinstance(train_step, torch.nn.parallel.DistributedDataParallel)
            # buffers (batch-norm running statistics) follow the first micro-batch only, as DDP's follow rank 0's share
            kept = [b.detach().clone() for b in train_step.buffers()] if i > 0 else None
            with train_step.no_sync() if defer else contextlib.nullcontext(), autocast:  # type: ignore[operator]
                loss, parts = train_step(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {progress.epoch + 1}, step {self.step} "
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
            torch.nn.utils.clip_grad_norm_(self.opt.params, t.grad_clip)
        self.opt.optimizer.step()
        self.opt.scheduler.step()
        return loss

    def validate(self, progress: EpochProgress, result: EpochResult) -> dict[str, Any]:
        """Rank 0: score the validation sets (``val/...``, never test) in the method's selection
        modes, build the epoch's history row, let ``on_validation_end`` judge it (model selection,
        early stopping) and add it to the history; returns the row."""
        exp, modes = self.exp, self.method.modes
        ev = evaluate_sets(self.predictor, self.inputs.val_sets, exp.eval, modes, min_sources=SELECTION_MIN_SOURCES)
        row: dict[str, Any] = {
            "epoch": progress.epoch + 1,
            "step": self.step,
            "lr": self.opt.optimizer.param_groups[0]["lr"],
            "train": result.means,
            "train_seconds": result.seconds,
            "samples_per_s": result.samples / result.seconds if result.seconds > 0 else math.nan,
            "val_seconds": ev["seconds"],
            "val": ev["results"],
            "val_score": selection_score(ev["results"], modes),
        }
        row.update(progress.before)
        row.update(self.method.epoch_diagnostics(self.model, self.inputs.val_sets, self.device))
        self._hook("on_validation_end", row)
        st = self.state
        st.history.append(row)
        st.train_seconds += result.seconds
        st.samples += result.samples
        st.finished = progress.epoch + 1 >= exp.train.epochs or st.stopped_early
        return row


# --------------------------------------------------------------------------------------------------
# the callbacks
# --------------------------------------------------------------------------------------------------
class ModelSelection(Callback):
    """The best epoch is the one of the highest validation score (improving by more than
    ``min_delta``); with ``patience``, training stops after that many epochs without improvement.
    Marks each row ``is_best``."""

    def __init__(self, min_delta: float = 0.0, patience: int | None = None):
        self.min_delta, self.patience = min_delta, patience

    def on_validation_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        st, score = trainer.state, row["val_score"]
        improved = score > st.best_score + self.min_delta
        row["is_best"] = bool(improved)
        if improved:
            st.best_score, st.best_epoch, st.bad_epochs = score, row["epoch"], 0
        else:
            st.bad_epochs += 1
        if self.patience and st.bad_epochs >= self.patience:
            st.stopped_early = True

    def on_epoch_end(self, trainer: Trainer, progress: EpochProgress, row: dict[str, Any] | None) -> None:
        if trainer.state.stopped_early:
            trainer.log(f"[avgn.train] early stop: no improvement for {trainer.state.bad_epochs} epochs")


class _Lap:
    """Seconds since the previous :meth:`lap` (or since creation)."""

    def __init__(self) -> None:
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt


class Checkpointing(Callback):
    """The run folder's checkpoints (:mod:`avgn.checkpoint`): ``best`` when an epoch is the best,
    ``last`` after every epoch and within epochs every ``minutes`` of training and / or every
    ``steps`` optimiser steps (weights, optimiser, scheduler, RNG states, the :class:`TrainState`
    and, within an epoch, its :class:`EpochProgress`); :meth:`resume` continues from ``last``.
    Under data parallelism every rank's RNG state and position are gathered into ``last``."""

    def __init__(self, run_dir: Path, config: dict[str, Any], *, minutes: float | None = None, steps: int | None = None,
                 exclude_prefixes: tuple[str, ...] = ()):
        self.run_dir, self.config, self.exclude_prefixes = run_dir, config, exclude_prefixes
        self.every_s = None if minutes is None else 60.0 * minutes
        self.every_steps = steps
        self.wall, self.t_last = _Lap(), time.perf_counter()

    def resume(self, trainer: Trainer) -> None:
        """Load checkpoint ``last`` into the trainer: weights, optimiser, scheduler, RNG states
        (this rank's), state, epoch and step, and the epoch in progress if it was cut short."""
        dist_info, run_dir = trainer.dist_info, self.run_dir
        info = load_checkpoint(run_dir, trainer.model, name="last", optimizer=trainer.opt.optimizer, scheduler=trainer.opt.scheduler,
                               restore_rng=True, map_location=trainer.device)
        assert info is not None
        ranks = info["extra"].get("ranks")
        if ranks is not None:  # a data-parallel checkpoint: this rank's RNG states and epoch position
            if len(ranks) != dist_info.world_size:
                raise ValueError(f"cannot resume {run_dir} on {dist_info.world_size} process(es): it was trained on {len(ranks)}")
            restore_rng_state(ranks[dist_info.rank]["rng"])
        trainer.state = TrainState.from_dict(info["state"])
        trainer.epoch, trainer.step = int(info["epoch"]), int(info["step"])
        partial = info["state"].get("partial")
        if partial:
            trainer.partial = EpochProgress(**(ranks[dist_info.rank]["partial"] if ranks is not None else partial))
            trainer.log(f"[avgn.train] resuming {run_dir} in epoch {trainer.partial.epoch + 1}, after {trainer.partial.batches} "
                        f"of its batches (step {trainer.step})")
        else:
            trainer.log(f"[avgn.train] resuming {run_dir} after epoch {trainer.epoch} (step {trainer.step})")

    def save_last(self, trainer: Trainer, epoch_done: int, progress: EpochProgress | None = None) -> None:
        """Checkpoint ``last`` (every rank takes part: their RNG states and positions are gathered)."""
        extra = None
        if trainer.dist_info.enabled:
            mine = {"rng": capture_rng_state(), "partial": None if progress is None else progress.to_dict()}
            extra = {"ranks": distributed.gather_objects(mine, trainer.dist_info)}
        if trainer.is_main:
            st = trainer.state.to_dict()
            save_checkpoint(self.run_dir, trainer.model, name="last", epoch=epoch_done, step=trainer.step, optimizer=trainer.opt.optimizer,
                            scheduler=trainer.opt.scheduler, state=st if progress is None else {**st, "partial": progress.to_dict()},
                            config=self.config, exclude_prefixes=self.exclude_prefixes, extra=extra)

    def on_fit_start(self, trainer: Trainer) -> None:
        self.wall, self.t_last = _Lap(), time.perf_counter()

    def on_batch_end(self, trainer: Trainer, progress: EpochProgress, loss: torch.Tensor) -> None:
        if progress.batches >= trainer.steps_per_epoch:  # the end-of-epoch checkpoint follows
            return
        due = bool(self.every_steps and trainer.step % self.every_steps == 0)
        if self.every_s is not None:  # rank 0's clock decides for every rank
            due |= distributed.broadcast_object(time.perf_counter() - self.t_last >= self.every_s, trainer.dist_info)
        if due:  # completed epochs, the global step, and where the epoch in progress stands
            trainer.state.wall_seconds += self.wall.lap()
            self.save_last(trainer, progress.epoch, progress)
            self.t_last = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, progress: EpochProgress, row: dict[str, Any] | None) -> None:
        if row is not None and row.get("is_best"):
            save_checkpoint(self.run_dir, trainer.model, name="best", epoch=trainer.epoch, step=trainer.step, include_rng=False,
                            state={"val_score": row["val_score"]}, config=self.config, exclude_prefixes=self.exclude_prefixes)
        trainer.state.wall_seconds += self.wall.lap()
        self.save_last(trainer, trainer.epoch)


class ProgressBar(Callback):
    """A progress bar per epoch's training (rank 0, when ``show``), with the last step's loss."""

    def __init__(self, show: bool = True):
        self.show = show
        self.bar: Any = None

    def on_epoch_start(self, trainer: Trainer, progress: EpochProgress) -> None:
        t = trainer.exp.train
        self.bar = tqdm(total=trainer.steps_per_epoch, initial=progress.batches, desc=f"{trainer.exp.method} epoch {progress.epoch + 1}/{t.epochs}",
                        disable=not (self.show and trainer.is_main), leave=False)

    def on_batch_end(self, trainer: Trainer, progress: EpochProgress, loss: torch.Tensor) -> None:
        self.bar.update(1)
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{float(loss.detach()):.3f}")

    def on_epoch_end(self, trainer: Trainer, progress: EpochProgress, row: dict[str, Any] | None) -> None:
        self.bar.close()


class HistoryLog(Callback):
    """Rank 0 writes the history after every epoch (``history.json`` and, flattened,
    ``history.csv`` in ``run_dir``) and logs the epoch's line."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_epoch_end(self, trainer: Trainer, progress: EpochProgress, row: dict[str, Any] | None) -> None:
        if row is None:
            return
        write_history(self.run_dir, trainer.state.history)
        trainer.log(
            f"[avgn.train] epoch {trainer.epoch}/{trainer.exp.train.epochs}: loss {row['train'].get('total', math.nan):.4f}, "
            f"val score {row['val_score']:.4f}{' (best)' if row.get('is_best') else ''}, {row['samples_per_s']:.0f} samples/s, "
            f"train {row['train_seconds']:.1f} s, val {row['val_seconds']:.1f} s"
        )


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """``history.json`` and ``history.csv`` (one flattened row per epoch) in ``run_dir``."""
    import pandas as pd

    atomic_write_json(run_dir / "history.json", history)
    atomic_write_text(run_dir / "history.csv", pd.DataFrame([flatten(h) for h in history]).to_csv(index=False))


class StopAfter(Callback):
    """Stops :meth:`Trainer.fit` after ``epochs`` epochs of this call as if interrupted (tests,
    budgeted sessions): the run stays resumable."""

    def __init__(self, epochs: int):
        self.epochs, self.done = int(epochs), 0

    def on_epoch_end(self, trainer: Trainer, progress: EpochProgress, row: dict[str, Any] | None) -> None:
        self.done += 1
        if self.done >= self.epochs and not trainer.state.finished:
            trainer.log(f"[avgn.train] stopping after {self.done} epoch(s) as asked; resume to continue")
            trainer.should_stop = True
