#!/usr/bin/env bash
# One call on a lent GPU, within a budget of 480 s (E2UREC_BUDGET): every part below runs
# with its own timeout (capped by what is left of the budget), whatever the parts before
# it did, and records ok / failed / skipped (with the reason) and its seconds in
# $OUT/summary.json, rewritten after each part (a call killed from outside still leaves it).
#
#   1 env        torch, CUDA, the device's name
#   2 build      the native op (CPU) and the CUDA op, built once; every later part loads
#                them from torch's extensions folder (keyed by source and flags, so reused)
#   3 parity     the kernel parity tests on the device (tests/test_ops.py, test_ops_edge.py)
#   4 kernels    the teacher-KL microbenchmark in fp32 and in bf16 (bf16 student, fp32
#                teachers): torch eager, torch.compile (two shapes; one in the dry run),
#                Triton, the CUDA op (the native op on the CPU)
#   5 step       one student step: full vs two-row Yes/No head, fp32 vs bf16
#                (bench_student_step.py at t5-base-config shapes)
#   6 e2e        end-to-end time-to-quality at t5-base-config shapes with --dtype bf16,
#                the reference path against the fast path, each in its own process, same
#                data and seeds (bench_unlearn.py)
#   7 boundary   the fast path against the cached boundary (--lora-scope decoder) with the
#                authors' schedule, same Original as part 6 (bench_boundary.py)
#   8 request    a 5-user deletion request at t5-base-config shapes in bf16 (our Original, one
#                epoch), the default path and the cached boundary, each request in its own
#                process, two seeds (device_request.py; issue #26)
#   9 causal8    a decoder-only model with an 8-bit frozen base, only if bitsandbytes
#                imports there (the device image has none unless its wheel is carried)
#
#   benchmarks/device_check.sh            # on the GPU machine
#   benchmarks/device_check.sh --dry-run  # on a CPU: the same parts at tiny sizes (CI, < 3 min)
#
# What to carry (the device has no network): `.data/` holding the recbole wheel (ML-100K:
# `pip download recbole==1.2.1 --no-deps -d .data`) and, for part 7, `.whl/` holding a
# bitsandbytes wheel (part 8); e.g. run(command="benchmarks/device_check.sh", carry=[".data", ".whl"]).
# Without .data/ the parts use a small synthetic ML-1M-format set (E2UREC_DATA_ARGS overrides).
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
BUDGET=${E2UREC_BUDGET:-480}
START=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export E2UREC_CACHE=$OUT/.cache
: > "$OUT/parts.tsv"
log() { echo "[device_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/device_check.log"; }

summary() {
  python3 - "$OUT" "$BUDGET" "$START" "$DRY" <<'PY'
import json, sys, time
out, budget, start, dry = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
parts = []
for line in open(f"{out}/parts.tsv"):
    name, status, secs, reason = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
    parts.append(dict(part=name, status=status, seconds=float(secs or 0), reason=reason))
device = ""
try:
    device = open(f"{out}/device.txt").read().strip()
except OSError:
    pass
json.dump(dict(device=device, dry_run=dry, budget_s=budget, elapsed_s=round(time.time() - start, 1), parts=parts,
               ok=sum(p["status"] == "ok" for p in parts), failed=sum(p["status"] == "failed" for p in parts),
               skipped=sum(p["status"] == "skipped" for p in parts)), open(f"{out}/summary.json", "w"), indent=1)
PY
}

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4//$'\t'/ }" >> "$OUT/parts.tsv"; summary; }

# part NAME TIMEOUT CMD...: run CMD with min(TIMEOUT, budget left) seconds, output in $OUT/NAME.log
part() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 10 ]; then
    record "$name" skipped 0 "budget of ${BUDGET} s spent"
    log "$name: skipped (budget spent)"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "$name: starting (timeout ${limit} s)"
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$? secs=$(($(date +%s) - t0))
  tail -n 15 "$OUT/$name.log" >> "$OUT/device_check.log"
  if [ $rc -eq 0 ]; then
    record "$name" ok "$secs" ""
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    record "$name" failed "$secs" "timed out after ${limit} s"
  else
    record "$name" failed "$secs" "exit status $rc: $(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-300)"
  fi
  log "$name: $(tail -n 1 "$OUT/parts.tsv" | cut -f2,3,4 | tr '\t' ' ')"
}

skip() { record "$1" skipped 0 "$2"; log "$1: skipped ($2)"; }

# carried wheels (bitsandbytes on the device image) go to a private site folder
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/e2u_site .whl/*.whl \
    >> "$OUT/device_check.log" 2>&1 && export PYTHONPATH=/tmp/e2u_site:${PYTHONPATH:-}
fi
python3 -c "import e2urec_fast" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1

# the data: the carried recbole wheel (real ML-100K) or a synthetic ML-1M-format set
if [ -z "${E2UREC_DATA_ARGS:-}" ]; then
  whl=$(ls .data/recbole-*.whl 2>/dev/null | head -1)
  if [ -n "$whl" ] && [ $DRY = 0 ]; then
    E2UREC_DATA_ARGS="--data-dir $whl"
  else
    python3 -c "from pathlib import Path; from e2urec_fast.data.synthetic import make_ml1m; print(make_ml1m(Path('$OUT/.data_ml1m'), n_users=$([ $DRY = 1 ] && echo 40 || echo 400), per_user=20))" >/dev/null
    E2UREC_DATA_ARGS="--dataset ml-1m --data-dir $OUT/.data_ml1m"
  fi
fi
log "data: $E2UREC_DATA_ARGS"

if [ $DRY = 1 ]; then
  DEV=cpu; KSHAPES=64x2,4x1271; KREPS=2; BACKENDS=torch,compile,native; CSHAPES=1; STEP_BB=tiny; STEP_N=1
  E2E="--dry-run --backbone tiny"
  BOUNDARY="--dry-run --backbone tiny --seeds 42"
  CAUSAL="--dry-run --backbone causal-tiny"
  REQUEST="--dry-run"
  PARITY=(tests/test_ops_edge.py -k "not native_build and not stale_lock")
else
  DEV=cuda; KSHAPES=4096x2,65536x2,48x32128,512x32128,4096x32128; KREPS=10; CSHAPES=2
  BACKENDS=torch,compile,triton,native; STEP_BB=t5-base-config; STEP_N=10
  E2E="--backbone t5-base-config --max-samples 10000 --steps 300 --eval-every 0 --orig-steps 300"
  BOUNDARY="--backbone t5-base-config --max-samples 10000 --steps 204 --orig-steps 300 --seeds 42"
  CAUSAL="--backbone llama-1b-config --max-samples 4000 --steps 100 --eval-every 0 --orig-steps 50"
  REQUEST="$E2UREC_DATA_ARGS --device cuda --dtype bf16 --backbone t5-base-config --max-samples 10000 --epochs 1 --seeds 1,2"
  PARITY=(tests/test_ops.py tests/test_ops_edge.py -k "not native_build and not stale_lock and not cuda_source_compiles")
  export E2UREC_GPU_TESTS=1
fi

part env 60 python3 -c "
import torch, platform
name = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu (no CUDA)'
open('$OUT/device.txt', 'w').write(name)
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', platform.python_version(), 'device', name)
assert '$DEV' == 'cpu' or torch.cuda.is_available(), 'no CUDA device'"

part build 150 python3 -c "
from e2urec_fast import native
m = native.load(); print('native:', m is not None, native._error or '')
if '$DEV' == 'cuda':
    c = native.load_cuda(); print('native cuda:', c is not None, native._cuda_error or '')
    assert c is not None, 'the CUDA op did not build'
assert m is not None, 'the native op did not build'"

part parity 120 python3 -m pytest -q -p no:cacheprovider "${PARITY[@]}"

part kernels_fp32 60 python3 benchmarks/bench_teacher_kl.py --device $DEV --dtype float32 --shapes $KSHAPES --reps $KREPS \
  --backends $BACKENDS --compile-shapes $CSHAPES --csv "$OUT/teacher_kl.csv"
part kernels_bf16 60 python3 benchmarks/bench_teacher_kl.py --device $DEV --dtype bfloat16 --shapes $KSHAPES --reps $KREPS \
  --backends $BACKENDS --compile-shapes $CSHAPES --csv "$OUT/teacher_kl.csv"

part step 60 python3 benchmarks/bench_student_step.py $E2UREC_DATA_ARGS --device $DEV --backbones $STEP_BB --steps $STEP_N \
  --cache-dir "$E2UREC_CACHE" --out "$OUT/student_step.json"

# shellcheck disable=SC2086
part e2e 150 python3 benchmarks/bench_unlearn.py $E2UREC_DATA_ARGS --device $DEV --dtype bf16 $E2E \
  --cache-dir "$E2UREC_CACHE" --out "$OUT/bench_unlearn_bf16.json"

# shellcheck disable=SC2086
part boundary 120 python3 benchmarks/bench_boundary.py $E2UREC_DATA_ARGS --device $DEV --dtype bf16 --paths fast,boundary $BOUNDARY \
  --cache-dir "$E2UREC_CACHE" --out "$OUT/boundary_bf16.json"

# shellcheck disable=SC2086
part request 120 python3 benchmarks/device_request.py $REQUEST --cache-dir "$E2UREC_CACHE" --out "$OUT/request"
find "$OUT/request" -mindepth 1 -maxdepth 1 ! -name device_request.json -exec rm -rf {} + 2>/dev/null  # models: not brought back

if python3 -c "import bitsandbytes" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  part causal8 90 python3 benchmarks/bench_unlearn.py $E2UREC_DATA_ARGS --device $DEV $CAUSAL --fast-args=load_in_8bit=true \
    --cache-dir "$E2UREC_CACHE" --out "$OUT/bench_unlearn_causal_8bit.json"
else
  skip causal8 "bitsandbytes does not import here (carry its wheel in .whl/)"
fi

rm -rf "$E2UREC_CACHE" "$OUT/.data_ml1m"
summary
log "done in $(($(date +%s) - START)) s; summary in $OUT/summary.json"
python3 -c "
import json; s = json.load(open('$OUT/summary.json'))
print(' '.join(f\"{p['part']}={p['status']}\" for p in s['parts']))"
