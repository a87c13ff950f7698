#!/usr/bin/env bash
# One call on a lent GPU (under 8 minutes on an H100): install carried wheels, build
# the extension, run the GPU parity tests, the kernel benchmark and the E2URec
# reference-vs-fast end-to-end benchmarks (T5 at paper scale; a decoder-only LLaMA-shaped
# model in 8-bit), with MFU, writing everything under $OUT.
#
#   benchmarks/device_check.sh            # on the GPU machine
#   benchmarks/device_check.sh --dry-run  # on a CPU, tiny sizes (CI runs this)
#
# Carried paths (see README): .whl/ (wheels missing on the device image, e.g.
# bitsandbytes) and .data/ (the recbole wheel that holds ML-100K; the device has no
# network). Data can be overridden with E2UREC_DATA_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
log() { echo "[device_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/device_check.log"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python3 -c "import e2urec_fast.kernels" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
python3 - <<'PY' | tee -a "$OUT/device_check.log"
import torch, platform
print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version())
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA)")
PY

log "building the native op"
python3 -c "from e2urec_fast import native; m = native.load(); print('native:', m is not None, native._error or '')" | tee -a "$OUT/device_check.log"
python3 -c "from e2urec_fast import native; m = native.load_cuda(); print('native cuda:', m is not None, native._cuda_error or '')" | tee -a "$OUT/device_check.log"

if [ -z "${E2UREC_DATA_ARGS:-}" ]; then
  whl=$(ls .data/recbole-*.whl 2>/dev/null | head -1 || true)
  E2UREC_DATA_ARGS=${whl:+--data-dir $whl}
fi

if [ $DRY = 1 ]; then
  log "parity tests (CPU, dry run)"
  python3 -m pytest -q -x tests/test_ops.py -k "17-2 or 17-3" 2>&1 | tail -3 | tee -a "$OUT/device_check.log"
  log "kernel benchmark (dry run)"
  python3 benchmarks/bench_teacher_kl.py --shapes 64x2,4x1271 --reps 2 --csv "$OUT/teacher_kl.csv" | tee -a "$OUT/device_check.log"
  log "E2URec reference vs fast (dry run)"
  python3 -m e2urec_fast.unlearn $E2UREC_DATA_ARGS --backbone tiny --max-samples 300 --epochs 1 --student-steps 4 --forget-ratio 0.25 \
    --methods original,retrain,e2urec --impl both --quiet --cache-dir "$OUT/cache" --out "$OUT/e2urec" 2>&1 | tail -8 | tee -a "$OUT/device_check.log"
  log "end-to-end benchmark (dry run)"
  python3 benchmarks/bench_unlearn.py --dry-run --cache-dir "$OUT/cache" --out "$OUT/bench_unlearn.json" 2>&1 | tail -12 | tee -a "$OUT/device_check.log"
  log "decoder-only causal LM, end to end (dry run)"
  python3 benchmarks/bench_unlearn.py --dry-run --backbone causal-tiny --fast-args=--load-in-8bit --cache-dir "$OUT/cache" --out "$OUT/bench_unlearn_causal.json" 2>&1 \
    | tail -3 | tee -a "$OUT/device_check.log"
else
  log "GPU parity tests"
  E2UREC_GPU_TESTS=1 python3 -m pytest -q tests/test_ops.py 2>&1 | tail -3 | tee -a "$OUT/device_check.log"
  log "kernel benchmark"
  python3 benchmarks/bench_teacher_kl.py --device cuda --csv "$OUT/teacher_kl.csv" | tee -a "$OUT/device_check.log"
  log "end-to-end benchmark at paper scale: t5-base shapes (random weights), 100,000 samples, batch 16, 1000 student steps"
  # Original/Retrain are capped at 300 steps: a speed run, their quality is not the point here
  timeout 360 python3 benchmarks/bench_unlearn.py $E2UREC_DATA_ARGS --device cuda --backbone t5-base-config --max-samples 100000 \
    --steps 1000 --eval-every 0 --orig-steps 300 --cache-dir "$OUT/cache" --out "$OUT/bench_unlearn_paper_scale.json" 2>&1 \
    | tail -14 | tee -a "$OUT/device_check.log" || log "end-to-end benchmark did not finish in 360 s"
  log "decoder-only causal LM: llama-1b shapes (random weights), 8-bit frozen base, 10,000 samples, 200 student steps"
  timeout 150 python3 benchmarks/bench_unlearn.py $E2UREC_DATA_ARGS --device cuda --backbone llama-1b-config --max-samples 10000 \
    --steps 200 --eval-every 0 --orig-steps 100 --fast-args=--load-in-8bit --cache-dir "$OUT/cache" \
    --out "$OUT/bench_unlearn_llama1b.json" 2>&1 | tail -6 | tee -a "$OUT/device_check.log" || log "causal-LM benchmark did not finish in 150 s"
fi
rm -rf "$OUT/cache" "$OUT/e2urec/adapter" "$OUT/e2urec/adapter_reference" "$OUT/e2urec/cache"
log "done; results in $OUT"
