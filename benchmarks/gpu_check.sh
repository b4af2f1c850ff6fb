#!/usr/bin/env bash
# GPU check: what was built without a GPU, measured on one.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--python PY]
#
# On a GPU machine (from the repository root, network for the first install):
#   bash benchmarks/gpu_check.sh --out /tmp/tirec_gpu_check
# It
#   1. creates / updates .venv with `make install` (skipped with --python PY: an interpreter that
#      already has tirec), and where nvidia-smi sees a GPU that TensorFlow does not, installs
#      `tensorflow[and-cuda]` of the installed TensorFlow version (the CUDA libraries as wheels);
#      the real run stops (exit 3) if TensorFlow still sees no GPU, since the gpu tests would only skip;
#   2. prints nvidia-smi (a message where it is absent);
#   3. runs the tests marked `gpu` (tests/gpu: DIN and DAIAN trained under MirroredStrategy on
#      every visible GPU, float32 and mixed_bfloat16; the runs exported and the SavedModel's
#      scores checked against the trained model): `pytest -m gpu tests/gpu -q -rs`;
#   4. prints the training speed of DIN and DAIAN at the paper config (batch 4096, emb 16, tower
#      512-256-128, attention 128 x 4, L = 50, Adagrad; bench_train's timing: one cached batch,
#      interleaved rounds, fastest round; float32 and mixed_bfloat16; 2000 generated users) and
#      the in-process serving latency of the `rank` signature at 200 candidates (bench_quality's
#      latency_ms, median of 50 calls) for DIN and DAIAN: benchmarks/gpu_check.py;
#   5. writes DIR/summary.json (devices, test result, speeds, latencies, seconds per phase) and
#      prints it; logs: DIR/pytest.log, DIR/gpu_check.log, DIR/nvidia-smi.txt.
# Everything after the install runs under a hard cap of GPU_CHECK_CAP_S seconds (default 450;
# the gpu tests get at most GPU_CHECK_TESTS_S, default 210), so a real run with the .venv in
# place ends within 8 minutes; a first install (TensorFlow, the CUDA wheels) comes on top, capped
# at GPU_CHECK_INSTALL_S (default 900).
#
# --dry-run (no GPU needed; tests/test_gpu_check.py runs it): no install (the given --python, or
# the existing .venv, else `make install`), the gpu tests only collected (`--collect-only`), and
# the same speed / latency code on CPU at the smallest settings: 20 users, batch 64, 1 round of 1
# step, float32, one length group per model, 3 latency calls, no matmul ceiling.
# Exit status: 0 when every phase passed, 1 when a phase failed or ran out of time, 2 on bad
# arguments, 3 when the real run finds no GPU.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

DRY=0
OUT=/tmp/tirec_gpu_check
PY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT="${2:?--out needs a folder}"; shift ;;
        --out=*) OUT="${1#--out=}" ;;
        --python) PY="${2:?--python needs an interpreter}"; shift ;;
        --python=*) PY="${1#--python=}" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
CAP_S="${GPU_CHECK_CAP_S:-450}"
TESTS_S="${GPU_CHECK_TESTS_S:-210}"
INSTALL_S="${GPU_CHECK_INSTALL_S:-900}"
status=0

section() { printf '\n== %s\n' "$*"; }
mode() { [ "$DRY" = 1 ] && echo dry-run || echo gpu; }
echo "tirec GPU check ($(mode)), output in $OUT"

# ---- 1. the interpreter ---------------------------------------------------------------------------
section "setup"
if [ -n "$PY" ]; then
    echo "using $PY (no install)"
elif [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then
    PY="$ROOT/.venv/bin/python"
    echo "dry run: using the existing .venv (no install; a real run does \`make install\` first)"
else
    echo "make install (creates .venv once, reinstalls when setup.py changed)"
    timeout -k 10 "$INSTALL_S" make --no-print-directory install
    PY="$ROOT/.venv/bin/python"
fi
command -v "$PY" >/dev/null || { echo "gpu_check.sh: no interpreter $PY" >&2; exit 2; }

# ---- 2. the driver's view -----------------------------------------------------------------------
section "nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt" || true
else
    echo "nvidia-smi not found (no NVIDIA driver on this machine): skipped" | tee "$OUT/nvidia-smi.txt"
fi

tf_gpus() {
    "$PY" -c 'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))' 2>/dev/null | tail -1
}
if [ "$DRY" = 0 ]; then
    gpus="$(tf_gpus || echo 0)"
    if [ "${gpus:-0}" = 0 ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        version="$("$PY" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null | tail -1)"
        echo "TensorFlow $version sees no GPU though nvidia-smi does: installing tensorflow[and-cuda]==$version"
        timeout -k 10 "$INSTALL_S" "$PY" -m pip install -q "tensorflow[and-cuda]==$version"
        gpus="$(tf_gpus || echo 0)"
    fi
    echo "GPUs visible to TensorFlow: ${gpus:-0}"
    if [ "${gpus:-0}" = 0 ]; then
        echo "gpu_check.sh: TensorFlow sees no GPU here, so the gpu tests would only be skipped;" \
             "run it on a GPU machine, or with --dry-run" >&2
        exit 3
    fi
fi

# ---- the capped part ----------------------------------------------------------------------------
deadline=$((SECONDS + CAP_S))
left() { echo $((deadline - SECONDS)); }

# ---- 3. the gpu tests ---------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    section "tests marked gpu: collect only (dry run)"
    test_args=(--collect-only -q)
else
    section "tests marked gpu"
    test_args=(-q -rs)
fi
budget=$(( $(left) < TESTS_S ? $(left) : TESTS_S ))
set +e
timeout -k 10 "$budget" "$PY" -m pytest -m gpu tests/gpu -p no:cacheprovider "${test_args[@]}" 2>&1 \
    | tee "$OUT/pytest.log"
tests_rc=${PIPESTATUS[0]}
set -e
if [ "$tests_rc" != 0 ]; then
    [ "$tests_rc" = 124 ] && echo "the gpu tests ran out of their ${budget} s"
    echo "gpu tests: exit status $tests_rc"
    status=1
elif [ "$DRY" = 0 ] && grep -q " skipped" "$OUT/pytest.log"; then
    echo "WARNING: some gpu tests were skipped (see the reasons above)"
fi

# ---- 4. training speed and serving latency ------------------------------------------------------
if [ "$DRY" = 1 ]; then
    section "training speed (DIN, DAIAN) and rank latency at 200 candidates: dry run, smallest settings"
    bench_args=(--mode dry-run --users 20 --batch 64 --steps 1 --rounds 1 --precision float32
                --latency-runs 3 --no-matmul)
else
    section "training speed (DIN, DAIAN) at the paper config and rank latency at 200 candidates"
    bench_args=(--mode gpu --users 2000 --steps 5 --rounds 3 --precision both --latency-runs 50)
fi
budget=$(left)
if [ "$budget" -lt 20 ]; then
    echo "no time left for the measurements (cap ${CAP_S} s)"
    status=1
else
    set +e
    timeout -k 10 "$budget" "$PY" benchmarks/gpu_check.py --out "$OUT/summary.json" --work "$OUT/bench" \
        --pytest-log "$OUT/pytest.log" --pytest-rc "$tests_rc" --nvidia-smi "$OUT/nvidia-smi.txt" \
        "${bench_args[@]}" 2> "$OUT/gpu_check.log"
    bench_rc=$?
    set -e
    if [ "$bench_rc" != 0 ]; then
        [ "$bench_rc" = 124 ] && echo "the measurements ran out of time (cap ${CAP_S} s)"
        echo "benchmarks/gpu_check.py: exit status $bench_rc; the end of $OUT/gpu_check.log:"
        tail -20 "$OUT/gpu_check.log"
        if [ -f "$OUT/summary.json" ]; then
            echo "partial summary ($OUT/summary.json):"
            cat "$OUT/summary.json"
        fi
        status=1
    fi
fi

[ -f "$OUT/summary.json" ] && where="summary in $OUT/summary.json" || where="no summary written"
section "done in ${SECONDS} s: $( [ "$status" = 0 ] && echo ok || echo FAILED ), $where"
exit "$status"
