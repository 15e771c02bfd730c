"""Benchmark: end-to-end training samples/s, old pipeline vs new, per method, in one run.

For every method (``avgn``, ``ezvsl``, ``mal``) on the same build, model configuration, batches and
thread count, three rates are measured side by side (interleaved round-robin over ``--repeats``
rounds so that a load change on a shared machine hits them alike; the best round is kept, the
median too):

* ``old`` — the set-up of the book's earlier runs: one item at a time in a DataLoader worker
  (``num_workers=1``): the item's mixture recipe, a NumPy mix with per-item pink noise (float64), a
  per-item STFT and the cached features looked up and collated, while the main process trains with
  the per-tensor Adam loop on channels-first tensors;
* ``new`` — the profile's set-up: :class:`avgn.data.batching.MixtureBatcher` (clips in memory, the
  whole batch rendered as ``inputs.train_render`` says (``fast``: float32, noise from a bank) and transformed at once, rendered ahead in a thread when
  ``train.num_workers`` > 0, :func:`avgn.train.prefetch`; on the device when it is CUDA, as
  ``avgn.train`` renders), ``train.channels_last`` and
  ``train.fused_optimizer`` as the profile sets them;
* ``model`` — the training step alone (forward, loss, backward, Adam) on batches rendered beforehand.

``ratio = new / old`` and ``efficiency = new / model`` per method are written to
``benchmarks/results/train_<device>.json`` (atomic write), with the CPU model, its flags (AVX2 /
AVX-512 / AMX / BF16), torch's thread count and the profile. Every rate also gets the model's FLOPs
per training sample (:class:`torch.utils.flop_counter.FlopCounterMode` on the batches timed, fp32)
and the fraction of the measured matmul peak of the precision used (``torch.mm``, as in
``bench_models.py``).

``--run`` adds one short real training run (``avgn.train.train``, what ``avgn train`` runs: the
profile's optimiser, bf16 / channels-last settings, background batch rendering and validation) of
``--run-method`` for ``--run-epochs`` epochs of ``--run-items`` fresh mixtures, and records its
samples/s (the last epoch's: the first one pays for warm-up; every epoch's is kept) and the fraction
of the matmul peak it reaches.

Precision: the profile's ``train.bf16`` is kept where the device computes bf16 natively and turned
off elsewhere (:func:`avgn.env.choose_precision`; on the pool's CPUs without AVX512-BF16 bf16 is
2.5x slower than fp32); the output says which path was taken and why (``precision``,
``precision_reason``). Every timing runs on ``--device`` (``torch.cuda.synchronize`` around it on a
GPU); the ``old`` pipeline renders on the CPU in its DataLoader worker.

    python benchmarks/bench_train.py [--profile cpu] [--device auto|cpu|cuda] [--data data/embedded/cpu]
        [--steps 20] [--repeats 3] [--methods avgn ezvsl mal] [--threads 2] [--precision auto|bf16|fp32]
        [--set KEY=VALUE ...] [--run [--run-method avgn] [--run-epochs 2] [--run-items 4096] [--run-dir DIR]]
        [--gemm-n N] [--out benchmarks/results/train_<device>.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_models (GEMM peak, FLOP counting) when imported from elsewhere

from avgn.data.audio import mix  # noqa: E402
from avgn.data.audio import pink_from_white  # noqa: E402
from avgn.data.datasets import log_spectrogram, read_clip, read_image  # noqa: E402
from avgn.env import choose_precision, cpu_flags, git_revision, resolve_device  # noqa: E402
from avgn.experiment import get_experiment  # noqa: E402
from avgn.features import FeatureStore, collate_samples, compute_features  # noqa: E402
from avgn.io import atomic_write_json  # noqa: E402
from avgn.methods import get_method, model_inputs  # noqa: E402
from avgn.train import GroupedBatchSampler, build_train_data, make_optimizer, prefetch  # noqa: E402


class LegacyItems(Dataset):
    """The earlier per-item training path (as it was): one recipe, a NumPy mix with its own pink
    noise, one STFT and a feature lookup (or, without a feature cache, the frame read) per item;
    clips decoded once, in the constructing process."""

    def __init__(self, parts: list[Any], store: FeatureStore | None):
        self.parts, self.store = parts, store
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.clips: dict[str, np.ndarray] = {}
        for p in parts:
            d = p.data
            for path in sorted({x for pool in p.clip_pools.values() for x in pool} | set(p._solo_clip) | {x for ps in p._duet_clips for x in ps}):
                self.clips.setdefault(path, read_clip(d.path(path), d.sample_rate, d.n_samples))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        part = self.parts[k]
        rc = part.recipe(int(i - self.offsets[k]))
        waves = np.stack([self.clips[p] for p in rc.clip_paths])
        noise = None if rc.white is None else pink_from_white(rc.white)
        y = mix(waves, rc.gains_db, noise=noise, snr_db=rc.snr_db)
        labels = torch.zeros(len(part.class_names))
        labels[list(rc.class_ids)] = 1.0
        classes = torch.full((part.max_sources,), -1, dtype=torch.long)
        classes[: rc.n_sources] = torch.as_tensor(rc.class_ids)
        item = {
            "spec": log_spectrogram(torch.from_numpy(y), part.spec).unsqueeze(0),
            "labels": labels,
            "classes": classes,
            "n_sources": torch.tensor(rc.n_sources),
        }
        if self.store is not None:
            item["visual_feats"] = self.store.for_scenes(rc.scene_ids).float()
        else:
            table = part.solo if rc.table == "solo" else part.duets
            item["image"] = torch.cat([read_image(part.data.path(table.iloc[r].image_path)) for r in rc.rows], dim=-1)
        return item


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _step_fn(method: str, exp: Any, seed: int, dev: torch.device) -> Callable[[dict[str, Any]], int]:
    """One training step as :func:`avgn.train._train_epoch` takes it (optimiser, grad clip, bf16
    autocast and channels-last from ``exp.train``), on ``dev``."""
    t = exp.train
    torch.manual_seed(seed)
    model = get_method(method).build(exp.model).to(dev)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, t)
    model.train()

    def step(batch: dict[str, Any]) -> int:
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=t.bf16):
            out = model(**model_inputs(batch, dev, t.channels_last))
            loss, _ = get_method(method).loss(model, out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        return int(batch["spec"].shape[0])

    return step


def _rate(step, batches, n_steps: int, dev: torch.device) -> float:
    it = iter(batches)
    step(next(it))  # warm-up (first-touch allocations, worker start-up, kernel selection)
    _sync(dev)
    t0, n = time.perf_counter(), 0
    for _ in range(n_steps):
        n += step(next(it))
    _sync(dev)
    return n / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# FLOPs and the matmul peak
# --------------------------------------------------------------------------------------------------
def _head(batch: dict[str, Any], k: int) -> dict[str, Any]:
    """The first ``k`` items of a batch (tensors and lists)."""
    return {key: v[:k] for key, v in batch.items()}


def _shape_key(batch: dict[str, Any]) -> tuple:
    return tuple((k, tuple(batch[k].shape[1:])) for k in ("spec", "image", "visual_feats") if k in batch)


def train_flops(method: str, exp: Any, batch: dict[str, Any]) -> float:
    """FLOPs per sample of one training step (forward + loss + backward, fp32, on the CPU) of
    ``method`` on the first two items of ``batch`` (the optimiser step is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench_models import _conv_backward_flop

    torch.manual_seed(0)
    m = get_method(method)
    model = m.build(exp.model).train()
    small = _head(batch, 2)
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    with counter:
        out = model(**model_inputs(small, torch.device("cpu")))
        loss, _ = m.loss(model, out, small)
        loss.backward()
    return counter.get_total_flops() / int(small["spec"].shape[0])


def mean_train_flops(method: str, exp: Any, seen: list[tuple[tuple, int]], examples: dict[tuple, dict[str, Any]]) -> dict[str, Any]:
    """FLOPs per sample averaged over the timed batches ``seen`` (``(input-shape key, batch size)``
    each; one count per input shape, on its two-item example of ``examples``: a ``concat`` duet's
    frame is twice as wide)."""
    by_shape = {key: train_flops(method, exp, b) for key, b in examples.items()}
    total = sum(by_shape[key] * bsz for key, bsz in seen)
    n = sum(bsz for _, bsz in seen)
    return {"flops_per_sample": total / max(1, n),
            "by_input_shape": {" ".join(f"{k}{list(s)}" for k, s in key): f for key, f in by_shape.items()}}


def _annotate(rates: dict[str, float], flops: float, peak: float) -> dict[str, dict[str, float]]:
    return {k: {"gflops": r * flops / 1e9, "fraction_of_peak": r * flops / 1e9 / peak} for k, r in rates.items()}


# --------------------------------------------------------------------------------------------------
# a short real run
# --------------------------------------------------------------------------------------------------
def run_short(args: argparse.Namespace, data: Path, dev: torch.device, bf16: bool, sets: dict[str, Any],
              peak: dict[str, float]) -> dict[str, Any]:
    """Train ``args.run_method`` for ``args.run_epochs`` epochs with :func:`avgn.train.train` and
    measure it: samples/s per epoch, FLOPs per sample of the epoch's input mix, fraction of peak."""
    from avgn.data.manifest import load_build_info
    from avgn.train import train

    n = args.run_items
    overrides: dict[str, Any] = {
        "train.epochs": args.run_epochs,
        "train.solo_items": n // 2, "train.scene_items": n // 4, "train.concat_items": n - n // 2 - n // 4,
        "train.early_stopping_patience": None, "inputs.val_max_items": args.run_val_items,
    }
    overrides.update(sets)
    overrides["train.bf16"] = bf16  # the precision chosen for this device (pick_precision), over --set
    exp = get_experiment(args.run_method, args.profile, **overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="avgn_bench_run_"))
    t0 = time.perf_counter()
    summary = train(exp, data, run_dir, seed=0, device=str(dev), resume=False, progress=False)
    wall = time.perf_counter() - t0
    history = json.loads((run_dir / "history.json").read_text())
    if not args.run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    per_epoch = [h["samples_per_s"] for h in history]
    # FLOPs of the epoch's mix: one batch per frame shape, weighted by the items of that shape
    exp_b = exp.for_build(load_build_info(data))
    store = FeatureStore(data, exp_b.inputs.features, preload=True, splits=["train"]) if exp_b.inputs.cached_features else None
    batcher, groups, _ = build_train_data(exp_b, data, 0, store)
    fl, by = 0.0, {}
    for start, count in groups:
        if count:
            f = train_flops(args.run_method, exp_b, batcher.batch(list(range(start, start + min(2, count)))))
            by[f"items {start}..{start + count - 1}"] = f
            fl += f * count / sum(c for _, c in groups)
    dtype = "bf16" if exp.train.bf16 else "fp32"
    rate = per_epoch[-1]
    return {
        "method": args.run_method,
        "run_dir": str(run_dir) if args.run_dir else "(a temporary folder, removed)",
        "command": summary.get("command"),
        "overrides": {k: v for k, v in overrides.items()},
        "epochs": len(history),
        "items_per_epoch": n,
        "batch_size": exp.train.batch_size,
        "steps": summary.get("steps"),
        "bf16": exp.train.bf16,
        "channels_last": exp.train.channels_last,
        "samples_per_s": rate,
        "samples_per_s_note": "the last epoch's (training only; the first epoch pays for warm-up)" if len(per_epoch) > 1 else "the only epoch's",
        "samples_per_s_per_epoch": per_epoch,
        "samples_per_s_whole_run": summary.get("samples_per_s"),
        "train_seconds": summary.get("train_seconds"),
        "wall_seconds": wall,
        "best_val_score": summary.get("best_val_score"),
        "flops_per_sample": fl,
        "flops_per_sample_by_group": by,
        "peak_dtype": dtype,
        "gflops": rate * fl / 1e9,
        "fraction_of_peak": rate * fl / 1e9 / peak[dtype],
    }


def pick_precision(dev: torch.device, profile_bf16: bool, requested: str = "auto", profile: str = "") -> tuple[str, str]:
    """``(precision, reason)`` of the timed training: with ``requested="auto"`` the profile's
    ``train.bf16`` where ``dev`` computes bf16 natively (:func:`avgn.env.choose_precision`), fp32
    where it would be emulated or the profile trains in fp32."""
    if requested != "auto":
        return choose_precision(dev, requested)
    if not profile_bf16:
        return "fp32", f"the {profile or 'chosen'} profile trains in fp32 (train.bf16=False)"
    return choose_precision(dev, "bf16")


def main(argv: list[str] | None = None) -> int:
    from avgn.cli import _parse_sets
    from avgn.data.manifest import load_build_info

    from bench_models import cpu_name, gemm_peak

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--data", default=None, help="build folder (default data/embedded/<profile>)")
    ap.add_argument("--methods", nargs="*", default=["avgn", "ezvsl", "mal"], help="methods of the old / new / model comparison (none: skip it)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "force-bf16", "fp32"],
                    help="auto: the profile's train.bf16 where the device computes bf16 natively, else fp32")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of every experiment, e.g. --set model.dim=64 (repeatable)")
    ap.add_argument("--run", action="store_true", help="also a short real training run (avgn.train.train)")
    ap.add_argument("--run-method", default="avgn")
    ap.add_argument("--run-epochs", type=int, default=2)
    ap.add_argument("--run-items", type=int, default=4096, help="training items per epoch of the run")
    ap.add_argument("--run-val-items", type=int, default=64, help="validation scenes per set of the run")
    ap.add_argument("--run-dir", default=None, help="run folder (default: a new temporary folder)")
    ap.add_argument("--gemm-n", type=int, default=None, help="GEMM size for the peak (default 2048 CPU, 8192 CUDA)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    data = Path(args.data or ROOT / "data" / "embedded" / args.profile)
    sets = _parse_sets(args.set)
    precision, reason = pick_precision(dev, get_experiment("avgn", args.profile, **sets).train.bf16, args.precision, args.profile)
    bf16 = precision == "bf16"
    sets_all = {**sets, "train.bf16": bf16}
    print(f"[bench_train] device {dev}; precision {precision}: {reason}", flush=True)
    gemm_n = args.gemm_n or (8192 if dev.type == "cuda" else 2048)
    peak = gemm_peak(dev, gemm_n, repeats=5, dtypes=("fp32", "bf16") if bf16 else ("fp32",))
    peak = {k: v for k, v in peak.items() if not k.endswith("_cpu_time")}
    print(f"[bench_train] GEMM peak (torch.mm {gemm_n}^3) GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()), flush=True)
    results: dict[str, Any] = {}
    for method in args.methods:
        exp = get_experiment(method, args.profile, **sets_all)
        exp = exp.with_num_classes(len(load_build_info(data)["classes"]))
        store = None
        if exp.inputs.cached_features:
            compute_features(data, exp.inputs.features, device=str(dev), progress=False, splits=["train"])
            store = FeatureStore(data, exp.inputs.features, preload=True, splits=["train"])
        batcher, groups, _ = build_train_data(exp, data, 0, store, device=dev)  # rendered where avgn.train renders
        # the earlier training set-up of the same model: per-tensor Adam, channels-first tensors
        exp_old = exp.with_overrides(**{"train.fused_optimizer": False, "train.channels_last": False})
        sampler = GroupedBatchSampler(groups, exp.train.batch_size, seed=0)
        need = (args.steps + 1) * args.repeats + 1
        idx = [b for b in sampler][:need]
        legacy = LegacyItems(batcher.parts, store)
        rates: dict[str, list[float]] = {"old": [], "new": [], "model": []}
        seen: list[tuple[tuple, int]] = []  # (input shapes, batch size) of every timed batch
        examples: dict[tuple, dict[str, Any]] = {}  # two items of each input shape, for the FLOP count
        for r in range(args.repeats):
            chunk = idx[r * (args.steps + 1) : (r + 1) * (args.steps + 1)]
            pre = [batcher.batch(b) for b in chunk]
            for b in pre[1:]:
                seen.append((_shape_key(b), int(b["spec"].shape[0])))
                examples.setdefault(_shape_key(b), _head(b, 2))
            step = _step_fn(method, exp, r, dev)
            rates["model"].append(_rate(step, pre, args.steps, dev))
            step = _step_fn(method, exp, r, dev)
            rates["new"].append(_rate(step, prefetch(batcher.iterate(chunk), exp.train.num_workers), args.steps, dev))
            step = _step_fn(method, exp_old, r, dev)
            dl = DataLoader(legacy, batch_sampler=chunk, num_workers=1, collate_fn=collate_samples)
            rates["old"].append(_rate(step, dl, args.steps, dev))
            print(f"[bench_train] {method} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
        best = {k: max(v) for k, v in rates.items()}
        flops = mean_train_flops(method, exp, seen, examples)
        results[method] = {
            "samples_per_s": best,
            "median_samples_per_s": {k: statistics.median(v) for k, v in rates.items()},
            "ratio": best["new"] / best["old"],
            "efficiency": best["new"] / best["model"],
            "batch_size": exp.train.batch_size,
            "flops_per_sample": flops["flops_per_sample"],
            "flops_per_sample_by_input_shape": flops["by_input_shape"],
            "of_peak": _annotate(best, flops["flops_per_sample"], peak[precision]),
        }
        print(f"[bench_train] {method}: new/old {results[method]['ratio']:.2f}x, new/model {results[method]['efficiency']:.0%}; "
              f"model step {results[method]['of_peak']['model']['fraction_of_peak']:.1%} of the {precision} GEMM peak", flush=True)
    run = None
    if args.run:
        run = run_short(args, data, dev, bf16, sets, peak)
        print(f"[bench_train] run {run['method']} / {args.profile} on {dev} ({precision}): {run['samples_per_s']:.1f} samples/s "
              f"({run['samples_per_s_note']}), {run['flops_per_sample'] / 1e9:.2f} GFLOP/sample -> {run['gflops']:.0f} GFLOP/s = "
              f"{run['fraction_of_peak']:.1%} of the {run['peak_dtype']} GEMM peak ({peak[run['peak_dtype']]:.0f} GFLOP/s)", flush=True)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"train_{dev.type}.json")
    payload = {
        "benchmark": "bench_train",
        "command": " ".join(["python", "benchmarks/bench_train.py", *(sys.argv[1:] if argv is None else argv)]),
        "profile": args.profile,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "precision": precision,
        "precision_reason": reason,
        "overrides": sets,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "git": git_revision(),
        "gemm_n": gemm_n,
        "gemm_peak_gflops": peak,
        "methods": results,
    }
    if run is not None:
        payload["run"] = run
    atomic_write_json(out, payload)
    print(f"[bench_train] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
