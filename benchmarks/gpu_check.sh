#!/usr/bin/env bash
# wit-train's GPU check (issue 20), one prepared script for a bare GPU machine with this repo:
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # here, where PyPI is reachable: fill .whl/
#   bash benchmarks/gpu_check.sh                  # there: install from .whl/, then run the check
#   bash benchmarks/gpu_check.sh --dry-run        # anywhere: the set-up only (CPU is enough)
#
# The GPU machine reaches no package registry, so what its image lacks (webdataset, open_clip,
# ftfy, ...) travels as wheels in .whl/ (ignored by git; carry it). Versions are the ones the
# development venv runs, within constraints.txt; torch, torchvision, numpy, pillow, tokenizers
# and the like are the machine's own. Other flags go to benchmarks/gpu_check.py (--steps,
# --batch-size, --workers, ...). Output: the log and gpu_check.json under $OUT
# (default /tmp/wit-gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS=(webdataset==0.2.86 braceexpand==0.1.7 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    rm -rf .whl && mkdir -p .whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -c constraints.txt -d .whl "${WHEELS[@]}"
    ls -l .whl
    exit 0
fi

export OUT="${OUT:-/tmp/wit-gpu-check}"
mkdir -p "$OUT"
if ! "$PY" -c "import webdataset, open_clip, open_clip_train" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/wit-site .whl/*.whl
        export PYTHONPATH="/tmp/wit-site:${PYTHONPATH:-}"
    else
        "$PY" -m pip install -q -c constraints.txt "${WHEELS[@]}"
    fi
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
set -o pipefail
"$PY" benchmarks/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
