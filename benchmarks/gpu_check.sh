#!/usr/bin/env bash
# One command for the first machine with an NVIDIA GPU (none has been available so far):
#
#     bash benchmarks/gpu_check.sh            # from a clone, with the project's venv active (or PYTHON=/path/python)
#
# 1. checks that PyTorch sees a CUDA GPU (without one: says so and exits 0);
# 2. installs mamba-ssm and causal-conv1d if they do not import yet (they are CUDA source builds; a failed or too
#    slow build is reported with its reason and the run goes on without them);
# 3. runs the CUDA / mamba-ssm kernel tests that the CPU suite skips (tests/test_mamba_mixer.py, kernel path);
# 4. times on the GPU the kernel path against the PyTorch Mamba path, and DART-DeiT-S against Transformers' DeiT-S
#    (eager, compiled, bfloat16), and prints everything as one table (benchmarks/gpu_benchmark.py).
#
# The whole run is kept under 8 minutes: each step gets what is left of GPU_CHECK_BUDGET seconds (default 450).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python}"
BUDGET="${GPU_CHECK_BUDGET:-450}"
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }

# ------------------------------------------------------------------------------------------------- 1. a GPU?
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "gpu_check: python interpreter '$PYTHON' not found; activate the venv or set PYTHON." >&2
    exit 2
fi
cuda_state=$("$PYTHON" - <<'EOF' 2>/dev/null
import torch
if torch.cuda.is_available():
    print("ok", torch.cuda.get_device_name(0))
elif torch.version.cuda is None:
    print("cpu-build", torch.__version__)
else:
    print("no-device", torch.__version__)
EOF
)
case "$cuda_state" in
    ok*) echo "gpu_check: ${cuda_state#ok } (torch sees a CUDA GPU)";;
    *)
        gpu="none found"
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            gpu="$(nvidia-smi -L | head -n 1)"
        fi
        if [ "$gpu" = "none found" ]; then
            echo "gpu_check: no CUDA GPU available on this machine (nvidia-smi: $gpu; torch: ${cuda_state:-not importable})."
            echo "gpu_check: nothing to check here; run this script on a machine with an NVIDIA GPU."
            exit 0
        fi
        echo "gpu_check: a GPU is present ($gpu) but this PyTorch cannot use it (${cuda_state:-torch not importable})." >&2
        echo "gpu_check: install a CUDA build of torch in this venv (e.g. pip install torch --index-url" \
             "https://download.pytorch.org/whl/cu128) and rerun." >&2
        exit 1;;
esac
status=(--status "GPU=${cuda_state#ok }")

# ----------------------------------------------------------------------------------------- 2. mamba-ssm kernels
kernels_available() {
    "$PYTHON" -c "from modeling_dart.selective_scan_dart import is_mamba_kernel_available as a; import sys; sys.exit(0 if a() else 1)" \
        >/dev/null 2>&1
}
if kernels_available; then
    status+=(--status "mamba-ssm / causal-conv1d=already installed")
else
    install_time=$(( $(left) - 240 ))  # keep four minutes for the tests and the timings
    if [ "$install_time" -lt 30 ]; then
        status+=(--status "mamba-ssm / causal-conv1d=not installed: no time left in the budget")
    else
        echo "gpu_check: installing causal-conv1d and mamba-ssm (at most ${install_time} s)..."
        log=$(mktemp)
        if timeout "$install_time" "$PYTHON" -m pip install --no-build-isolation "causal-conv1d>=1.4" "mamba-ssm>=2.2" \
                >"$log" 2>&1 && kernels_available; then
            status+=(--status "mamba-ssm / causal-conv1d=installed")
        else
            code=$?
            reason=$(grep -iE "error|nvcc|cuda_home|timed out" "$log" | tail -n 3 | tr '\n' ' ' | cut -c1-300)
            [ "$code" -eq 124 ] && reason="build did not finish in ${install_time} s (source build); $reason"
            echo "gpu_check: the kernels could not be installed: ${reason:-see $log}"
            status+=(--status "mamba-ssm / causal-conv1d=not installed: ${reason:-pip failed, log $log}")
        fi
    fi
fi

# ------------------------------------------------------------------------------------- 3. the skipped kernel tests
echo "gpu_check: running the CUDA kernel tests..."
test_log=$(mktemp)
timeout $(( $(left) > 60 ? 120 : 30 )) "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_mamba_mixer.py -k kernel \
    >"$test_log" 2>&1
summary=$(grep -E "passed|failed|skipped|error" "$test_log" | tail -n 1)
echo "gpu_check: kernel tests: ${summary:-no result (see $test_log)}"
status+=(--status "kernel tests (tests/test_mamba_mixer.py -k kernel)=${summary:-no result, see $test_log}")

# ------------------------------------------------------------------------------------------------- 4. timings
remaining=$(left)
if [ "$remaining" -lt 20 ]; then
    echo "gpu_check: no time left for the timings (budget ${BUDGET} s)."
    exit 1
fi
echo "gpu_check: timing (at most ${remaining} s)..."
timeout "$remaining" "$PYTHON" benchmarks/gpu_benchmark.py "${status[@]}"
code=$?
[ "$code" -eq 124 ] && echo "gpu_check: the timings did not finish within the budget (${BUDGET} s)."
echo "gpu_check: done in $(( SECONDS - START )) s."
exit "$code"
