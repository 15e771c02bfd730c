"""Check the issue's GPU targets against the results of one device and print PASS / FAIL for each.

Reads ``models_<device>.json`` (``bench_models.py``), ``train_<device>.json`` (``bench_train.py
--run``) and ``metrics_<device>.json`` (``bench_metrics.py``) from ``--dir`` and checks:

* ``train_fraction_of_bf16_peak``: the short ``gpu``-profile training run (``avgn.train.train``, its
  last epoch) reaches >= 40 % of the measured bf16 ``torch.mm`` peak (model FLOPs per sample x
  samples/s / peak);
* ``two_source_inference_speedup``: the fastest one-pass two-source inference is >= 4x the public
  per-source fp32 baseline (``bench_models.py``, ``gpu`` profile entry);
* ``evaluator_speedup``: the evaluator (torch backend on the GPU) is >= 100x the per-sample
  scikit-learn loop (``bench_metrics.py``).

Also printed, not checked: the training run's samples/s, the model-only training step's fraction of
the peak (``bench_train.py``'s ``model`` rate: tells a compute-bound run from an input-bound one),
and the precision path each benchmark took. Writes ``gpu_check_<device>.json`` (``--out``).
Exit status: 0, or 1 with ``--strict`` when a target fails; 2 when a result file or field is missing.

    python benchmarks/check_targets.py --dir benchmarks/results --device cuda [--strict] [--key gpu]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: name -> (threshold, what), all ">=".
TARGETS: dict[str, tuple[float, str]] = {
    "train_fraction_of_bf16_peak": (0.40, "gpu-profile training run reaches >= 40 % of the measured bf16 matmul peak"),
    "two_source_inference_speedup": (4.0, "two-source inference >= 4x the per-source fp32 baseline"),
    "evaluator_speedup": (100.0, "evaluator >= 100x the per-sample scikit-learn loop"),
}


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"missing result file {path}")
    return json.loads(path.read_text())


def measure(results: Path, device: str, key: str = "gpu") -> dict[str, Any]:
    """The measured values of every target and the context printed next to them."""
    models = _load(results / f"models_{device}.json")
    train = _load(results / f"train_{device}.json")
    metrics = _load(results / f"metrics_{device}.json")
    try:
        prof = models["profiles"][key]
        inf = prof["speedup_vs_baseline"]["inference"]
        run = train["run"]
    except KeyError as exc:
        raise KeyError(f"result field {exc} missing (models_{device}.json profiles.{key}.speedup_vs_baseline.inference, "
                       f"train_{device}.json run)") from None
    model_step = train.get("methods", {}).get(run["method"], {}).get("of_peak", {}).get("model", {})
    return {
        "values": {
            "train_fraction_of_bf16_peak": run["fraction_of_peak"] if run["peak_dtype"] == "bf16" else 0.0,
            "two_source_inference_speedup": inf["ratio"],
            "evaluator_speedup": metrics["speedup_vs_reference"],
        },
        "context": {
            "train_samples_per_s": run["samples_per_s"],
            "train_samples_per_s_per_epoch": run["samples_per_s_per_epoch"],
            "train_flops_per_sample": run["flops_per_sample"],
            "train_peak_dtype": run["peak_dtype"],
            "gemm_peak_gflops": train["gemm_peak_gflops"],
            "train_model_step_fraction_of_peak": model_step.get("fraction_of_peak"),
            "inference_variant": inf["variant"],
            "inference_samples_per_s": inf["samples_per_s"],
            "inference_baseline_samples_per_s": inf["baseline_samples_per_s"],
            "evaluator": metrics.get("headline"),
            "evaluator_samples_per_s": metrics["samples_per_s"],
            "precision": {
                "bench_models": [prof.get("precision"), prof.get("precision_reason")],
                "bench_train": [train.get("precision"), train.get("precision_reason")],
                "bench_metrics": [metrics.get("precision"), metrics.get("precision_reason")],
            },
            "device_name": prof.get("device_name"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="benchmarks/results", help="folder of the result files")
    ap.add_argument("--device", default="cuda", help="the <device> of the file names (cuda, cpu)")
    ap.add_argument("--key", default="gpu", help="entry of models_<device>.json's profiles")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    ap.add_argument("--out", default=None, help="summary JSON (default <dir>/gpu_check_<device>.json)")
    args = ap.parse_args(argv)
    results = Path(args.dir)
    try:
        m = measure(results, args.device, args.key)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"FAIL  results incomplete: {exc}", flush=True)
        return 2
    ctx = m["context"]
    print(f"targets on {ctx['device_name']} ({args.device}):")
    checks = {}
    for name, (threshold, what) in TARGETS.items():
        value = float(m["values"][name])
        ok = value >= threshold
        checks[name] = {"value": value, "threshold": threshold, "pass": ok, "what": what}
        shown = f"{value:.1%}" if name.startswith("train_fraction") else f"{value:.2f}x"
        need = f"{threshold:.0%}" if name.startswith("train_fraction") else f"{threshold:g}x"
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {shown} (needs >= {need})")
    ms = ctx["train_model_step_fraction_of_peak"]
    print(f"      training run {ctx['train_samples_per_s']:.1f} samples/s (per epoch {', '.join(f'{x:.1f}' for x in ctx['train_samples_per_s_per_epoch'])}), "
          f"{ctx['train_flops_per_sample'] / 1e9:.2f} GFLOP/sample, {ctx['train_peak_dtype']} peak "
          f"{ctx['gemm_peak_gflops'].get(ctx['train_peak_dtype'], float('nan')):.0f} GFLOP/s"
          + (f"; the model step alone (batches rendered beforehand) {ms:.1%} of it" if ms is not None else ""))
    print(f"      inference: {ctx['inference_variant']} {ctx['inference_samples_per_s']:.1f}/s vs per-source fp32 {ctx['inference_baseline_samples_per_s']:.1f}/s")
    print(f"      evaluator: {ctx['evaluator']}; samples/s {', '.join(f'{k} {v:.0f}' for k, v in ctx['evaluator_samples_per_s'].items())}")
    for bench, (p, why) in ctx["precision"].items():
        print(f"      precision {bench}: {p} ({why})")
    all_pass = all(c["pass"] for c in checks.values())
    print(f"{'PASS' if all_pass else 'FAIL'}  all targets" + ("" if all_pass else f": {', '.join(k for k, c in checks.items() if not c['pass'])} failed"))
    out = Path(args.out) if args.out else results / f"gpu_check_{args.device}.json"
    summary = {"device": args.device, "targets": checks, "all_pass": all_pass, "context": ctx,
               "files": [f"{k}_{args.device}.json" for k in ("models", "train", "metrics")]}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from avgn.io import atomic_write_json

    atomic_write_json(out, summary)
    print(f"wrote {out}")
    return 1 if args.strict and not all_pass else 0


if __name__ == "__main__":
    raise SystemExit(main())
