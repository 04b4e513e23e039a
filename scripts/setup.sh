#!/usr/bin/env bash
# Set up .venv with gsvc and its test tools. torch comes from `pip install torch==2.13.0`
# (a CPU wheel on this project's machines); it is installed before gsvc so that pip
# never resolves torch on its own and pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -c "import torch, gsvc; print('gsvc', gsvc.__version__, '| torch', torch.__version__)"
