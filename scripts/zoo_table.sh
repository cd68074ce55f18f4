#!/usr/bin/env bash
# Prints the issue-3 evidence table: for every zoo model, params and MACs before and after
# structured L1 pruning at ratio 0.5 (per group), the largest relative error of the pruned model
# against the masked original (--verify, random inputs), and the time to analyse + prune.
# Usage: scripts/zoo_table.sh [RATIO]   (builds the release binary first)
set -euo pipefail
ratio="${1:-0.5}"
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin prunekit
bin=target/release/prunekit
[ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/release/prunekit"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| model | params before | params after | MACs before | MACs after | max rel. error | prune time (s) |"
echo "|---|---|---|---|---|---|---|"
for name in $("$bin" zoo list | cut -d' ' -f1); do
  "$bin" zoo create "$name" -o "$tmp/$name" --json > /dev/null
  "$bin" prune "$tmp/$name" -o "$tmp/$name-pruned" --structured "$ratio" --verify --json > "$tmp/$name.json"
  python3 - "$name" "$tmp/$name.json" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
v = json.load(open(path))
b, a = v["before"], v["after"]
print(f"| {name} | {b['params']:,} | {a['params']:,} ({a['params']/b['params']:.2f}x) | "
      f"{b['macs']:,} | {a['macs']:,} ({a['macs']/b['macs']:.2f}x) | "
      f"{v['verify']['max_rel_error']:.1e} | {v['seconds']['structured']:.3f} |")
PY
done
