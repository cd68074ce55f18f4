#!/usr/bin/env python3
"""prunekit against Torch-Pruning on the same PyTorch checkpoint (issue 12, section 6).

ResNet-20 (the zoo's, for 1x28x28 inputs) is trained on Fashion-MNIST in PyTorch (or the cached
checkpoint OUT/dense.pt is reused), saved as a state dict, and then:
  - Torch-Pruning (DepGraph, MetaPruner, group L2 magnitude) prunes it to --macs-ratio fewer MACs,
  - prunekit imports the same .pt and prunes it to the same MACs with each --criteria,
and both fine-tune with the same budget (--ft-epochs, SGD, cosine, --ft-lr, batch 64, no
augmentation). Reported: accuracy right after pruning, after fine-tuning, latency at batch 1 and
64 (median of 30 after 5 warm-up runs, 2 threads), all in this one run.

Needs .venv-torch with torch and torch-pruning (`.venv-torch/bin/pip install torch-pruning`),
Fashion-MNIST (scripts/install-data.sh) and a release prunekit (`cargo build --release`).
Usage: .venv-torch/bin/python scripts/torch_pruning_compare.py [--out runs/tp] [--train-epochs 4]
"""
import argparse
import copy
import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from torch_rebuild import rebuild  # noqa: E402

import torch_pruning as tp  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"


def idx(path):
    with gzip.open(path) as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion():
    """prunekit's preprocessing: pixel / 255, one mean and population std from the training set."""
    xtr = idx(f"{DATA}/train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    ytr = idx(f"{DATA}/train-labels-idx1-ubyte.gz").astype(np.int64)
    xte = idx(f"{DATA}/t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    yte = idx(f"{DATA}/t10k-labels-idx1-ubyte.gz").astype(np.int64)
    mean, std = xtr.mean(dtype=np.float64), xtr.std(dtype=np.float64)
    norm = lambda x: torch.from_numpy(((x - mean) / std).astype(np.float32)[:, None])  # noqa: E731
    return norm(xtr), torch.from_numpy(ytr), norm(xte), torch.from_numpy(yte)


def accuracy(model, x, y, batch=500):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return 100.0 * correct / len(x)


def train(model, x, y, epochs, lr, batch, seed, augment):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            j = perm[i:i + batch]
            xb, yb = x[j], y[j]
            if augment:
                xb = F.pad(xb, (2, 2, 2, 2))
                dx, dy = np.random.randint(0, 5, 2)
                xb = xb[:, :, dy:dy + 28, dx:dx + 28]
                if np.random.rand() < 0.5:
                    xb = xb.flip(3)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def latency_ms(model, batch, runs=30):
    model.eval()
    x = torch.randn(batch, 1, 28, 28)
    with torch.no_grad():
        for _ in range(5):
            model(x)
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            model(x)
            ts.append((time.perf_counter() - t) * 1000)
    return float(np.median(ts))


def macs(model):
    m, _ = tp.utils.count_ops_and_params(model, torch.randn(1, 1, 28, 28))
    return m


def tp_prune(dense, ratio):
    model = copy.deepcopy(dense)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(
        model, torch.randn(1, 1, 28, 28), importance=imp, pruning_ratio=ratio,
        ignored_layers=[model.classifier],
    )
    pruner.step()
    return model


def pk(args, *cmd):
    out = subprocess.run([args.prunekit, *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"prunekit {' '.join(cmd)} failed: {out.stderr}")
    return out.stdout


def pk_json(args, *cmd):
    return json.loads(pk(args, *cmd, "--json"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/tp")
    p.add_argument("--prunekit", default="target/release/prunekit")
    p.add_argument("--train-epochs", type=int, default=4)
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--macs-ratio", type=float, default=2.1)
    p.add_argument("--criteria", default="taylor,l2")
    a = p.parse_args()
    torch.set_num_threads(2)
    os.makedirs(a.out, exist_ok=True)
    arch = os.path.join(a.out, "arch")
    if not os.path.exists(arch):
        pk(a, "zoo", "create", "resnet20", "--input", "1,28,28", "-o", arch)
    init = os.path.join(a.out, "init.pt")
    pk(a, "export", arch, "-o", init)
    xtr, ytr, xte, yte = fashion()
    dense_pt = os.path.join(a.out, "dense.pt")
    dense = rebuild(init + ".widths.json")
    if os.path.exists(dense_pt):
        dense.load_state_dict(torch.load(dense_pt, weights_only=True), strict=True)
    else:
        dense.load_state_dict(torch.load(init, weights_only=True), strict=True)
        t = time.time()
        train(dense, xtr, ytr, a.train_epochs, 0.1, 128, 0, augment=True)
        print(f"trained {a.train_epochs} epochs in {time.time() - t:.0f} s", file=sys.stderr)
        torch.save(dense.state_dict(), dense_pt)
        with open(dense_pt + ".widths.json", "w") as f:
            f.write(open(init + ".widths.json").read())
    rows = []
    base_macs = macs(dense)
    dense_acc = accuracy(dense, xte, yte)
    rows.append({"method": "dense (PyTorch)", "macs": base_macs, "right_after": dense_acc,
                 "after_ft": dense_acc, "lat1": latency_ms(dense, 1), "lat64": latency_ms(dense, 64)})
    target = base_macs / a.macs_ratio

    # Torch-Pruning: the ratio that reaches the MACs target
    lo, hi = 0.0, 0.9
    for _ in range(12):
        mid = (lo + hi) / 2
        if macs(tp_prune(dense, mid)) > target:
            lo = mid
        else:
            hi = mid
    model = tp_prune(dense, hi)
    right = accuracy(model, xte, yte)
    t = time.time()
    train(model, xtr, ytr, a.ft_epochs, a.ft_lr, 64, 1, augment=False)
    ft_s = time.time() - t
    tp_macs = macs(model)
    rows.append({"method": "Torch-Pruning (group L2, MetaPruner)", "ratio": hi, "macs": tp_macs,
                 "right_after": right, "after_ft": accuracy(model, xte, yte), "ft_seconds": ft_s,
                 "lat1": latency_ms(model, 1), "lat64": latency_ms(model, 64)})

    # prunekit on the same checkpoint
    pk_dense = pk_json(a, "eval", dense_pt, "--arch", arch, "--data", "fashion-mnist")
    for crit in a.criteria.split(","):
        lo, hi = 0.0, 0.9
        out_dir = os.path.join(a.out, f"pk-{crit}")
        for _ in range(8):
            mid = (lo + hi) / 2
            r = pk_json(a, "prune", dense_pt, "--arch", arch, "-o", out_dir, "--structured", f"{mid:.4f}",
                        "--criterion", crit, "--calib", "fashion-mnist", "--no-recalibrate")
            # the MACs Torch-Pruning reached (its channel steps overshoot --macs-ratio), in
            # prunekit's count (which also counts BatchNorm-free adds the same way)
            if r["after"]["macs"] > pk_dense["macs"] * tp_macs / base_macs:
                lo = mid
            else:
                hi = mid
        res = {}
        for recal in (False, True):
            flags = [] if recal else ["--no-recalibrate"]
            r = pk_json(a, "prune", dense_pt, "--arch", arch, "-o", out_dir, "--structured", f"{hi:.4f}",
                        "--criterion", crit, "--calib", "fashion-mnist", *flags)
            e = pk_json(a, "eval", out_dir, "--data", "fashion-mnist")
            res[recal] = (r, e)
        r, e = res[True]
        t = time.time()
        ft = pk_json(a, "finetune", out_dir, "-o", out_dir + "-ft", "--data", "fashion-mnist",
                     "--epochs", str(a.ft_epochs), "--batch-size", "64", "--lr", str(a.ft_lr))
        ft_s = time.time() - t
        e1 = pk_json(a, "eval", out_dir + "-ft", "--data", "fashion-mnist", "--latency-batch", "1")
        e64 = pk_json(a, "eval", out_dir + "-ft", "--data", "fashion-mnist", "--latency-batch", "64")
        rows.append({"method": f"prunekit ({crit})", "ratio": hi, "macs": e["macs"],
                     "right_after_no_recal": 100 * res[False][1]["accuracy"],
                     "right_after": 100 * e["accuracy"], "after_ft": 100 * e1["accuracy"],
                     "ft_seconds": ft_s, "lat1": e1["latency"]["median_ms"],
                     "lat64": e64["latency_batch"]["median_ms"],
                     "finetune": ft.get("seconds")})
    rows.append({"method": "dense (prunekit, same .pt)", "macs": pk_dense["macs"],
                 "right_after": 100 * pk_dense["accuracy"], "after_ft": 100 * pk_dense["accuracy"]})
    with open(os.path.join(a.out, "table.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print("| method | MACs | fewer MACs | right after pruning | after fine-tuning | latency b1 (ms) | latency b64 (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ra = f"{r['right_after']:.2f}%"
        if "right_after_no_recal" in r:
            ra = f"{r['right_after_no_recal']:.2f}% ({ra} re-calibrated)"
        lat = lambda k: f"{r[k]:.2f}" if k in r and r[k] is not None else ""  # noqa: E731
        print(f"| {r['method']} | {r['macs'] / 1e6:.2f}M | {base_macs / r['macs']:.2f}x | {ra} | "
              f"{r['after_ft']:.2f}% | {lat('lat1')} | {lat('lat64')} |")


if __name__ == "__main__":
    main()
