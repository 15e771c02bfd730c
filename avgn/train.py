"""Training engine for AVGN, EZ-VSL and Mix-and-Localize (one loop, three losses).

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
* **Model selection**: after every epoch the model is evaluated on the validation sets
  (``val/solo/scene``, ``val/duet/concat``, ``val/duet/scene``; never on test); the selection
  score is the mean of their primary metrics (AP for solo, CAP for duets, ground-truth classes).
  The best epoch is saved as checkpoint ``best``; optional early stopping.
* **Checkpoints and resuming** (:mod:`avgn.checkpoint`): checkpoint ``last`` after every epoch holds
  weights, optimiser, scheduler, RNG states and the history. ``resume=True`` continues an
  interrupted run from the last completed epoch and reaches the same weights and metrics as an
  uninterrupted run (tested); on a finished run it just returns its results.
* **Results** in the run folder: ``config.json`` (configuration, seed, data identity, command line),
  ``history.json`` / ``history.csv`` (per epoch: losses, learning rate, samples/s, validation
  metrics in both source-selection modes, AVGN's presence and token-classifier precision / recall /
  F1), and when finished ``run.json`` / ``run.csv`` (git revision, environment, wall time,
  samples/s, best epoch and its validation metrics). Test-set evaluation is separate
  (:func:`avgn.evaluate.evaluate_run`, ``avgn eval RUN_DIR --split test``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler

from avgn.checkpoint import atomic_write_json, atomic_write_text, load_checkpoint, read_checkpoint_info, save_checkpoint
from avgn.experiment import Experiment, get_experiment

__all__ = [
    "epoch_seed",
    "GroupedBatchSampler",
    "build_train_data",
    "prefetch",
    "compute_loss",
    "train",
    "load_trained_model",
    "run_dir_for",
    "reproduce_command",
    "eval_command",
    "run_experiment",
    "variant_dirs",
    "run_variant",
    "run_presence_threshold",
    "collect_variants",
    "load_run",
]


# --------------------------------------------------------------------------------------------------
# seeding and batching
# --------------------------------------------------------------------------------------------------
def epoch_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (e.g. ``(seed, epoch, stream)``) via NumPy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


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


def build_train_data(exp: Experiment, data_dir: str | Path, seed: int, store: Any = None) -> tuple[Any, list[tuple[int, int]], dict[str, int]]:
    """The epoch's training items: ``(batcher, groups for GroupedBatchSampler, items per component)``.

    Components (:class:`avgn.data.datasets.OnTheFlyMixtureDataset` on the train split): ``solo``
    (one source), ``concat`` (two solo scenes of different classes side by side) and ``scene``
    (pre-built two-source scenes); each draws its items from its own seed stream. The
    :class:`avgn.data.batching.MixtureBatcher` renders a whole batch of them at once (clips in
    memory, one batched mix + STFT; cached features instead of frames when ``store`` is given).
    """
    from avgn.data.batching import MixtureBatcher
    from avgn.data.datasets import OnTheFlyMixtureDataset

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
    return MixtureBatcher(ds, store if exp.inputs.cached_features else None), groups, sizes


def prefetch(batches: Iterator[dict[str, Any]], depth: int) -> Iterator[dict[str, Any]]:
    """Iterate ``batches`` with up to ``depth`` of them rendered ahead in a background thread
    (``depth=0``: in the caller's thread). Rendering is NumPy / torch work that releases the GIL;
    an exception in the thread is raised in the caller."""
    if depth <= 0:
        yield from batches
        return
    import queue
    import threading

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
# losses and schedule
# --------------------------------------------------------------------------------------------------
def compute_loss(model: torch.nn.Module, method: str, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The method's training loss on a forward output: ``(loss, detached parts incl. 'total')``."""
    if method == "avgn":
        from avgn.losses import avgn_total_loss

        dev = out["audio_logits"].device
        classes = batch["classes"].to(dev)
        b = {"labels": batch["labels"].to(dev), "source_classes": classes, "source_mask": classes >= 0}
        return avgn_total_loss(out, b, model.cfg)
    return model.loss(out)  # EZ-VSL: max-MIL contrastive; MAL: cycle random walk


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


def _frozen_prefixes(model: torch.nn.Module, exp: Experiment) -> tuple[str, ...]:
    """Frozen backbone weights that are reproducible from the installed package or the weights file."""
    enc = exp.model.encoder
    if enc.freeze_visual and (enc.pretrained_path or (enc.visual_backbone == "efficientnet_lite0" and enc.use_packaged_weights)):
        return ("visual.backbone.",)
    return ()


# --------------------------------------------------------------------------------------------------
# run folder helpers
# --------------------------------------------------------------------------------------------------
def run_dir_for(runs_dir: str | Path, method: str, profile: str, seed: int) -> Path:
    """The conventional run folder ``<runs_dir>/<profile>/<method>-seed<seed>``."""
    return Path(runs_dir) / profile / f"{method}-seed{seed}"


def _rel(p: Path) -> str:
    """``p`` relative to the repository root when it lies inside it (for printed command lines)."""
    root = Path(__file__).resolve().parents[1]
    try:
        return str(p.resolve().relative_to(root))
    except ValueError:
        return str(p.resolve())


def reproduce_command(method: str, profile: str, seed: int, data_dir: str | Path, run_dir: str | Path, overrides: dict[str, Any] | None = None) -> str:
    """The ``avgn train`` command line that reproduces a run (paths relative to the repository root)."""
    cmd = ["avgn", "train", "--method", method, "--profile", profile, "--seed", str(seed), "--data", _rel(Path(data_dir)), "--out", _rel(Path(run_dir))]
    import json

    for k, v in (overrides or {}).items():
        cmd += ["--set", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    return " ".join(shlex.quote(c) for c in cmd)


def experiment_overrides(exp: Experiment) -> dict[str, Any]:
    """The dotted fields in which ``exp`` differs from its profile's defaults (``--set`` arguments)."""
    import json

    base = _flatten("", get_experiment(exp.method, exp.profile).to_dict(), {}, ".")
    mine = _flatten("", exp.to_dict(), {}, ".")
    return {k: v for k, v in mine.items() if json.dumps(base.get(k)) != json.dumps(v) and k != "model.num_classes"}


def eval_command(
    run_dir: str | Path, split: str = "test", model_overrides: dict[str, Any] | None = None, out_dir: str | Path | None = None,
    sets: Sequence[str] | None = None, tag: str | None = None,
) -> str:
    """The ``avgn eval`` command line that evaluates a run on ``split`` (optionally with
    inference-time model changes, written to ``out_dir``)."""
    import json

    cmd = ["avgn", "eval", _rel(Path(run_dir)), "--split", split]
    for k, v in (model_overrides or {}).items():
        cmd += ["--set", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    if out_dir is not None:
        cmd += ["--out", _rel(Path(out_dir))]
    if sets:
        cmd += ["--sets", *sets]
    if tag and tag != split:
        cmd += ["--tag", tag]
    return " ".join(shlex.quote(c) for c in cmd)


def _data_identity(data_dir: Path) -> dict[str, Any]:
    from avgn.data.manifest import load_build_info

    info = load_build_info(data_dir)
    return {k: info.get(k) for k in ("profile", "seed", "catalog_sha256", "n_scenes", "format_version")}


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything a notebook reads from a run folder: ``config``, ``history`` (DataFrame), ``run``
    (final summary or None while unfinished) and ``eval`` (``{split: payload}`` of finished evaluations)."""
    import json

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


def _flatten(prefix: str, d: dict[str, Any], out: dict[str, Any], sep: str = "/") -> dict[str, Any]:
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, dict):
            _flatten(key, v, out, sep)
        else:
            out[key] = v
    return out


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    import pandas as pd

    atomic_write_json(run_dir / "history.json", history)
    atomic_write_text(run_dir / "history.csv", pd.DataFrame([_flatten("", h, {}) for h in history]).to_csv(index=False))


def load_trained_model(
    run_dir: str | Path, checkpoint: str = "best", device: str = "auto", model_overrides: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, Experiment, dict[str, Any]]:
    """Rebuild a run's model from ``config.json`` and load checkpoint ``checkpoint`` (eval mode).

    ``model_overrides`` changes inference-time fields of the model configuration before the
    weights are loaded, e.g. ``{"object_prior_alpha": 0.4}`` scores a trained EZ-VSL with the
    object-prior fusion of its test script. A field that changes the architecture makes the
    checkpoint fail to load (a clear error naming the missing / unexpected weights).

    Returns ``(model, experiment, info)`` with ``info``: ``seed``, ``data_dir``, ``checkpoint_epoch``.
    """
    import json

    from avgn.env import resolve_device
    from avgn.models import build_model

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json); train it first with `avgn train`")
    cfg = json.loads(cfg_path.read_text())
    exp = Experiment.from_dict(cfg["experiment"])
    if model_overrides:
        exp = exp.with_overrides(**{f"model.{k}": v for k, v in model_overrides.items()})
    model = build_model(exp.method, exp.model)
    info = load_checkpoint(run_dir, model, name=checkpoint)
    if info is None:
        raise FileNotFoundError(f"{run_dir} has no '{checkpoint}' checkpoint yet (is the run finished? `avgn train ... --resume`)")
    model.to(resolve_device(device)).eval()
    out = {"seed": cfg["seed"], "data_dir": cfg["data_dir"], "checkpoint_epoch": info["epoch"], "config": cfg}
    threshold = run_presence_threshold(run_dir)
    if threshold is not None:
        out["presence_threshold"] = threshold
    return model, exp, out


def run_presence_threshold(run_dir: str | Path) -> float | None:
    """The presence threshold of the ``predicted`` selection that a finished run chose on its
    validation sets (``run.json``); None for an unfinished run or a method without that selection."""
    summary = Path(run_dir) / "run.json"
    if not summary.is_file():
        return None
    th = json.loads(summary.read_text()).get("presence_threshold")
    return None if th is None else float(th)


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
def _log_fn(progress: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    return log


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
        data_dir: the built benchmark (``avgn data build``).
        run_dir: the run folder (created).
        seed: the run's seed (model init, data order, mixtures).
        resume: continue the run in ``run_dir`` if it has a checkpoint (a finished run is returned
            as is). With ``resume=False`` an existing run is an error, never overwritten.
        stop_after_epochs: stop after this many epochs *in this call* as if interrupted (tests,
            budgeted sessions); the run stays resumable.
    """
    from tqdm.auto import tqdm

    from avgn.env import environment_report, git_revision, resolve_device, seed_everything
    from avgn.evaluate import ModelPredictor, choose_presence_threshold, evaluate_sets, load_eval_set, model_inputs, selection_score
    from avgn.models import build_model

    t_wall = time.perf_counter()
    if isinstance(exp, str):
        exp = get_experiment(exp, profile or "cpu", **dict(overrides or {}))
    overrides = experiment_overrides(exp)  # what the command line needs to rebuild exactly this run
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    log = _log_fn(progress)
    dev = resolve_device(device)
    t = exp.train
    if t.torch_threads:
        torch.set_num_threads(t.torch_threads)
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)

    from avgn.data.manifest import load_build_info

    build_info = load_build_info(data_dir)
    exp = exp.with_num_classes(len(build_info["classes"]))
    identity = _data_identity(data_dir)
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

    last = read_checkpoint_info(run_dir, "last")
    if last is not None:
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a run; resume it (resume=True / --resume) or choose another folder")
        old = last["config"]
        for key in ("fingerprint", "seed", "data"):
            if old.get(key) != config[key]:
                raise ValueError(
                    f"cannot resume {run_dir}: its {key} differs ({old.get(key)!r} vs {config[key]!r}); use another run folder"
                )
        if last["state"].get("finished") and (run_dir / "run.json").is_file():
            import json

            log(f"[avgn.train] {run_dir} is finished (epoch {last['epoch']}); nothing to do")
            return json.loads((run_dir / "run.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config)

    # ---- inputs --------------------------------------------------------------------------------
    store = None
    feat_info: dict[str, Any] = {}
    if exp.inputs.cached_features:
        from avgn.features import FeatureStore, compute_features

        splits = sorted({"train"} | {n.split("/")[0] for n in exp.inputs.val_sets})
        feat_info = compute_features(data_dir, exp.inputs.features, device=device, progress=progress, splits=splits)
        if feat_info["n_computed"]:
            log(f"[avgn.train] cached {feat_info['n_computed']} images' features in {feat_info['seconds']:.1f} s")
        store = FeatureStore(data_dir, exp.inputs.features, preload=True, splits=splits)
    train_ds, groups, comp_sizes = build_train_data(exp, data_dir, seed, store)
    sampler = GroupedBatchSampler(groups, t.batch_size, seed=seed)
    val_sets = [load_eval_set(data_dir, n, exp.inputs, store, max_items=exp.inputs.val_max_items, materialize=True) for n in exp.inputs.val_sets]

    # ---- model / optimiser ---------------------------------------------------------------------
    # seeded here, after the inputs: computing the feature cache or loading the validation sets
    # draws from the global RNG only when they are not cached yet
    seed_everything(seed)
    model = build_model(exp.method, exp.model).to(dev)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=t.lr, weight_decay=t.weight_decay)
    steps_per_epoch = len(sampler)
    schedule = WarmupCosine(t.epochs * steps_per_epoch, int(round(t.warmup_epochs * steps_per_epoch)), t.schedule, t.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    prefixes = _frozen_prefixes(model, exp)
    modes = ("oracle", "predicted") if exp.method == "avgn" else ("oracle",)

    state: dict[str, Any] = {
        "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0, "finished": False, "stopped_early": False,
        "train_seconds": 0.0, "wall_seconds": 0.0, "samples": 0, "history": [],
    }
    start_epoch, step = 0, 0
    if last is not None:
        info = load_checkpoint(run_dir, model, name="last", optimizer=optimizer, scheduler=scheduler, restore_rng=True, map_location=dev)
        assert info is not None
        state.update(info["state"])
        start_epoch, step = int(info["epoch"]), int(info["step"])
        log(f"[avgn.train] resuming {run_dir} after epoch {start_epoch} (step {step})")
    log(
        f"[avgn.train] {exp.method} / {exp.profile} / seed {seed} on {dev}: {model.num_parameters(True) if hasattr(model, 'num_parameters') else sum(p.numel() for p in params):,} trainable parameters, "
        f"{len(train_ds)} items/epoch ({comp_sizes}), {steps_per_epoch} steps/epoch"
    )

    predictor = ModelPredictor(model, exp.method, dev, bf16=t.bf16, channels_last=t.channels_last)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=t.bf16)
    session_start = time.perf_counter()
    epochs_this_call = 0
    for epoch in range(start_epoch, t.epochs):
        if state["finished"]:
            break
        # ---- one epoch of training ------------------------------------------------------------
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        loader = prefetch(train_ds.iterate(sampler), t.num_workers)
        model.train()
        sums: dict[str, float] = {}
        n_seen = 0
        t0 = time.perf_counter()
        bar = tqdm(loader, total=steps_per_epoch, desc=f"{exp.method} epoch {epoch + 1}/{t.epochs}", disable=not progress, leave=False)
        for batch in bar:
            inputs = model_inputs(batch, dev, t.channels_last)
            with autocast:
                out = model(**inputs)
                loss, parts = compute_loss(model, exp.method, out, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {step} ({ {k: float(v) for k, v in parts.items()} })")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            bsz = int(batch["spec"].shape[0])
            n_seen += bsz
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * bsz
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        train_s = time.perf_counter() - t0
        # ---- validation (model selection) -----------------------------------------------------
        ev = evaluate_sets(predictor, val_sets, exp.eval, modes)
        score = selection_score(ev["results"], modes)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": optimizer.param_groups[0]["lr"],
            "train": {k: v / max(1, n_seen) for k, v in sums.items()},
            "train_seconds": train_s,
            "samples_per_s": n_seen / train_s if train_s > 0 else math.nan,
            "val_seconds": ev["seconds"],
            "val": ev["results"],
            "val_score": score,
        }
        if exp.method == "avgn":
            from avgn.diagnostics import embedding_dependence_summary

            with torch.no_grad():
                tok = model.token_classifier(model.class_tokens).argmax(-1).cpu()
            row["token_raw_accuracy"] = float((tok == torch.arange(len(tok))).float().mean())
            # does a class's embedding change when the class sounds? (1 = no; chapter 2)
            multi = [es for es in val_sets if es.name.n_sources > 1] or val_sets
            row["embedding_dependence"] = embedding_dependence_summary(model, [b for es in multi for b in es.batches()], dev)
        improved = score > state["best_score"] + t.min_delta
        row["is_best"] = bool(improved)
        state["history"].append(row)
        state["train_seconds"] += train_s
        state["samples"] += n_seen
        if improved:
            state["best_score"], state["best_epoch"], state["bad_epochs"] = score, epoch + 1, 0
            save_checkpoint(run_dir, model, name="best", epoch=epoch + 1, step=step, include_rng=False,
                            state={"val_score": score}, config=config, exclude_prefixes=prefixes)
        else:
            state["bad_epochs"] += 1
        if t.early_stopping_patience and state["bad_epochs"] >= t.early_stopping_patience:
            state["stopped_early"] = True
        state["finished"] = epoch + 1 >= t.epochs or state["stopped_early"]
        state["wall_seconds"] += time.perf_counter() - session_start
        session_start = time.perf_counter()
        save_checkpoint(run_dir, model, name="last", epoch=epoch + 1, step=step, optimizer=optimizer, scheduler=scheduler,
                        state=state, config=config, exclude_prefixes=prefixes)
        _write_history(run_dir, state["history"])
        log(
            f"[avgn.train] epoch {epoch + 1}/{t.epochs}: loss {row['train'].get('total', math.nan):.4f}, "
            f"val score {score:.4f}{' (best)' if improved else ''}, {row['samples_per_s']:.0f} samples/s, "
            f"train {train_s:.1f} s, val {ev['seconds']:.1f} s"
        )
        epochs_this_call += 1
        if state["stopped_early"]:
            log(f"[avgn.train] early stop: no improvement for {state['bad_epochs']} epochs")
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs and not state["finished"]:
            log(f"[avgn.train] stopping after {epochs_this_call} epoch(s) as asked; resume to continue")
            return {"finished": False, "epoch": epoch + 1, "step": step, "state": state}

    # ---- finished: the presence threshold of the selected epoch, chosen on validation -----------
    threshold, curve = None, None
    if "predicted" in modes:
        load_checkpoint(run_dir, model, name="best", map_location=dev)
        threshold, curve = choose_presence_threshold(predictor, val_sets)
        log(f"[avgn.train] presence threshold {threshold:.2f} (chosen on {', '.join(exp.inputs.val_sets)})")
    # ---- the run summary ---------------------------------------------------------------------------
    best_row = next((h for h in state["history"] if h["epoch"] == state["best_epoch"]), None)
    summary = {
        "method": exp.method,
        "profile": exp.profile,
        "seed": int(seed),
        "finished": True,
        "git_revision": git_revision(),
        "environment": environment_report(device),
        "run_dir": str(run_dir),
        "data_dir": str(data_dir.resolve()),
        "data": identity,
        "command": config["command"],
        "fingerprint": config["fingerprint"],
        "epochs_run": len(state["history"]),
        "steps": step,
        "best_epoch": state["best_epoch"],
        "best_val_score": state["best_score"],
        "selection_modes": list(modes),
        "presence_threshold": threshold,
        "threshold_curve": curve,
        "stopped_early": state["stopped_early"],
        "train_seconds": state["train_seconds"],
        "wall_seconds": state["wall_seconds"],
        "samples": state["samples"],
        "samples_per_s": state["samples"] / state["train_seconds"] if state["train_seconds"] else math.nan,
        "trainable_parameters": int(sum(p.numel() for p in params)),
        "features": feat_info,
        "val": best_row["val"] if best_row else {},
        "config": exp.to_dict(),
    }
    atomic_write_json(run_dir / "run.json", summary)
    import pandas as pd

    flat = _flatten("", {k: v for k, v in summary.items() if k not in ("environment", "config", "features", "threshold_curve")}, {})
    atomic_write_text(run_dir / "run.csv", pd.DataFrame([flat]).to_csv(index=False))
    log(f"[avgn.train] done: best epoch {state['best_epoch']} (val score {state['best_score']:.4f}), "
        f"{summary['samples_per_s']:.0f} samples/s, {time.perf_counter() - t_wall:.0f} s in this call")
    return summary


def run_experiment(
    method: str,
    profile: str,
    seed: int,
    data_dir: str | Path,
    runs_dir: str | Path,
    *,
    device: str = "auto",
    eval_splits: Sequence[str] = ("test",),
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or resume / reuse) a run in :func:`run_dir_for` and evaluate it on ``eval_splits``
    (an existing evaluation of the same checkpoint is reused). Returns ``{"run": ..., "eval": {split: ...}}``.

    Chapter 3 in four lines::

        for method in ("avgn", "ezvsl", "mal"):
            for seed in (0, 1, 2):
                run_experiment(method, profile, seed, data_dir, runs_dir)
        for kind in ("centre", "object"):
            avgn.evaluate.run_reference(kind, profile, data_dir, runs_dir)
        table = avgn.evaluate.collect_results(runs_dir / profile)  # long format, one row per metric
    """
    import json

    from avgn.evaluate import evaluate_run

    run_dir = run_dir_for(runs_dir, method, profile, seed)
    summary = train(method, data_dir, run_dir, seed=seed, profile=profile, device=device, resume=True, progress=progress, overrides=overrides)
    evals = {}
    best = read_checkpoint_info(run_dir, "best")
    for split in eval_splits:
        path = run_dir / f"eval_{split}.json"
        if path.is_file():
            prev = json.loads(path.read_text())
            if best is not None and prev.get("checkpoint_epoch") == best["epoch"]:
                evals[split] = prev
                continue
        evals[split] = evaluate_run(run_dir, split, device=device, progress=progress)
    return {"run": summary, "eval": evals}


# --------------------------------------------------------------------------------------------------
# named variants (the book's comparisons)
# --------------------------------------------------------------------------------------------------
def variant_dirs(variant: Any, runs_dir: str | Path, profile: str, seed: int) -> tuple[Path, Path]:
    """``(run_dir, eval_dir)`` of an :class:`avgn.experiment.Variant`: where its weights are trained
    and where its evaluations are written (the same folder unless it only changes inference)."""
    runs_dir = Path(runs_dir)
    tv = variant.training
    root = runs_dir / "variants" / tv.name if tv.name else runs_dir
    run_dir = run_dir_for(root, variant.method, profile, seed)
    if not variant.eval_overrides:
        return run_dir, run_dir
    return run_dir, run_dir_for(runs_dir / "variants" / variant.name, variant.method, profile, seed)


def run_variant(
    variant: Any,
    profile: str,
    seed: int,
    data_dir: str | Path,
    runs_dir: str | Path,
    *,
    device: str = "auto",
    eval_splits: Sequence[str] = ("test",),
    eval_sets: dict[str, Sequence[str]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) the runs of ``variant`` and evaluate them on ``eval_splits`` (all sets of
    each split, written as ``eval_<split>.*``) and on ``eval_sets`` (``{tag: [set names]}``,
    written as ``eval_<tag>.*``). Finished evaluations of the same checkpoint are reused.
    Returns ``{"run_dir", "eval_dir", "commands"}`` with the shell commands that reproduce the run
    and its evaluations."""
    import json

    from avgn.evaluate import evaluate_run

    run_dir, eval_dir = variant_dirs(variant, runs_dir, profile, seed)
    overrides = dict(variant.overrides) or None
    data_dir = Path(data_dir)
    train(variant.method, data_dir, run_dir, seed=seed, profile=profile, device=device, resume=True, progress=progress, overrides=overrides)
    best = read_checkpoint_info(run_dir, "best")
    threshold = run_presence_threshold(run_dir) or 0.5
    ev_over = dict(variant.eval_overrides) or None
    commands = [reproduce_command(variant.method, profile, seed, data_dir, run_dir, overrides)]
    jobs: list[tuple[str, str | list[str], list[str] | None]] = [(sp, sp, None) for sp in eval_splits]
    jobs += [(tag, sorted({n.split("/")[0] for n in names}), list(names)) for tag, names in (eval_sets or {}).items()]
    for tag, split, sets in jobs:
        path = eval_dir / f"eval_{tag}.json"
        prev = json.loads(path.read_text()) if path.is_file() else None
        if not (prev and best is not None and prev.get("checkpoint_epoch") == best["epoch"]
                and prev.get("model_overrides", {}) == (ev_over or {}) and (sets is None or prev.get("sets") == sets)
                and prev.get("presence_threshold", 0.5) == threshold):
            evaluate_run(run_dir, split, sets=sets, device=device, progress=progress, model_overrides=ev_over,
                         out_dir=eval_dir if ev_over else None, tag=tag)
        commands.append(eval_command(run_dir, split if isinstance(split, str) else split[0], ev_over, eval_dir if ev_over else None, sets=sets, tag=tag))
    return {"run_dir": run_dir, "eval_dir": eval_dir, "commands": commands}


def collect_variants(variants: Sequence[Any], runs_dir: str | Path, profile: str, seeds: Sequence[int], split: str = "test", samples: bool = False):
    """The long results table (:func:`avgn.evaluate.collect_results` columns, plus ``variant``) of
    ``variants`` over ``seeds``; a missing evaluation is an error naming the command that makes it.
    ``split`` is the evaluation's tag (``eval_<split>.csv``); ``samples=True`` reads the per-source
    rows instead (``eval_<split>_samples.csv``: ``set, mode, scene_id, source, class_id, ap, ciou,
    has_map``)."""
    import pandas as pd

    frames = []
    for v in variants:
        for s in seeds:
            _, eval_dir = variant_dirs(v, runs_dir, profile, s)
            path = eval_dir / (f"eval_{split}_samples.csv" if samples else f"eval_{split}.csv")
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: run `run_variant` for {v.label!r} seed {s} (split {split}) first")
            frames.append(pd.read_csv(path).assign(variant=v.label, seed=s))
    return pd.concat(frames, ignore_index=True)
