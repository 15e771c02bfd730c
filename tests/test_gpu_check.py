"""The GPU check's plumbing (``scripts/gpu_check.sh --dry-run``: every step on the CPU at tiny sizes)
and the benchmarks' CPU precision choice (bf16 only where the CPU computes it natively)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import avgn.env as env

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    """A module of ``benchmarks/`` (not a package), imported by path."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------------
# precision: bf16 only where the CPU computes it natively, and the reason said
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [True, False])
def test_choose_precision_follows_native_bf16(monkeypatch, native):
    monkeypatch.setattr(env, "native_bf16", lambda device="cpu": native)
    precision, reason = env.choose_precision("cpu")
    assert precision == ("bf16" if native else "fp32")
    assert ("natively" in reason) if native else ("2.5x slower" in reason)
    # a configuration asking for bf16 (the gpu profile) gets it only where it is native
    assert env.choose_precision("cpu", True)[0] == precision
    assert env.choose_precision("cpu", "bf16")[0] == precision
    # explicit choices win
    assert env.choose_precision("cpu", "fp32") == ("fp32", "fp32 asked for")
    assert env.choose_precision("cpu", False)[0] == "fp32"
    assert env.choose_precision("cpu", "force-bf16")[0] == "bf16"
    with pytest.raises(ValueError, match="precision must be"):
        env.choose_precision("cpu", "fp16")


@pytest.mark.parametrize("native", [True, False])
def test_benchmarks_take_the_chosen_path(monkeypatch, native):
    monkeypatch.setattr(env, "native_bf16", lambda device="cpu": native)
    models = _bench("bench_models")
    train = _bench("bench_train")
    cpu = torch.device("cpu")
    # bench_models: the bf16 variants are timed on the bf16 path only (fp32 baselines always)
    bf16 = env.choose_precision(cpu, "auto")[0] == "bf16"
    assert bf16 == native
    tv, iv = models.variant_names(models.TRAIN_VARIANTS, bf16), models.variant_names(models.INFER_VARIANTS, bf16)
    assert "fp32" in tv and "per-source fp32" in iv and "one-pass fp32" in iv
    assert any("bf16" in k for k in [*tv, *iv]) == native
    # bench_train: the profile's train.bf16 where native; an fp32 profile stays fp32
    assert train.pick_precision(cpu, True, "auto", "gpu")[0] == ("bf16" if native else "fp32")
    p, why = train.pick_precision(cpu, False, "auto", "cpu")
    assert p == "fp32" and "cpu profile trains in fp32" in why
    assert train.pick_precision(cpu, True, "fp32")[0] == "fp32"


def test_gemm_peak_leaves_out_the_dtypes_not_asked_for():
    models = _bench("bench_models")
    peak = models.gemm_peak(torch.device("cpu"), 64, repeats=1, dtypes=("fp32",))
    assert set(peak) == {"fp32", "fp32_cpu_time"}


# --------------------------------------------------------------------------------------------------
# scripts/gpu_check.sh --dry-run
# --------------------------------------------------------------------------------------------------
def test_gpu_check_dry_run_writes_the_results(tmp_path):
    """The whole script on the CPU at tiny sizes (about 45 s on one core): every JSON file with the
    keys the target check reads, a log, PASS / FAIL lines, and nothing written to benchmarks/results."""
    out, work = tmp_path / "out", tmp_path / "work"
    results = ROOT / "benchmarks" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    envv = {**os.environ, "PYTHON": sys.executable, "OUT_DIR": str(out), "WORK_DIR": str(work),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=envv,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "dry run finished" in proc.stdout
    assert sum(line.startswith(("PASS  ", "FAIL  ")) for line in proc.stdout.splitlines()) == 4  # 3 targets + all

    models = json.loads((out / "models_cpu.json").read_text())["profiles"]["gpu"]
    for key in ("precision", "precision_reason", "gemm_peak_gflops", "flops_per_sample", "train", "inference", "speedup_vs_baseline"):
        assert key in models, key
    assert models["speedup_vs_baseline"]["inference"]["baseline"] == "per-source fp32"
    assert {"fp32", "per-source fp32"} <= set(models["train"]) | set(models["inference"])

    train = json.loads((out / "train_cpu.json").read_text())
    for key in ("precision", "precision_reason", "gemm_peak_gflops", "methods", "run"):
        assert key in train, key
    run = train["run"]
    for key in ("samples_per_s", "samples_per_s_per_epoch", "flops_per_sample", "fraction_of_peak", "peak_dtype", "command"):
        assert key in run, key
    assert run["samples_per_s"] > 0 and 0 < run["fraction_of_peak"] < 1 and len(run["samples_per_s_per_epoch"]) == 2
    assert run["command"].startswith("avgn train --method avgn --profile gpu")
    assert train["methods"]["avgn"]["of_peak"]["model"]["fraction_of_peak"] > 0

    metrics = json.loads((out / "metrics_cpu.json").read_text())
    for key in ("precision", "precision_reason", "headline", "samples_per_s", "speedup_vs_reference", "max_abs_diff"):
        assert key in metrics, key
    assert metrics["max_abs_diff"]["ap"] < 1e-9  # the torch backend agrees with scikit-learn

    summary = json.loads((out / "gpu_check_cpu.json").read_text())
    assert set(summary["targets"]) == {"train_fraction_of_bf16_peak", "two_source_inference_speedup", "evaluator_speedup"}
    assert all({"value", "threshold", "pass"} <= set(t) for t in summary["targets"].values())
    assert (out / "gpu_check_cpu.log").read_text().count("---- 4/5 metric benchmark done") == 1
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before


def test_gpu_check_fails_fast_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    envv = {**os.environ, "PYTHON": sys.executable, "OUT_DIR": str(tmp_path), "WORK_DIR": str(tmp_path / "work")}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=envv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert "FAIL: no CUDA device" in proc.stdout and "--dry-run" in proc.stdout
    assert not (tmp_path / "models_cuda.json").exists()
