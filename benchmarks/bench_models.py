"""Benchmark: AVGN training / inference throughput, FLOPs per sample and fraction of the GEMM peak.

What it measures (one process, variants interleaved round-robin so that a load change on a shared
machine hits them alike; every rate is the best of ``--repeats`` rounds, the median is kept too):

* the machine's matmul peak: GFLOP/s of a large ``torch.mm`` in fp32 and in bf16;
* training samples/s (forward + :func:`avgn.losses.avgn_total_loss` + backward + Adam step) for
  ``fp32`` (channels-first, ``torch.optim.Adam`` defaults: the public implementation's set-up),
  ``bf16`` (autocast), ``bf16+cl`` (autocast + channels-last model and inputs) and ``bf16+cl+fused``
  (the same with ``Adam(fused=True)``);
* two-source inference samples/s: ``per-source fp32`` (one full forward per source, keep that
  source's map: the public implementation) against the one-pass all-class forward
  (:meth:`AVGN.localize` + :func:`select_sources`) in fp32 and in bf16 + channels-last;
* model FLOPs per sample (:class:`torch.utils.flop_counter.FlopCounterMode`; training = forward +
  loss + backward) and the achieved GFLOP/s as a fraction of the measured GEMM peak of the same
  dtype;
* (``--check``, on by default) that bf16 does not change the metrics: pixel AP / rank agreement of
  bf16 vs fp32 maps on random inputs (:func:`avgn.metrics.pixel_average_precision`) and a short
  training run's loss trajectory, fp32 vs bf16 + channels-last from the same initialisation and
  batch, next to a control (fp32 from the bf16-rounded initial weights).

On the CPU every timing also records the process CPU time: ``cpu-time samples/s = batch x threads /
CPU seconds`` is the rate with the cores to ourselves, which is what to read on a shared, loaded
machine (with ``--omp-passive`` idle OpenMP threads sleep instead of spinning, so CPU time is work;
with ``--threads 1`` it is the per-core rate). Ratios between variants are measured back to back in
the same process.

Precision (``--precision auto``, the default): the bf16 variants are timed only where the device
computes bf16 natively (:func:`avgn.env.choose_precision`: CUDA of compute capability >= 8, CPUs with
AVX512-BF16 or AMX-BF16; on the pool's CPUs without it bf16 autocast is 2.5x slower than fp32), and
the JSON output and the printed summary say which path was taken and why (``precision``,
``precision_reason``). ``--precision force-bf16`` or ``--all-variants`` time them anyway.

Profiles: ``paper`` (default: C=37, D=512, depth 3, 8 heads, ``audio_grouping='spatial'``, trainable
ResNet-18 on 224x224 frames, a 1x257x300 spectrogram) or ``smoke`` / ``cpu`` / ``gpu`` (model,
spectrogram and cached-feature settings from :func:`avgn.experiment.get_experiment`, C=37; falls back
to ``paper`` if that module is missing). Runs on the GPU when one is available (``--device auto``),
with ``torch.cuda.synchronize()`` inside every timing.

    python benchmarks/bench_models.py [--profile paper|smoke|cpu|gpu] [--device auto|cpu|cuda]
        [--batch 16] [--infer-batch 16] [--steps 1] [--repeats 4] [--threads N] [--omp-passive]
        [--no-check] [--compile] [--skip-train] [--skip-infer] [--precision auto|bf16|force-bf16|fp32]
        [--all-variants] [--set KEY=VALUE ...] [--image-size 224] [--out benchmarks/results/models_<device>.json]

Results are merged into the JSON file under ``profiles.<profile>`` (atomic write).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

if "--omp-passive" in sys.argv:  # must be set before the OpenMP runtime loads (import torch)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avgn.methods.avgn import avgn_total_loss  # noqa: E402
from avgn.config import PROFILE_NAMES  # noqa: E402
from avgn.env import cpu_name as env_cpu_name  # noqa: E402
from avgn.io import config_to_dict  # noqa: E402
from avgn.methods.avgn import AVGN, AVGNConfig  # noqa: E402
from avgn.models.config import EncoderConfig  # noqa: E402
from avgn.models.selection import select_sources  # noqa: E402
from avgn.models.encoders import BACKBONE_CHANNELS  # noqa: E402

NUM_CLASSES = 37
NUM_SOURCES = 2
#: Targets of the project's issue (paper config, 2-core CPU): samples/s.
TARGETS = {"train_samples_per_s": 6.8, "infer_two_source_samples_per_s": 22.0}
PUBLIC_REFERENCE = {"train_samples_per_s": 3.4, "infer_two_source_samples_per_s": 5.5}


# --------------------------------------------------------------------------------------------------
# set-up
# --------------------------------------------------------------------------------------------------
def build_setup(profile: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model config and input shapes: a run profile of :data:`avgn.config.PROFILES` (its AVGN
    experiment, with the dotted ``overrides`` of ``--set``), or ``paper`` — not a run profile but
    the paper's model configuration (:meth:`AVGNConfig.paper`, the paper's input shapes),
    benchmarked for throughput only. Returns ``{cfg, spec_shape, cached, note}``."""
    if profile != "paper":
        from avgn.experiment import get_experiment

        exp = get_experiment("avgn", profile, **dict(overrides or {}))
        cfg = replace(exp.model, num_classes=NUM_CLASSES)
        return {
            "cfg": cfg,
            "spec_shape": tuple(exp.inputs.spec.shape),
            "cached": bool(exp.inputs.cached_features),
            "note": f"avgn.experiment.get_experiment('avgn', {profile!r}{''.join(f', {k}={v!r}' for k, v in (overrides or {}).items())})"
                    f".model with num_classes={NUM_CLASSES}",
            "profile_used": profile,
            "train_defaults": {"bf16": exp.train.bf16, "channels_last": exp.train.channels_last, "batch_size": exp.train.batch_size},
        }
    cfg = AVGNConfig.paper(num_classes=NUM_CLASSES, encoder=EncoderConfig(visual_backbone="resnet18"))
    return {
        "cfg": cfg,
        "spec_shape": (1, 257, 300),
        "cached": False,
        "note": "AVGNConfig.paper(): C=37, D=512, depth 3, trainable ResNet-18 (random init), 224x224, spec 1x257x300",
        "profile_used": "paper",
    }


def variant_names(variants: dict[str, Any], bf16: bool) -> dict[str, Any]:
    """The variants to time: all of them on the bf16 path, the fp32 ones alone otherwise."""
    return {k: v for k, v in variants.items() if bf16 or "bf16" not in k}


def make_batch(setup: dict[str, Any], bsz: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of one batch; two different sounding classes per sample."""
    gen = torch.Generator().manual_seed(seed)
    cfg = setup["cfg"]
    batch: dict[str, torch.Tensor] = {"spec": torch.randn(bsz, *setup["spec_shape"], generator=gen)}
    if setup["cached"]:
        ch = BACKBONE_CHANNELS[(cfg.encoder.visual_backbone, cfg.encoder.efficientnet_features)]
        batch["visual_feats"] = torch.relu(torch.randn(bsz, ch, 7, 7, generator=gen))
    else:
        size = setup.get("image_size", 224)
        batch["image"] = torch.rand(bsz, 3, size, size, generator=gen)
    first = torch.randint(0, NUM_CLASSES, (bsz,), generator=gen)
    second = (first + torch.randint(1, NUM_CLASSES, (bsz,), generator=gen)) % NUM_CLASSES
    classes = torch.stack([first, second], 1)
    labels = torch.zeros(bsz, NUM_CLASSES).scatter_(1, classes, 1.0)
    batch.update(labels=labels, source_classes=classes, source_mask=torch.ones(bsz, NUM_SOURCES, dtype=torch.bool))
    return {k: v.to(device) for k, v in batch.items()}


def model_kwargs(batch: dict[str, torch.Tensor], channels_last: bool) -> dict[str, torch.Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    kw = {"spec": batch["spec"].contiguous(memory_format=fmt)}
    for key in ("image", "visual_feats"):
        if key in batch:
            kw[key] = batch[key].contiguous(memory_format=fmt)
    return kw


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def timed2(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of ``fn()``."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def rates(bsz: int, per_call: list[tuple[float, float]], threads: int, device: torch.device) -> dict[str, Any]:
    """Samples/s from per-call ``(wall, cpu)`` times: best and median wall-clock rate and, on the CPU,
    the CPU-time rate ``bsz * threads / cpu_s`` (what the wall rate would be with ``threads`` cores
    to ourselves: robust to other processes on a shared machine)."""
    wall = [w for w, _ in per_call]
    out: dict[str, Any] = {
        "samples_per_s": bsz / min(wall),
        "samples_per_s_median": bsz / statistics.median(wall),
        "wall_s": [round(w, 4) for w in wall],
    }
    if device.type == "cpu":
        cpu = [c for _, c in per_call]
        out["samples_per_s_cpu_time"] = bsz * threads / min(cpu)
        out["samples_per_core_s"] = bsz / min(cpu)
        out["cpu_s"] = [round(c, 4) for c in cpu]
    return out


def cpu_name() -> str:
    """The CPU's model name (:func:`avgn.env.cpu_name`), else the machine type."""
    return env_cpu_name(platform.machine())


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------
# GEMM peak
# --------------------------------------------------------------------------------------------------
def gemm_peak(device: torch.device, n: int, repeats: int, dtypes: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, float]:
    """Best GFLOP/s of ``torch.mm`` on ``n x n`` matrices in ``dtypes`` (fp32 with TF32 off, bf16; on
    the CPU also the CPU-time based rate). Leave bf16 out where it is emulated: 2048^3 takes a minute
    at the 0.27 GFLOP/s of an AVX2-only CPU."""
    out = {}
    old_tf32 = torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if name not in dtypes:
                continue
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            inner = 20 if device.type == "cuda" else 1
            fn = lambda: [torch.mm(a, b) for _ in range(inner)]  # noqa: E731
            fn()
            per = [timed2(fn, device) for _ in range(repeats)]
            out[name] = 2 * n**3 * inner / min(w for w, _ in per) / 1e9
            if device.type == "cpu":  # CPU-time based: the peak with all our threads' cores to ourselves
                out[f"{name}_cpu_time"] = 2 * n**3 * inner * torch.get_num_threads() / min(c for _, c in per) / 1e9
    finally:
        if old_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = old_tf32
    return out


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------
def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape=None, **_: Any) -> int:
    """``torch.utils.flop_counter``'s convolution-backward formula with ``groups`` taken into account
    for the weight gradient (torch 2.11 counts a depthwise conv's weight gradient ``groups`` times)."""
    from torch.utils.flop_counter import conv_flop_count

    def t(shape: Any) -> list[int]:
        return [shape[1], shape[0]] + list(shape[2:])

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        a, b = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        flops += conv_flop_count(t(a), t(b), t(out_shape[1]), transposed=False) // groups
    return flops


def count_flops(model: AVGN, batch: dict[str, torch.Tensor], train: bool) -> float:
    """FLOPs per sample of a forward (+ loss + backward when ``train``), fp32."""
    model = copy.deepcopy(model).float().train(train)
    bsz = batch["spec"].shape[0]
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    with counter:
        if train:
            out = model(**model_kwargs(batch, False))
            loss, _ = avgn_total_loss(out, batch, model.cfg)
            loss.backward()
        else:  # (grad mode on: FlopCounterMode's module tracker trips over no_grad here; same FLOPs)
            out = model(**model_kwargs(batch, False))
            model.localize(out)
    return counter.get_total_flops() / bsz


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
TRAIN_VARIANTS = {
    # name: (bf16 autocast, channels-last, fused Adam)
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "bf16+cl": (True, True, False),
    "bf16+cl+fused": (True, True, True),
}


class Trainer:
    def __init__(self, base: AVGN, batch: dict[str, torch.Tensor], bf16: bool, channels_last: bool, fused: bool, device: torch.device, compile_model: bool = False):
        self.model = copy.deepcopy(base).to(device).train()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        kw: dict[str, Any] = {"fused": True} if fused else {}
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-4, **kw)
        self.batch = batch
        self.inputs = model_kwargs(batch, channels_last)
        self.bf16, self.device = bf16, device
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.losses: list[float] = []

    def step(self) -> torch.Tensor:
        with autocast(self.device, self.bf16):
            out = self.forward(**self.inputs)
            loss, _ = avgn_total_loss(out, self.batch, self.model.cfg)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step()


def bench_training(base: AVGN, setup: dict[str, Any], args: argparse.Namespace, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    batch = make_batch(setup, args.batch, device, seed=1)
    variants = variant_names(TRAIN_VARIANTS, args.bf16_variants)
    if args.compile and args.bf16_variants:
        variants["bf16+cl+fused+compile"] = (True, True, True)
    trainers = {}
    for name, (bf16, cl, fused) in variants.items():
        t0 = time.perf_counter()
        tr = Trainer(base, batch, bf16, cl, fused, device, compile_model=name.endswith("compile"))
        for _ in range(args.warmup):
            tr.step()
        sync(device)
        trainers[name] = tr
        log(f"  train warm-up {name}: {time.perf_counter() - t0:.1f}s")
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in trainers}
    for r in range(args.repeats):
        for name, tr in trainers.items():
            w, c = timed2(lambda: tr.steps(args.steps), device)
            times[name].append((w / args.steps, c / args.steps))
        log(f"  train round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {args.batch / v[-1][0]:.2f}/s" for k, v in times.items()) + f" (load {load_average()})")
    del trainers
    return {name: rates(args.batch, ts, torch.get_num_threads(), device) for name, ts in times.items()}


# --------------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------------
def one_pass(model: AVGN, inputs: dict[str, torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
    """All classes in one forward; pick each sample's sources (what the evaluator does)."""
    out = model(**inputs)
    maps = model.localize(out)
    return select_sources(maps, "oracle", gt_classes=classes)[0]


def per_source(model: AVGN, inputs: dict[str, torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
    """The public implementation: one full forward per source, keep that source's map."""
    rows = torch.arange(classes.shape[0], device=classes.device)
    maps = []
    for s in range(classes.shape[1]):
        out = model(**inputs)
        maps.append(model.localize(out)[rows, classes[:, s]])
    return torch.stack(maps, 1)


INFER_VARIANTS = {
    # name: (fn, bf16, channels-last)
    "per-source fp32": (per_source, False, False),
    "one-pass fp32": (one_pass, False, False),
    "one-pass bf16+cl": (one_pass, True, True),
}


def bench_inference(base: AVGN, setup: dict[str, Any], args: argparse.Namespace, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    batch = make_batch(setup, args.infer_batch, device, seed=2)
    classes = batch["source_classes"]
    variants = variant_names(INFER_VARIANTS, args.bf16_variants)
    if args.compile and args.bf16_variants:
        variants["one-pass bf16+cl+compile"] = (one_pass, True, True)
    runners = {}
    for name, (fn, bf16, cl) in variants.items():
        model = copy.deepcopy(base).to(device).eval()
        if cl:
            model = model.to(memory_format=torch.channels_last)
        fwd = torch.compile(model) if name.endswith("compile") else model
        inputs = model_kwargs(batch, cl)

        def run(fn=fn, model=model, fwd=fwd, inputs=inputs, bf16=bf16):
            with torch.inference_mode(), autocast(device, bf16):
                if fwd is model:
                    return fn(model, inputs, classes)
                out = fwd(**inputs)
                return select_sources(model.localize(out), "oracle", gt_classes=classes)[0]

        t0 = time.perf_counter()
        for _ in range(args.warmup):
            run()
        sync(device)
        log(f"  inference warm-up {name}: {time.perf_counter() - t0:.1f}s")
        runners[name] = run
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runners}
    for r in range(args.repeats):
        for name, run in runners.items():
            w, c = timed2(lambda: [run() for _ in range(args.steps)], device)
            times[name].append((w / args.steps, c / args.steps))
        log(f"  inference round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {args.infer_batch / v[-1][0]:.2f}/s" for k, v in times.items()) + f" (load {load_average()})")
    return {name: rates(args.infer_batch, ts, torch.get_num_threads(), device) for name, ts in times.items()}


# --------------------------------------------------------------------------------------------------
# bf16 does not change the metrics
# --------------------------------------------------------------------------------------------------
def random_box_masks(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    wh = 0.15 + 0.5 * torch.rand(n, 2, generator=gen)
    xy = (1 - wh) * torch.rand(n, 2, generator=gen)
    grid = (torch.arange(size) + 0.5) / size
    inx = (grid[None] >= xy[:, :1]) & (grid[None] <= xy[:, :1] + wh[:, :1])
    iny = (grid[None] >= xy[:, 1:]) & (grid[None] <= xy[:, 1:] + wh[:, 1:])
    return iny[:, :, None] & inx[:, None, :]


def check_bf16(base: AVGN, setup: dict[str, Any], args: argparse.Namespace, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    from avgn.metrics import pixel_average_precision

    res: dict[str, Any] = {}
    # --- maps: AP of every class map of random inputs against random boxes ------------------------
    batch = make_batch(setup, args.infer_batch, device, seed=3)
    maps = {}
    for name, bf16, cl in (("fp32", False, False), ("bf16+cl", True, True)):
        model = copy.deepcopy(base).to(device).eval()
        if cl:
            model = model.to(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, bf16):
            maps[name] = model.localize(model(**model_kwargs(batch, cl))).float().cpu()
    m32, m16 = maps["fp32"], maps["bf16+cl"]
    n = m32.shape[0] * m32.shape[1]
    up = lambda m: F.interpolate(m.reshape(n, 1, *m.shape[2:]), size=(224, 224), mode="bilinear", align_corners=False)[:, 0]  # noqa: E731
    masks = random_box_masks(n, 224, torch.Generator().manual_seed(4))
    ap32 = pixel_average_precision(up(m32), masks)
    ap16 = pixel_average_precision(up(m16), masks)
    flat32, flat16 = m32.reshape(n, -1), m16.reshape(n, -1)
    rank32 = flat32.argsort(1).argsort(1).double()
    rank16 = flat16.argsort(1).argsort(1).double()
    spearman = torch.stack([torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(rank32, rank16)])
    res["maps"] = {
        "n_maps": n,
        "max_abs_map_diff": float((m32 - m16).abs().max()),
        "mean_ap_fp32": float(ap32.mean()),
        "mean_ap_bf16": float(ap16.mean()),
        "mean_abs_ap_diff": float((ap32 - ap16).abs().mean()),
        "max_abs_ap_diff": float((ap32 - ap16).abs().max()),
        "min_spearman": float(spearman.min()),
        "mean_spearman": float(spearman.mean()),
        "same_argmax_fraction": float((flat32.argmax(1) == flat16.argmax(1)).float().mean()),
    }
    log(f"  maps bf16+cl vs fp32: {res['maps']}")
    # --- a short training run from the same initialisation and batches ----------------------------
    # At random initialisation the gradients of a BatchNorm ResNet are very sensitive to tiny
    # perturbations (rounding the fp32 weights to bf16 alone moves them noticeably), and Adam's first
    # steps are close to sign(g): so the trajectories are compared with a control, fp32 started from
    # the bf16-rounded initial weights, i.e. a perturbation of the size bf16 brings.
    batches = [make_batch(setup, args.check_batch or args.batch, device, seed=100 + i) for i in range(args.check_batches)]
    rounded = copy.deepcopy(base)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.bfloat16().float())
    runs = {
        "fp32": (base, TRAIN_VARIANTS["fp32"]),
        "fp32 (bf16-rounded init)": (rounded, TRAIN_VARIANTS["fp32"]),
        "bf16+cl+fused": (base, TRAIN_VARIANTS["bf16+cl+fused"]),
    }
    traj: dict[str, list[float]] = {}
    for name, (init, (bf16, cl, fused)) in runs.items():
        tr = Trainer(init, batches[0], bf16, cl, fused, device)
        tr.opt.param_groups[0]["lr"] = args.check_lr
        losses = []
        for i in range(args.check_steps):
            b = batches[i % len(batches)]
            tr.batch, tr.inputs = b, model_kwargs(b, cl)
            losses.append(float(tr.step()))
        traj[name] = losses
        log(f"  loss {name:<26}: " + " ".join(f"{x:.3f}" for x in losses))
        del tr
    ref = traj["fp32"]

    def dev(other: list[float]) -> dict[str, float]:
        return {
            "max_abs_diff": max(abs(a - b) for a, b in zip(ref, other)),
            "max_rel_diff": max(abs(a - b) / abs(a) for a, b in zip(ref, other)),
            "final_rel_diff": abs(ref[-1] - other[-1]) / abs(ref[-1]),
            "mean_rel_diff": statistics.fmean(abs(a - b) / abs(a) for a, b in zip(ref, other)),
        }

    res["loss_trajectory"] = {
        "lr": args.check_lr,
        "batches": args.check_batches,
        "batch_size": args.check_batch or args.batch,
        "losses": traj,
        "bf16_vs_fp32": dev(traj["bf16+cl+fused"]),
        "control_vs_fp32": dev(traj["fp32 (bf16-rounded init)"]),
        "first_step_rel_diff": abs(ref[0] - traj["bf16+cl+fused"][0]) / abs(ref[0]),
    }
    return res


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def write_json(path: Path, profile: str, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
    data.setdefault("profiles", {})[profile] = result
    data["benchmark"] = "AVGN training / inference throughput (benchmarks/bench_models.py)"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".models_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fmt_rows(title: str, rows: dict[str, Any], base_name: str, cpu: bool) -> None:
    head = f"{title:<30} {'samples/s':>9} {'median':>7} {'vs base':>8} {'GFLOP/s':>8} {'of peak':>8}"
    if cpu:
        head += f" | {'cpu-time samples/s':>18} {'vs base':>8} {'of peak':>8}"
    print(head)
    base, base_c = rows[base_name]["samples_per_s"], rows[base_name].get("samples_per_s_cpu_time")
    for name, r in rows.items():
        line = (f"{name:<30} {r['samples_per_s']:>9.2f} {r['samples_per_s_median']:>7.2f} {r['samples_per_s'] / base:>7.2f}x"
                f" {r['gflops']:>8.1f} {r['fraction_of_peak']:>8.1%}")
        if cpu:
            line += f" | {r['samples_per_s_cpu_time']:>18.2f} {r['samples_per_s_cpu_time'] / base_c:>7.2f}x {r['fraction_of_peak_cpu_time']:>8.1%}"
        print(line)


def print_table(res: dict[str, Any]) -> None:
    peak = res["gemm_peak_gflops"]
    cpu = res["device"] == "cpu"
    print()
    print(f"profile {res['profile']} on {res['device_name']} ({res['threads']} threads), torch {res['torch']}, "
          f"load average before/after {res['load_before']} / {res['load_after']}")
    print(f"precision: {res['precision']} ({res['precision_reason']})")
    line = f"GEMM peak (torch.mm {res['gemm_n']}^3): " + ", ".join(f"{k} {peak[k]:.0f} GFLOP/s" for k in ("fp32", "bf16") if k in peak)
    if cpu:
        line += "; CPU-time based: " + ", ".join(f"{k} {peak[k + '_cpu_time']:.0f}" for k in ("fp32", "bf16") if k in peak)
    print(line)
    fl = res["flops_per_sample"]
    print(f"FLOPs/sample: forward {fl['forward'] / 1e9:.2f} G, training step (fwd + loss + bwd) {fl['train'] / 1e9:.2f} G")
    if cpu:
        print("(cpu-time samples/s = batch x threads / process CPU seconds: the rate with the cores to ourselves)")
    print()
    if "train" in res:
        _fmt_rows(f"training (batch {res['batch']})", res["train"], "fp32", cpu)
        print()
    if "inference" in res:
        _fmt_rows(f"2-source inference (batch {res['infer_batch']})", res["inference"], "per-source fp32", cpu)
        print()
    for block, sp in res.get("speedup_vs_baseline", {}).items():
        print(f"{block}: fastest {sp['variant']} {sp['samples_per_s']:.2f}/s = {sp['ratio']:.2f}x {sp['baseline']} "
              f"({sp['fraction_of_peak']:.1%} of the GEMM peak of its dtype; precision path {res['precision']})")
    for k, t in res.get("targets", {}).items():
        print(f"target {k} >= {t['target']}: wall {t['best']:.2f}/s ({t['variant']}) -> {'MET' if t['met'] else 'NOT met'}"
              + (f"; cpu-time {t['best_cpu_time']:.2f}/s -> {'MET' if t['met_cpu_time'] else 'NOT met'}" if "best_cpu_time" in t else "")
              + f"; ratio vs in-process baseline {t['ratio_vs_baseline']:.2f}x wall"
              + (f", {t['ratio_vs_baseline_cpu_time']:.2f}x cpu-time" if "ratio_vs_baseline_cpu_time" in t else "")
              + f" (the issue's numbers need {t['needed_ratio']:.2f}x)"
              + (f"; per core {t['per_core']:.2f}/s -> {t['cores']} cores at perfect scaling {t['projected_all_cores']:.2f}/s" if "per_core" in t else ""))
    if "check" in res:
        c = res["check"]
        m = c["maps"]
        print(f"bf16+cl vs fp32 maps ({m['n_maps']} maps): mean |AP diff| {m['mean_abs_ap_diff']:.4f} (max {m['max_abs_ap_diff']:.4f}; "
              f"mean AP {m['mean_ap_fp32']:.4f} vs {m['mean_ap_bf16']:.4f}), Spearman mean {m['mean_spearman']:.4f} / min {m['min_spearman']:.4f}, "
              f"same argmax {m['same_argmax_fraction']:.1%}")
        lt = c["loss_trajectory"]
        print(f"loss trajectory ({len(lt['losses']['fp32'])} Adam steps, lr {lt['lr']:g}): first loss rel diff {lt['first_step_rel_diff']:.2e}; "
              f"bf16+cl+fused vs fp32 mean / max / final rel diff {lt['bf16_vs_fp32']['mean_rel_diff']:.2%} / {lt['bf16_vs_fp32']['max_rel_diff']:.2%} / "
              f"{lt['bf16_vs_fp32']['final_rel_diff']:.2%}; control (fp32 from bf16-rounded init) {lt['control_vs_fp32']['mean_rel_diff']:.2%} / "
              f"{lt['control_vs_fp32']['max_rel_diff']:.2%} / {lt['control_vs_fp32']['final_rel_diff']:.2%}")
        for name, ls in lt["losses"].items():
            print(f"  {name:<26} " + " ".join(f"{x:.3f}" for x in ls))


def _speedup(rows: dict[str, Any], base: str) -> dict[str, Any]:
    """The fastest timed variant (wall clock) against the in-process public baseline ``base``."""
    best = max(rows, key=lambda k: rows[k]["samples_per_s"])
    return {"variant": best, "baseline": base, "samples_per_s": rows[best]["samples_per_s"],
            "baseline_samples_per_s": rows[base]["samples_per_s"], "ratio": rows[best]["samples_per_s"] / rows[base]["samples_per_s"],
            "fraction_of_peak": rows[best]["fraction_of_peak"]}


def _target(rows: dict[str, Any], base: str, key: str, cpu: bool) -> dict[str, Any]:
    best = max(rows, key=lambda k: rows[k]["samples_per_s"])
    t: dict[str, Any] = {
        "target": TARGETS[key],
        "variant": best,
        "best": rows[best]["samples_per_s"],
        "met": rows[best]["samples_per_s"] >= TARGETS[key],
        "ratio_vs_baseline": rows[best]["samples_per_s"] / rows[base]["samples_per_s"],
        "needed_ratio": TARGETS[key] / PUBLIC_REFERENCE[key],
        "public_reference": PUBLIC_REFERENCE[key],
    }
    if cpu:
        bc = max(rows, key=lambda k: rows[k]["samples_per_s_cpu_time"])
        cores = os.cpu_count() or 1
        t.update(
            variant_cpu_time=bc,
            best_cpu_time=rows[bc]["samples_per_s_cpu_time"],
            met_cpu_time=rows[bc]["samples_per_s_cpu_time"] >= TARGETS[key],
            ratio_vs_baseline_cpu_time=rows[bc]["samples_per_s_cpu_time"] / rows[base]["samples_per_s_cpu_time"],
            per_core=rows[bc]["samples_per_core_s"],
            cores=cores,
            projected_all_cores=rows[bc]["samples_per_core_s"] * cores,
        )
    return t


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="paper", choices=["paper", *PROFILE_NAMES],
                   help="a run profile of avgn.config.PROFILES, or 'paper' (the paper's model configuration; throughput only)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: 16 on CPU, 64 on CUDA)")
    p.add_argument("--infer-batch", type=int, default=None, help="inference batch (default: 16 on CPU, 128 on CUDA)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed round (default: 1 on CPU, 10 on CUDA)")
    p.add_argument("--repeats", type=int, default=4, help="timed rounds per variant (best and median kept)")
    p.add_argument("--omp-passive", action="store_true",
                   help="OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, so that CPU time "
                        "measures work on a shared, loaded machine (use with --threads 1 for per-core rates)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave)")
    p.add_argument("--gemm-n", type=int, default=None, help="GEMM size for the peak (default 2048 CPU, 8192 CUDA)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the bf16-vs-fp32 metric checks")
    p.add_argument("--check-steps", type=int, default=8, help="Adam steps of the loss-trajectory check")
    p.add_argument("--check-batches", type=int, default=1, help="distinct batches cycled in the trajectory check")
    p.add_argument("--check-batch", type=int, default=8, help="batch size of the trajectory check")
    p.add_argument("--check-lr", type=float, default=1e-4, help="Adam learning rate of the check (paper: 1e-4)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-infer", action="store_true")
    p.add_argument("--audio-grouping", choices=["spatial", "global"], default=None,
                   help="override the model's audio grouping ('global' = the released code: 12.4 GFLOP forward "
                        "at the paper config instead of 14.4)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "force-bf16", "fp32"],
                   help="auto: time the bf16 variants only where the device computes bf16 natively "
                        "(avgn.env.choose_precision); force-bf16: time them anyway; fp32: never")
    p.add_argument("--all-variants", action="store_true",
                   help="time the bf16 variants whatever the chosen precision (comparisons); the chosen path is still recorded")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the run profile's experiment (not with --profile paper), e.g. "
                        "--set model.dim=64 (repeatable; small sizes for a CPU dry run)")
    p.add_argument("--image-size", type=int, default=224, help="side of the random frames (224 = the paper's)")
    p.add_argument("--out", default=None)
    p.add_argument("--key", default=None, help="entry of the JSON file's 'profiles' (default: the profile, "
                   "+ '-threadsN' with --threads, + '-passive' with --omp-passive)")
    args = p.parse_args(argv)

    from avgn.cli import _parse_sets
    from avgn.env import choose_precision, git_revision, resolve_device

    device = resolve_device(args.device)
    precision, precision_reason = choose_precision(device, args.precision)
    args.bf16_variants = precision == "bf16" or args.all_variants
    cuda = device.type == "cuda"
    args.batch = args.batch or (64 if cuda else 16)
    args.infer_batch = args.infer_batch or (128 if cuda else 16)
    args.steps = args.steps or (10 if cuda else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_path = Path(args.out or f"benchmarks/results/models_{device.type}.json")
    log = lambda s: print(s, flush=True)  # noqa: E731

    overrides = _parse_sets(args.set)
    if overrides and args.profile == "paper":
        raise SystemExit("--set applies to a run profile (smoke | cpu | gpu), not to --profile paper")
    setup = build_setup(args.profile, overrides)
    setup["image_size"] = args.image_size
    if args.audio_grouping:
        setup["cfg"] = replace(setup["cfg"], audio_grouping=args.audio_grouping)
        setup["note"] += f"; audio_grouping={args.audio_grouping!r}"
    torch.manual_seed(0)
    base = AVGN(setup["cfg"])
    res: dict[str, Any] = {
        "profile": args.profile,
        "profile_used": setup["profile_used"],
        "config_note": setup["note"],
        "model_config": config_to_dict(setup["cfg"]),
        "spec_shape": list(setup["spec_shape"]),
        "visual_input": "cached backbone features" if setup["cached"] else f"{args.image_size}x{args.image_size} image",
        "overrides": overrides,
        "precision": precision,
        "precision_reason": precision_reason,
        "all_variants": bool(args.all_variants),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "torch": torch.__version__,
        "git": git_revision(),
        "batch": args.batch,
        "infer_batch": args.infer_batch,
        "steps_per_round": args.steps,
        "repeats": args.repeats,
        "load_before": load_average(),
        "trainable_parameters": sum(p.numel() for p in base.parameters() if p.requires_grad),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    log(f"[bench_models] {args.profile}: {setup['note']}; device {device} ({res['threads']} threads), load {res['load_before']}")
    log(f"[bench_models] precision {precision}: {precision_reason}" + (" (bf16 variants timed too: --all-variants)" if args.all_variants and precision != "bf16" else ""))
    res["gemm_n"] = args.gemm_n or (8192 if cuda else 2048)
    res["gemm_peak_gflops"] = gemm_peak(device, res["gemm_n"], repeats=5, dtypes=("fp32", "bf16") if args.bf16_variants else ("fp32",))
    log(f"  GEMM peak GFLOP/s: {res['gemm_peak_gflops']}")
    fb = make_batch(setup, 2, torch.device("cpu"), seed=5)
    res["flops_per_sample"] = {"forward": count_flops(base, fb, train=False), "train": count_flops(base, fb, train=True)}
    log(f"  FLOPs/sample: forward {res['flops_per_sample']['forward'] / 1e9:.2f} G, train {res['flops_per_sample']['train'] / 1e9:.2f} G")

    def annotate(rows: dict[str, Any], flops: dict[str, float]) -> None:
        for name, r in rows.items():
            r["flops_per_sample"] = flops[name]
            pk = "bf16" if "bf16" in name else "fp32"
            r["gflops"] = r["samples_per_s"] * flops[name] / 1e9
            r["fraction_of_peak"] = r["gflops"] / res["gemm_peak_gflops"][pk]
            if "samples_per_s_cpu_time" in r:
                r["gflops_cpu_time"] = r["samples_per_s_cpu_time"] * flops[name] / 1e9
                r["fraction_of_peak_cpu_time"] = r["gflops_cpu_time"] / res["gemm_peak_gflops"][f"{pk}_cpu_time"]

    cpu = device.type == "cpu"
    targets = {}
    if not args.skip_train:
        res["train"] = bench_training(base, setup, args, device, log)
        annotate(res["train"], {k: res["flops_per_sample"]["train"] for k in res["train"]})
        targets["train_samples_per_s"] = _target(res["train"], "fp32", "train_samples_per_s", cpu)
    if not args.skip_infer:
        res["inference"] = bench_inference(base, setup, args, device, log)
        fwd = res["flops_per_sample"]["forward"]
        annotate(res["inference"], {k: fwd * (NUM_SOURCES if k.startswith("per-source") else 1) for k in res["inference"]})
        targets["infer_two_source_samples_per_s"] = _target(res["inference"], "per-source fp32", "infer_two_source_samples_per_s", cpu)
    if args.profile == "paper" and targets:
        res["targets"] = targets
    res["speedup_vs_baseline"] = {
        block: _speedup(res[block], base)
        for block, base in (("train", "fp32"), ("inference", "per-source fp32")) if block in res
    }
    if args.check and args.bf16_variants:
        res["check"] = check_bf16(base, setup, args, device, log)
    elif args.check:
        res["check_skipped"] = "no bf16 variant timed (fp32 path): nothing to compare"
    res["load_after"] = load_average()
    print_table(res)
    key = args.key or (args.profile + (f"-{args.audio_grouping}" if args.audio_grouping else "")
                       + (f"-threads{args.threads}" if args.threads else "") + ("-passive" if args.omp_passive else ""))
    res["key"] = key
    write_json(out_path, key, res)
    log(f"wrote {out_path}")
    return res


if __name__ == "__main__":
    main()
