#!/usr/bin/env python3
"""Issue-4 evidence: criterion x granularity on a trained model, each pruned and then fine-tuned with
the same budget, plus gradual vs one-shot, distillation vs plain fine-tuning, and a lottery ticket
(rewound vs re-initialised). Every row is one `prunekit run` of a generated recipe (written next to
its JSON result under OUT/), so any row can be re-run by hand.

    scripts/criteria_table.py --model runs/r20-dense --data fashion-mnist --out runs/criteria \
        [--train-limit 6000] [--test-limit 2000] [--bin target/release/prunekit]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--data", default="fashion-mnist")
p.add_argument("--out", default="runs/criteria")
p.add_argument("--train-limit", type=int, default=6000)
p.add_argument("--test-limit", type=int, default=2000)
p.add_argument("--epochs", type=int, default=1, help="fine-tune budget (epochs over the train subset)")
p.add_argument("--lr", type=float, default=0.01)
p.add_argument("--structured", type=float, default=0.32, help="ratio giving ~2x fewer MACs")
p.add_argument("--bin", default="target/release/prunekit")
p.add_argument("--only", default="", help="comma-separated sections: table,gradual,distill,lottery")
args = p.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
sections = set(args.only.split(",")) if args.only else {"table", "gradual", "distill", "lottery"}


def header(model_path=True, arch=None):
    m = f'path = "{Path(args.model).resolve()}"' if model_path else f'arch = "{arch}"\ninput = [1, 28, 28]'
    return (f"[model]\n{m}\n\n[data]\nname = \"{args.data}\"\ntrain_limit = {args.train_limit}\n"
            f"test_limit = {args.test_limit}\ncalib_batches = 4\ncalib_batch_size = 64\n\n")


def finetune(distill=None):
    d = f"distill = {{ temperature = {distill[0]}, alpha = {distill[1]} }}\n" if distill else ""
    return (f"[[stage]]\nkind = \"finetune\"\nepochs = {args.epochs}\nlr = {args.lr}\n"
            f"batch_size = 64\n{d}\n")


def run(name, text):
    path = out / f"{name}.toml"
    path.write_text(text)
    res = out / f"{name}.json"
    if res.exists():
        return json.loads(res.read_text())
    t0 = time.time()
    r = subprocess.run([args.bin, "run", str(path), "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{name}: FAILED: {r.stderr.strip()}", file=sys.stderr)
        return None
    v = json.loads(r.stdout)
    v["wall_seconds"] = time.time() - t0
    res.write_text(json.dumps(v, indent=1))
    print(f"{name}: done in {v['wall_seconds']:.0f} s", file=sys.stderr)
    return v


def pct(x):
    return "-" if x is None else f"{100 * x:.2f}%"


rows = []
if "table" in sections:
    unstructured = {"l1": "layer", "random": "layer", "taylor": "layer", "fisher": "layer",
                    "snip": "layer", "movement": "layer", "lamp": "global", "wanda": "row"}
    plan = []
    for crit, scope in unstructured.items():
        for s in (0.5, 0.8, 0.9):
            plan.append((f"unstructured {int(s*100)}%", crit,
                         f"[[stage]]\nkind = \"unstructured\"\ntarget = {s}\ncriterion = \"{crit}\"\nscope = \"{scope}\"\n\n"))
    for crit in ("l1", "random", "taylor", "fisher", "snip", "wanda"):
        plan.append(("2:4", crit, f"[[stage]]\nkind = \"nm\"\nn = 2\nm = 4\ncriterion = \"{crit}\"\nexclude = [\"conv2d1\"]\n\n"))
    for crit in ("l1", "l2", "random", "taylor", "fisher", "snip", "fpgm", "bn-scale"):
        plan.append((f"structured {args.structured}", crit,
                     f"[[stage]]\nkind = \"structured\"\nratio = {args.structured}\ncriterion = \"{crit}\"\n\n"))
    for gran, crit, stage in plan:
        name = f"{gran.replace(' ', '-').replace(':', 'of').replace('%', '')}-{crit}"
        v = run(name, header() + stage + finetune())
        if v is None:
            rows.append((gran, crit, None, None, None, None, None))
            continue
        s1, s2 = v["stages"][0], v["stages"][1]
        recal = s1.get("detail", {}).get("recalibration") or {}
        rows.append((gran, crit, v["before"]["accuracy"], recal.get("without", recal.get("accuracy_without")), s1["accuracy"],
                     s2["accuracy"], s2["macs"] / v["before"]["macs"]))
    print("\n| granularity | criterion | dense | right after pruning | + BatchNorm re-calibration "
          "| after fine-tune | MACs after/before |")
    print("|---|---|---|---|---|---|---|")
    for gran, crit, b, a0, a1, a2, macs in rows:
        print(f"| {gran} | {crit} | {pct(b)} | {pct(a0)} | {pct(a1)} | {pct(a2)} "
              f"| {'-' if macs is None else f'{macs:.2f}x'} |")
    best = {}
    for gran, crit, _, _, _, a2, _ in rows:
        if a2 is not None and (gran not in best or a2 > best[gran][1]):
            best[gran] = (crit, a2)
    print("\nbest after fine-tuning: " + "; ".join(f"{g}: {c} ({pct(a)})" for g, (c, a) in best.items()))

if "gradual" in sections:
    one = run("gradual-vs-oneshot-oneshot", header()
              + "[[stage]]\nkind = \"unstructured\"\ntarget = 0.9\ncriterion = \"l1\"\n\n" + finetune())
    grad = run("gradual-vs-oneshot-gradual", header()
               + "[[stage]]\nkind = \"unstructured\"\ntarget = 0.9\ncriterion = \"l1\"\nschedule = \"gradual\"\n"
               f"[stage.train]\nepochs = {args.epochs}\nlr = {args.lr}\nbatch_size = 64\n\n")
    if one and grad:
        print(f"\n90% unstructured, same training budget: one-shot + fine-tune {pct(one['stages'][1]['accuracy'])}"
              f", gradual {pct(grad['stages'][0]['accuracy'])} (dense {pct(one['before']['accuracy'])})")

if "distill" in sections:
    st = f"[[stage]]\nkind = \"structured\"\nratio = {args.structured}\ncriterion = \"l1\"\n\n"
    plain = run("distill-plain", header() + st + finetune())
    kd = run("distill-kd", header() + st + finetune((4.0, 0.7)))
    if plain and kd:
        print(f"\nstructured {args.structured} (MACs {kd['stages'][1]['macs'] / kd['before']['macs']:.2f}x): "
              f"fine-tune {pct(plain['stages'][1]['accuracy'])}, with distillation (T=4, alpha=0.7) "
              f"{pct(kd['stages'][1]['accuracy'])}; right after pruning {pct(kd['stages'][0]['accuracy'])}")

if "lottery" in sections:
    arch = "resnet20"
    res = {}
    for reinit in (False, True):
        text = (header(False, arch)
                + f"[[stage]]\nkind = \"lottery\"\ntarget = 0.8\nrounds = 2\nrewind_step = 20\nreinit = {str(reinit).lower()}\n"
                f"[stage.train]\nepochs = 2\nlr = 0.05\nbatch_size = 64\n")
        res[reinit] = run(f"lottery-{'reinit' if reinit else 'rewind'}", text)
    if res[False] and res[True]:
        d = res[False]["stages"][0]["detail"]
        print(f"\nlottery ticket at 80% (resnet20, 2 rounds, rewind to step 20): dense {pct(d.get('dense', d.get('dense_accuracy')))}, "
              f"rewound ticket {pct(res[False]['stages'][0]['accuracy'])}, random re-init "
              f"{pct(res[True]['stages'][0]['accuracy'])}")
