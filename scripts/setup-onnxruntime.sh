#!/usr/bin/env bash
# Installs onnxruntime, numpy and onnx (PyPI; onnx ships the "light" model-zoo files that
# crates/prunekit-io/tests/onnx_zoo.rs imports) into a virtual environment, to check prunekit's ONNX exports
# against an independent runtime: scripts/ort_check.py runs a model on .npy inputs there.
# Usage: scripts/setup-onnxruntime.sh [VENV_DIR]   (default: .venv-onnx in the repository root)
# The tests that need it (crates/prunekit-io/tests/onnxruntime.rs) find it at $PRUNEKIT_ORT_PYTHON
# or .venv-onnx/bin/python, and skip with a message when neither exists.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv-onnx}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "onnxruntime>=1.17" "numpy>=1.24" "onnx>=1.15"
"$venv/bin/python" -c 'import onnxruntime, numpy; print("onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__)'
