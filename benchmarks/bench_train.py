"""Benchmark: end-to-end training samples/s, old pipeline vs new, per method, in one run.

For every method (``avgn``, ``ezvsl``, ``mal``) on the same build, model configuration, batches and
thread count, three rates are measured side by side (interleaved round-robin over ``--repeats``
rounds so that a load change on a shared machine hits them alike; the best round is kept, the
median too):

* ``old`` — the pipeline of the book's earlier runs: one item at a time in a DataLoader worker
  (``num_workers=1``): the item's mixture recipe, a NumPy mix with per-item pink noise, a per-item
  STFT and the cached features looked up and collated, while the main process trains;
* ``new`` — :class:`avgn.data.batching.MixtureBatcher`: clips in memory, the whole batch mixed and
  transformed at once, rendered one batch ahead in a thread (:func:`avgn.train.prefetch`);
* ``model`` — the training step alone (forward, loss, backward, Adam) on batches rendered beforehand.

``ratio = new / old`` and ``efficiency = new / model`` per method are written to
``benchmarks/results/train_<device>.json`` (atomic write), with the CPU model, its flags (AVX2 /
AVX-512 / AMX / BF16), torch's thread count and the profile.

    python benchmarks/bench_train.py [--profile cpu] [--data data/embedded/cpu] [--steps 20]
        [--repeats 3] [--methods avgn ezvsl mal] [--threads 2] [--out benchmarks/results/train_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from avgn.data.audio import mix  # noqa: E402
from avgn.data.build import pink_from_white  # noqa: E402
from avgn.data.datasets import log_spectrogram, read_clip  # noqa: E402
from avgn.env import cpu_flags  # noqa: E402
from avgn.experiment import get_experiment  # noqa: E402
from avgn.features import FeatureStore, collate_samples, compute_features  # noqa: E402
from avgn.io import atomic_write_json  # noqa: E402
from avgn.methods import get_method, model_inputs  # noqa: E402
from avgn.train import GroupedBatchSampler, build_train_data, prefetch  # noqa: E402


class LegacyItems(Dataset):
    """The earlier per-item training path (as it was): one recipe, a NumPy mix with its own pink
    noise, one STFT and a feature lookup per item; clips decoded once, in the constructing process."""

    def __init__(self, parts: list[Any], store: FeatureStore):
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
        return {
            "spec": log_spectrogram(torch.from_numpy(y), part.spec).unsqueeze(0),
            "labels": labels,
            "classes": classes,
            "n_sources": torch.tensor(rc.n_sources),
            "visual_feats": self.store.for_scenes(rc.scene_ids).float(),
        }


def _step_fn(method: str, exp: Any, seed: int):
    torch.manual_seed(seed)
    model = get_method(method).build(exp.model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=exp.train.lr)
    model.train()
    dev = torch.device("cpu")

    def step(batch: dict[str, Any]) -> int:
        out = model(**model_inputs(batch, dev))
        loss, _ = get_method(method).loss(model, out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        return int(batch["spec"].shape[0])

    return step


def _rate(step, batches, n_steps: int) -> float:
    it = iter(batches)
    step(next(it))  # warm-up (first-touch allocations, worker start-up)
    t0, n = time.perf_counter(), 0
    for _ in range(n_steps):
        n += step(next(it))
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--data", default=None, help="build folder (default data/embedded/<profile>)")
    ap.add_argument("--methods", nargs="+", default=["avgn", "ezvsl", "mal"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data or ROOT / "data" / "embedded" / args.profile)
    results: dict[str, Any] = {}
    for method in args.methods:
        exp = get_experiment(method, args.profile)
        from avgn.data.manifest import load_build_info

        exp = exp.with_num_classes(len(load_build_info(data)["classes"]))
        compute_features(data, exp.inputs.features, progress=False, splits=["train"])
        store = FeatureStore(data, exp.inputs.features, preload=True, splits=["train"])
        batcher, groups, _ = build_train_data(exp, data, 0, store)
        sampler = GroupedBatchSampler(groups, exp.train.batch_size, seed=0)
        need = (args.steps + 1) * args.repeats + 1
        idx = [b for b in sampler][:need]
        legacy = LegacyItems(batcher.parts, store)
        rates: dict[str, list[float]] = {"old": [], "new": [], "model": []}
        for r in range(args.repeats):
            chunk = idx[r * (args.steps + 1) : (r + 1) * (args.steps + 1)]
            pre = [batcher.batch(b) for b in chunk]
            step = _step_fn(method, exp, r)
            rates["model"].append(_rate(step, pre, args.steps))
            step = _step_fn(method, exp, r)
            rates["new"].append(_rate(step, prefetch(batcher.iterate(chunk), 1), args.steps))
            step = _step_fn(method, exp, r)
            dl = DataLoader(legacy, batch_sampler=chunk, num_workers=1, collate_fn=collate_samples)
            rates["old"].append(_rate(step, dl, args.steps))
            print(f"[bench_train] {method} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
        best = {k: max(v) for k, v in rates.items()}
        results[method] = {
            "samples_per_s": best,
            "median_samples_per_s": {k: statistics.median(v) for k, v in rates.items()},
            "ratio": best["new"] / best["old"],
            "efficiency": best["new"] / best["model"],
            "batch_size": exp.train.batch_size,
        }
        print(f"[bench_train] {method}: new/old {results[method]['ratio']:.2f}x, new/model {results[method]['efficiency']:.0%}", flush=True)
    device = "cpu"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"train_{device}.json")
    payload = {
        "benchmark": "bench_train",
        "command": " ".join(["python", "benchmarks/bench_train.py", *sys.argv[1:]]),
        "profile": args.profile,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "methods": results,
    }
    atomic_write_json(out, payload)
    print(f"[bench_train] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
