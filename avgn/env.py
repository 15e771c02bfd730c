"""Compute device, seeding and the environment report printed at the top of every chapter."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a :class:`torch.device`.

    ``auto`` picks CUDA when it is available and the CPU otherwise. Asking for CUDA on a machine
    without it raises an error (rather than silently running on the CPU).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available here; use device='auto' or 'cpu'")
    return dev


def epoch_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (e.g. ``(seed, epoch, stream)``) via NumPy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a torch generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


#: Folders of what the code writes (executed chapters, figures, results tables, the run store): changes
#: there do not make the code revision dirty.
OUTPUT_DIRS = ("book", "figures", "results", "store")


def git_revision(root: str | Path | None = None) -> str:
    """The code revision: the last git commit that changed a tracked file outside :data:`OUTPUT_DIRS`
    (with ``-dirty`` if such a file has uncommitted changes), or ``"unknown"``. Commits of outputs
    only — executed chapters, their results and figures, the run store's records — do not move it,
    so chapters executed on the same code between two store commits carry the same revision."""
    cwd = Path(root) if root is not None else Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if top.returncode != 0:
            return "unknown"
        code = [".", *(f":!{d}" for d in OUTPUT_DIRS)]
        top_dir = top.stdout.strip() or cwd
        rev = subprocess.run(["git", "log", "-1", "--format=%h", "--", *code], cwd=top_dir, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0 or not rev.stdout.strip():
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *code],
                               cwd=top_dir, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name(fallback: str = "unknown") -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`, else ``fallback``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or fallback


#: The instruction-set flags that decide which precision and kernels are fast on a CPU.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`CPU_FLAGS` this CPU has (``/proc/cpuinfo``; all False where it is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {f: False for f in CPU_FLAGS}
    have: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            break
    return {f: f in have for f in CPU_FLAGS}


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bfloat16 matmuls run natively: CUDA devices of compute capability >= 8, CPUs with
    AVX512-BF16 or AMX-BF16. Elsewhere (AVX2-only CPUs) bf16 is emulated and tens of times slower
    than fp32 (0.27 vs 92 GFLOP/s measured on an AVX2 AMD EPYC), so profiles never ask for it there."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(dev)[0] >= 8
    f = cpu_flags()
    return f["avx512_bf16"] or f["amx_bf16"]


#: choose_precision's reason for fp32 on a CPU without native bf16 (measurements: benchmarks/README.md).
_WHY_NOT_BF16_CPU = ("this CPU has neither AVX512-BF16 nor AMX-BF16: bf16 would be emulated "
                     "(2.5x slower than fp32 on the pool's machines without it), so fp32")


def choose_precision(device: str | torch.device = "cpu", requested: str | bool = "auto") -> tuple[str, str]:
    """The precision a benchmark or a run takes on ``device``: ``("bf16" | "fp32", reason)``.

    ``requested``: ``"auto"`` (bf16 exactly where :func:`native_bf16` is true), ``"bf16"`` / ``True``
    (bf16 where it is native, else fp32: a configuration asking for bf16, e.g. the ``gpu`` profile,
    is not slowed down 2.5x on a CPU that emulates it), ``"force-bf16"`` (bf16 regardless, for
    comparisons) or ``"fp32"`` / ``False``. The reason is one sentence for the JSON output and the
    printed summary.
    """
    dev = torch.device(device)
    req = {True: "bf16", False: "fp32"}.get(requested, requested) if isinstance(requested, bool) else str(requested)
    if req not in ("auto", "bf16", "force-bf16", "fp32"):
        raise ValueError(f"precision must be auto | bf16 | force-bf16 | fp32, got {requested!r}")
    if req == "fp32":
        return "fp32", "fp32 asked for"
    native = native_bf16(dev)
    if dev.type == "cuda":
        where = "this CUDA device" + (f" (compute capability {'.'.join(map(str, torch.cuda.get_device_capability(dev)))})"
                                      if torch.cuda.is_available() else "")
        why_yes, why_no = f"{where} computes bf16 natively (tensor cores)", f"{where} has no native bf16 (compute capability < 8), so fp32"
    else:
        flags = [f for f, v in cpu_flags().items() if v and "bf16" in f]
        why_yes, why_no = f"this CPU computes bf16 natively ({', '.join(flags) or 'bf16 flags'})", _WHY_NOT_BF16_CPU
    if req == "force-bf16":
        return "bf16", "bf16 forced" + ("" if native else f" (not native here: {why_no.removesuffix(', so fp32')})")
    prefix = "" if req == "auto" else "bf16 asked for; "
    return ("bf16", prefix + why_yes) if native else ("fp32", prefix + why_no)


def environment_report(device: str = "auto") -> dict[str, str]:
    """Versions and hardware in one dict (printed by chapter 00 and ``avgn env``)."""
    import torchaudio
    import torchvision

    import avgn

    dev = resolve_device(device)
    report = {
        "avgn": f"{avgn.__version__} (git {git_revision()})",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torchaudio": torchaudio.__version__,
        "numpy": np.__version__,
        "cpu": f"{cpu_name()} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})",
        "cpu flags": ", ".join(k for k, v in cpu_flags().items() if v) or "none of " + ", ".join(CPU_FLAGS),
        "device": str(dev),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        report["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return report
