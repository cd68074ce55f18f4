#!/usr/bin/env bash
# Installs PyTorch (CPU use; the default Linux wheel also pulls the nvidia-* packages, about 4 GB) into
# a virtual environment for the runtime benchmark (scripts/bench_torch.py times the same networks) and
# the Hugging Face references (scripts/hf_reference.py).
# Usage: scripts/setup-torch.sh [VENV_DIR]   (default: .venv-torch in the repository root)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv-torch}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet torch
# torch.onnx.export needs onnx (and onnxscript for the dynamo exporter): the export checks of
# crates/prunekit-io/tests/torch_exports.rs
"$venv/bin/pip" install --quiet onnx onnxscript
# the independent references of scripts/hf_reference.py (sentence-transformers, transformers with GGUF)
"$venv/bin/pip" install --quiet transformers sentence-transformers gguf accelerate
"$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'
echo "PyTorch is in $venv; run: $venv/bin/python scripts/bench_torch.py"
