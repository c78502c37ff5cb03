#!/usr/bin/env bash
# The README's GPU speed figures, on a GPU machine that cannot download anything (one with
# python3, torch, transformers, pandas, pyarrow, rich, pyyaml, peft and pytest, as the
# project's lent H100/H200 machines have; Ray is not needed: `bench perf` runs the engine in
# its own process there).
#
#   scripts/gpu_perf.sh wheels [PYTHON_VERSION]    here, with the internet: .whl/ holds augment
#                                                  and the packages such a machine lacks
#   scripts/gpu_perf.sh run OUT [SECONDS]          there, from the checkout with .whl/ beside it:
#                                                  the CUDA-graph tests, then `augment bench perf`
#                                                  rows, each logged under OUT; all within SECONDS
#
# Which rows run: $PERF_ARGS (default: the SDXL rows that issue 18's last point still needs).
set -euo pipefail
cd "$(dirname "$0")/.."

# What a bare torch image lacks, at the versions this checkout's .venv runs (make install).
LACKED=(diffusers pydantic pydantic_core annotated-types typing-inspection importlib_metadata nltk)
SDXL_ROWS='--models sdxl --images 16 --no-baselines --fast "attention cudnn,compiled cuda graphs + compiled float16 vae + attention cudnn,compiled cuda graphs + compiled float16 vae"'
PERF_ARGS=${PERF_ARGS:-$SDXL_ROWS}

wheels() {
    local version=${1:-3.12}
    local pinned
    pinned=$(.venv/bin/python -c 'import sys, importlib.metadata as m
print(" ".join(f"{name}=={m.version(name)}" for name in sys.argv[1:]))' "${LACKED[@]}") ||
        { echo "run make install first: the wheels take .venv's versions" >&2; exit 2; }
    rm -rf .whl && mkdir -p .whl
    # shellcheck disable=SC2086 # one argument per requirement
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $pinned
    python3 -m pip wheel --quiet --no-deps -w .whl .  # augment, its models
    rm -rf build
    ls -l .whl
    grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
}

run() {
    local out=${1:?give the folder for the logs} seconds=${2:-480}
    local deadline=$((SECONDS + seconds))
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --ignore-requires-python \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/card.txt" ||
        echo "no nvidia-smi: the rows below ran on the CPU" >"$out/card.txt"
    python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', \
diffusers.__version__)" >>"$out/card.txt"
    cat "$out/card.txt"
    python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py 2>&1 | tail -5 |
        tee "$out/tests.txt"
    eval "timeout $((deadline - SECONDS)) augment bench perf --out $out/perf $PERF_ARGS" 2>&1 |
        tee "$out/perf.txt" || echo "bench perf stopped: exit ${PIPESTATUS[0]}" | tee -a "$out/perf.txt"
    cp "$out/perf/perf.json" "$out/perf.json" 2>/dev/null || true
}

case ${1:-} in
wheels) wheels "${@:2}" ;;
run) run "${@:2}" ;;
*)
    sed -n 2,12p "$0"
    exit 2
    ;;
esac
