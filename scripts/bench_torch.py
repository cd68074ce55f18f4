#!/usr/bin/env python3
"""Times the benchmark networks in PyTorch on the CPU, with the same shapes, thread count and
measurement rule as `prunekit bench` (median of N runs after warm-up). Prints one JSON object.

Networks (identical to prunekit's zoo): reference-cnn (3x32x32: conv 16 + BN + ReLU + max-pool,
conv 32 + BN + ReLU + max-pool, linear 10) and resnet20 (CIFAR ResNet-20 with 1x1 projection
shortcuts). Measures: a training step (forward, cross-entropy, backward, plain SGD update) at the
given batches, and eval-mode inference under torch.inference_mode() at the given batches.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def reference_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2048, 10),
    )


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = self.b2(self.c2(h))
        return F.relu(h + (x if self.short is None else self.short(x)))


def resnet(n):
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for stage, width in enumerate([16, 32, 64]):
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(Block(cin, width, stride))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


MODELS = {"reference-cnn": reference_cnn, "resnet20": lambda: resnet(3)}


def median_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def rss_kb():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            fields[key] = rest.split()
    return int(fields["VmRSS"][0]), int(fields["VmHWM"][0])


def peak_memory(spec):
    """Resident-set high-water mark minus the resident set before the first of 3 training steps."""
    name, batch = spec.split(":")
    b = int(batch)
    model = MODELS[name]()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(b, 3, 32, 32)
    y = torch.arange(b) % 10
    model.train()
    baseline, _ = rss_kb()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    _, peak = rss_kb()
    return {"model": name, "batch": b, "baseline_kb": baseline, "peak_kb": peak, "delta_kb": peak - baseline}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--models", default="reference-cnn,resnet20")
    ap.add_argument("--train-batches", default="32,128")
    ap.add_argument("--infer-batches", default="1,64")
    ap.add_argument("--memory", metavar="MODEL:BATCH", help="only measure the peak memory of 3 training steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory:
        print(json.dumps(peak_memory(args.memory)))
        return
    results = []
    for name in args.models.split(","):
        model = MODELS[name]()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for b in [int(v) for v in args.train_batches.split(",")]:
            x = torch.randn(b, 3, 32, 32)
            y = torch.arange(b) % 10
            model.train()

            def step():
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()

            results.append({"model": name, "measure": "train", "batch": b, "ms": median_ms(step, args.warmup, args.iters)})
        model.eval()
        for b in [int(v) for v in args.infer_batches.split(",")]:
            x = torch.randn(b, 3, 32, 32)

            def infer():
                with torch.inference_mode():
                    model(x)

            results.append({"model": name, "measure": "infer", "batch": b, "ms": median_ms(infer, args.warmup, args.iters)})
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results, "peak_rss_kb": peak_kb}))


if __name__ == "__main__":
    main()
