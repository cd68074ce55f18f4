#!/usr/bin/env python3
"""Times PyTorch's CSR sparse x dense matmul (torch.sparse, CPU) on the Linear layers of
`prunekit bench --sparse`: W [out, in] with a random mask keeping (1 - sparsity) of its entries,
y = W x^T for x [batch, in], as torch.sparse.mm(W_csr, x^T). Same thread count and rule as the
prunekit side (median of N runs after warm-up). Prints one JSON object.
"""
import argparse
import json
import statistics
import time

import torch

CASES = [(512, 512), (2048, 2048)]
BATCHES = [1, 32]
SPARSITIES = [70, 90]


def median_ms(f, iters):
    for _ in range(3):
        f()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        f()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    results = []
    with torch.inference_mode():
        for out_f, in_f in CASES:
            for pct in SPARSITIES:
                w = torch.randn(out_f, in_f)
                w = w * (torch.rand(out_f, in_f) >= pct / 100).float()
                csr = w.to_sparse_csr()
                for b in BATCHES:
                    xt = torch.randn(b, in_f).t().contiguous()
                    ms = median_ms(lambda: torch.sparse.mm(csr, xt), max(a.iters, 100))
                    dense_ms = median_ms(lambda: torch.mm(w, xt), max(a.iters, 100))
                    results.append({"out": out_f, "in": in_f, "batch": b, "sparsity_pct": pct,
                                    "csr_ms": ms, "dense_ms": dense_ms})
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, "results": results}))


if __name__ == "__main__":
    main()
