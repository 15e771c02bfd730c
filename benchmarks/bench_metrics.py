"""Benchmark: the full single-source protocol (pixel AP, cIoU, AUC) on 5,000 samples at 224x224.

Compares ``avgn.metrics.evaluate_single_source`` with the reference implementations' approach (a
per-sample loop: upsample, ``sklearn.metrics.average_precision_score``, median-threshold cIoU in
NumPy), checks that both give the same numbers on the samples the reference scores, and prints
samples/s and the speed-up ratio.

``--device cpu`` (the default where there is no GPU) times the NumPy backend on the CPU;
``--device cuda`` times the torch backend on the GPU (inputs already there, ``torch.cuda.synchronize``
inside the timing) as the headline evaluator, next to the NumPy backend on ``--cpu-n`` samples, and
checks the GPU numbers against the reference (``--backend torch --device cpu`` runs that same path
on the CPU). ``speedup_vs_reference`` is the headline evaluator's
samples/s over the per-sample scikit-learn loop's. The evaluator has no bf16 path: it computes in
fp32 / fp64 on every device, which the output records (``precision``, ``precision_reason``).

    python benchmarks/bench_metrics.py [--device auto|cpu|cuda] [--backend auto|numpy|torch] [--n 5000] [--ref-n 500] [--cpu-n N]
        [--repeats 3] [--out benchmarks/results/metrics.json (CPU) | metrics_<device>.json]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from avgn.boxes import boxes_to_masks
from avgn.env import environment_report, resolve_device
from avgn.io import atomic_write_json
from avgn.metrics import SUCCESS_THRESHOLDS, evaluate_single_source


def make_inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """7x7 maps (as a model produces) and 224x224 box masks covering 1%-50% of the frame."""
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, 7, 7, generator=gen)
    wh = 0.1 + 0.6 * torch.rand(n, 2, generator=gen)
    xy = (1 - wh) * torch.rand(n, 2, generator=gen)
    masks = boxes_to_masks(torch.cat([xy, xy + wh], 1), (224, 224))
    return maps, masks


def reference_loop(maps: torch.Tensor, masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The public code's approach: one sample at a time, scikit-learn AP, NumPy median-threshold cIoU."""
    aps, ious = [], []
    for i in range(maps.shape[0]):
        heat = F.interpolate(maps[i][None, None], size=(224, 224), mode="bilinear", align_corners=False)[0, 0].numpy()
        gt = masks[i].numpy()
        aps.append(average_precision_score(gt.flatten(), heat.flatten()))
        norm = (heat - heat.min()) / (heat.max() - heat.min())
        thr = np.sort(norm.flatten())[int(norm.size / 2)]
        pred = norm > thr
        ious.append((pred & gt).sum() / (gt.sum() + (pred & ~gt).sum()))
    return np.array(aps), np.array(ious)


def _timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--ref-n", type=int, default=500, help="samples timed for the (slow) reference loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N: where the headline evaluator runs")
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "torch"],
                        help="backend of the headline evaluator (auto: numpy on the CPU, torch on a GPU)")
    parser.add_argument("--cpu-n", type=int, default=None,
                        help="samples of the extra CPU NumPy-backend timing when the headline is another device or "
                             "backend (default min(n, 5000); 0: skip)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/metrics.json on the CPU, metrics_<device>.json elsewhere")
    args = parser.parse_args()
    device = resolve_device(args.device)
    out_path = args.out or ("benchmarks/results/metrics.json" if device.type == "cpu" else f"benchmarks/results/metrics_{device.type}.json")
    precision, precision_reason = "fp32", "the evaluator has no bf16 path: maps are upsampled and scored in fp32 / fp64 on every device"
    print(f"[bench_metrics] device {device}; precision {precision} ({precision_reason})", flush=True)

    maps, masks = make_inputs(args.n)
    rows: dict[str, float] = {}
    backend = args.backend if args.backend != "auto" else ("numpy" if device.type == "cpu" else "torch")
    headline = f"avgn ({device.type}, {backend} backend)"
    dm, dk = maps.to(device), masks.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def ours():
        r = evaluate_single_source(dm, dk, backend=backend)
        sync()
        return r

    if device.type != "cpu":  # warm-up: kernels, allocator
        evaluate_single_source(dm[:256], dk[:256], backend=backend)
        sync()
    t_ours, res = _timed(ours, args.repeats)
    res = type(res)(ap=res.ap.cpu(), ciou=res.ciou.cpu(), iou_threshold=res.iou_threshold)
    rows[headline] = args.n / t_ours
    if (device.type, backend) != ("cpu", "numpy"):
        cpu_n = min(args.n, 5000) if args.cpu_n is None else args.cpu_n
        if cpu_n:
            t_np, _ = _timed(lambda: evaluate_single_source(maps[:cpu_n], masks[:cpu_n]), 1)
            rows["avgn (cpu, numpy backend)"] = cpu_n / t_np
    summary = res.summary()
    t_ref, (ref_ap, ref_iou) = _timed(lambda: reference_loop(maps[: args.ref_n], masks[: args.ref_n]))
    ap_diff = float(np.abs(res.ap[: args.ref_n].numpy() - ref_ap).max())
    iou_diff = float(np.abs(res.ciou[: args.ref_n].numpy() - ref_iou).max())
    ref_auc_sub = float(np.trapezoid([np.mean(ref_iou >= t) for t in SUCCESS_THRESHOLDS], SUCCESS_THRESHOLDS))
    ours_rate, ref_rate = rows[headline], args.ref_n / t_ref
    rows["reference per-sample sklearn loop"] = ref_rate
    print(f"{'method':<36} {'samples/s':>10} {'ratio':>7}")
    for name, rate in rows.items():
        print(f"{name:<36} {rate:>10.0f} {rate / ref_rate:>6.1f}x")
    print(f"max |AP - sklearn| = {ap_diff:.2e}, max |cIoU - reference| = {iou_diff:.2e} (first {args.ref_n} samples)")
    print(f"summary over {args.n} samples: {summary}; reference AUC on its subset {ref_auc_sub:.4f}")
    print(f"headline {headline}: {ours_rate / ref_rate:.1f}x the per-sample scikit-learn loop")
    result = {
        "benchmark": "single-source protocol (AP, cIoU, AUC), 224x224, maps 7x7",
        "n": args.n,
        "ref_n": args.ref_n,
        "device": str(device),
        "precision": precision,
        "precision_reason": precision_reason,
        "headline": headline,
        "samples_per_s": rows,
        "speedup_vs_reference": ours_rate / ref_rate,
        "max_abs_diff": {"ap": ap_diff, "ciou": iou_diff},
        "environment": environment_report(str(device)),
        "host": platform.node(),
    }
    out = atomic_write_json(out_path, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
