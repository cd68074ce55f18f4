#!/usr/bin/env python3
"""Issue-11 and issue-14 evidence: runs every recipe of examples/domains (or those named) with `prunekit run
--json`, keeps each result next to its log under OUT/, and prints the docs/domains.md table: one
row per pruning stage with the headline metric dense, right after pruning and after the recovery
stage that follows, params, MACs, batch-1 latency and file size after the recipe, and wall time.

    scripts/domains_table.py [--out runs/domains] [--bin target/release/prunekit] [RECIPE ...]

A recipe whose JSON already exists under OUT/ is not run again (delete it to re-run).
"""
import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("recipes", nargs="*")
p.add_argument("--out", default="runs/domains")
p.add_argument("--bin", default="target/release/prunekit")
args = p.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
recipes = [Path(r) for r in args.recipes] or sorted(Path("examples/domains").glob("*.toml"))


def fmt(name, v):
    if v is None:
        return "-"
    if any(k in name for k in ("rmse", "mae", "perplexity", "loss", "auc", "ks", "return")):
        return f"{v:.4f}"
    return f"{100 * v:.2f}%"


def human(n):
    for unit, d in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= d:
            return f"{n / d:.2f}{unit}"
    return str(n)


rows = []
for r in recipes:
    res = out / f"{r.stem}.json"
    if not res.exists():
        t0 = time.time()
        proc = subprocess.run([args.bin, "run", str(r), "--json"], capture_output=True, text=True)
        (out / f"{r.stem}.log").write_text(proc.stderr)
        if proc.returncode != 0:
            print(f"{r}: FAILED: {proc.stderr.strip()[-500:]}", file=sys.stderr)
            continue
        v = json.loads(proc.stdout)
        v["wall_seconds"] = time.time() - t0
        res.write_text(json.dumps(v, indent=1))
        print(f"{r.stem}: {v['wall_seconds']:.0f} s", file=sys.stderr)
    v = json.loads(res.read_text())
    b, a = v["before"], v["after"]
    h = b.get("headline") or "accuracy"
    stages = v["stages"]
    for i, s in enumerate(stages):
        recovery = ("finetune", "dqn", "ddpg")
        if s["kind"] in recovery + ("sparse-train", "restart"):
            continue
        nxt = stages[i + 1] if i + 1 < len(stages) and stages[i + 1]["kind"] in recovery else None
        recal = (s.get("detail") or {}).get("recalibration") or {}
        right_after = recal.get("without", s.get(h))
        rows.append([
            r.stem, v["dataset"], f"{s['stage']}: {s['kind']}",
            h, fmt(h, b.get(h)), fmt(h, right_after), fmt(h, nxt.get(h) if nxt else None),
            (f"{human(b['nonzeros'])} -> {human((nxt or s)['nonzeros'])} nonzero"
             if s["kind"] in ("unstructured", "nm") else
             f"{human(b['params'])} -> {human((nxt or s)['params'])}"),
            f"{human(b['macs'])} -> {human(nxt['macs'] if nxt else s['macs'])}",
            f"{b['latency_ms']:.3f} -> {a['latency_ms']:.3f}",
            f"{b['file_bytes'] / 1024:.0f} -> {a['file_bytes'] / 1024:.0f}",
            f"{v.get('wall_seconds', 0):.0f}",
        ])

print(f"\nMeasured {datetime.date.today()}, release build, 2 threads; latency at batch 1 in ms, "
      "file size in KiB (our format: masked weights stored compressed, issue 16), latency and file size for the whole recipe (dense -> final model).\n")
print("| recipe | data | stage | metric | dense | right after pruning | after recovery "
      "| params | MACs | latency ms | file KiB | wall s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
