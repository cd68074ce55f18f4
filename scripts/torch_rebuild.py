#!/usr/bin/env python3
"""Builds a torch.nn.Module from the widths file prunekit writes next to a state dict
(`prunekit export MODEL -o m.pt` writes m.pt and m.pt.widths.json), so a pruned model runs in PyTorch:

    from torch_rebuild import rebuild
    model = rebuild("m.pt.widths.json")
    model.load_state_dict(torch.load("m.pt", weights_only=True), strict=True)

Every op of prunekit's graph without attention maps to the torch module or function that computes
it, with prunekit's per-sample axes shifted by the batch axis. As a command:

    torch_rebuild.py m.pt [--onnx OUT.onnx] [--check X.npy... --expect Y.npy]

loads the state dict strictly, optionally runs it on .npy inputs and compares with the expected
outputs (max |a - b| / max |b|), and optionally exports it with torch.onnx.export (opset 17) so
prunekit can import what PyTorch's exporter writes. Prints one JSON line.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch import nn


def _axis(a):
    """prunekit's per-sample axis -> torch's (the batch axis is 0)."""
    return a if a < 0 else a + 1


class Fn(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, *xs):
        return self.f(*xs)


class Positional(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(op["max_len"], op["dim"]))

    def forward(self, x):
        return x + self.weight[: x.shape[1]]


def _module(op, in_rank):
    t = op["type"]
    if t == "linear":
        return nn.Linear(op["in_features"], op["out_features"], bias=op.get("bias", True))
    if t in ("conv2d", "conv1d"):
        cls = nn.Conv2d if t == "conv2d" else nn.Conv1d
        k = tuple(op["kernel"]) if t == "conv2d" else op["kernel"]
        return cls(op["in_channels"], op["out_channels"], k, stride=op.get("stride", 1),
                   padding=op.get("padding", 0), dilation=op.get("dilation", 1),
                   groups=op.get("groups", 1), bias=op.get("bias", True))
    if t == "batch_norm":
        cls = nn.BatchNorm2d if in_rank == 3 else nn.BatchNorm1d
        return cls(op["num_features"], eps=op.get("eps", 1e-5), momentum=op.get("momentum", 0.1),
                   affine=op.get("affine", True))
    if t == "layer_norm":
        return nn.LayerNorm(op["normalized_shape"], eps=op.get("eps", 1e-5),
                            elementwise_affine=op.get("affine", True))
    if t == "rms_norm":
        return nn.RMSNorm(op["dim"], eps=op.get("eps", 1e-6))
    if t == "group_norm":
        return nn.GroupNorm(op["num_groups"], op["num_channels"], eps=op.get("eps", 1e-5),
                            affine=op.get("affine", True))
    if t == "embedding":
        return nn.Embedding(op["num_embeddings"], op["embedding_dim"])
    if t == "positional_embedding":
        return Positional(op)
    if t in ("lstm", "gru"):
        # registered as it is, so its parameters are `node.weight_ih_l0` ...; the forward of
        # `Rebuilt` keeps every step or the last one
        cls = nn.LSTM if t == "lstm" else nn.GRU
        return cls(op["input_size"], op["hidden_size"], batch_first=True)
    if t == "relu":
        return nn.ReLU()
    if t == "gelu":
        return nn.GELU(approximate=op.get("approximate", "none"))
    if t == "silu":
        return nn.SiLU()
    if t == "tanh":
        return nn.Tanh()
    if t == "sigmoid":
        return nn.Sigmoid()
    if t == "softmax":
        return nn.Softmax(dim=_axis(op.get("axis", -1)))
    if t == "dropout":
        return nn.Dropout(op.get("p", 0.5))
    if t == "flatten":
        return nn.Flatten(1)
    if t == "reshape":
        shape = op["shape"]
        return Fn(lambda x: x.reshape(x.shape[0], *shape))
    if t == "narrow":
        a, s, n = _axis(op["axis"]), op["start"], op["len"]
        return Fn(lambda x: x.narrow(a, s, n))
    if t in ("max_pool2d", "avg_pool2d"):
        k = tuple(op["kernel"])
        s = tuple(op.get("stride") or op["kernel"])
        p = tuple(op.get("padding", [0, 0]))
        if t == "max_pool2d":
            return nn.MaxPool2d(k, s, p)
        return nn.AvgPool2d(k, s, p, count_include_pad=True)
    if t == "global_avg_pool":
        return Fn(lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1) if x.dim() == 4 else x.mean(2))
    if t == "add":
        return Fn(lambda *xs: _fold(xs, torch.add))
    if t == "mul":
        return Fn(lambda *xs: _fold(xs, torch.mul))
    if t == "concat":
        a = op.get("axis", 0)
        return Fn(lambda *xs: torch.cat(xs, dim=_axis(a)))
    raise ValueError(f"prunekit op `{t}` has no PyTorch form in this script")


def _fold(xs, f):
    """prunekit's broadcasting: lower-rank inputs get unit axes after the batch axis."""
    rank = max(x.dim() for x in xs)
    xs = [x if x.dim() == rank else x.reshape(x.shape[0], *([1] * (rank - x.dim())), *x.shape[1:]) for x in xs]
    acc = xs[0]
    for x in xs[1:]:
        acc = f(acc, x)
    return acc


class Rebuilt(nn.Module):
    """A module per prunekit node, registered under its PyTorch path (`a.b.c`), run in order."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        ranks = {i["name"]: len(i["shape"]) for i in spec["inputs"]}
        self._mods = {}
        for n in spec["nodes"]:
            in_rank = ranks.get(n["inputs"][0], 0) if n["inputs"] else 0
            m = _module(n["op"], in_rank)
            self._register(n["module"], m)
            self._mods[n["name"]] = m
            ranks[n["name"]] = _out_rank(n["op"], in_rank)

    def _register(self, path, m):
        parts = path.split(".")
        parent = self
        for p in parts[:-1]:
            if not hasattr(parent, p):
                parent.add_module(p, nn.Module())
            parent = getattr(parent, p)
        parent.add_module(parts[-1], m)

    def forward(self, *inputs):
        vals = {i["name"]: x for i, x in zip(self.spec["inputs"], inputs)}
        for n in self.spec["nodes"]:
            y = self._mods[n["name"]](*[vals[i] for i in n["inputs"]])
            if n["op"]["type"] in ("lstm", "gru"):
                y = y[0] if n["op"].get("return_sequences", True) else y[0][:, -1]
            vals[n["name"]] = y
        outs = [vals[o] for o in self.spec["outputs"]]
        return outs[0] if len(outs) == 1 else tuple(outs)


def _out_rank(op, in_rank):
    t = op["type"]
    if t in ("flatten", "global_avg_pool"):
        return 1
    if t == "reshape":
        return len(op["shape"])
    if t == "embedding":
        return in_rank + 1
    if t in ("lstm", "gru"):
        return 2 if op.get("return_sequences", True) else 1
    return in_rank


def rebuild(widths_path):
    with open(widths_path) as f:
        return Rebuilt(json.load(f))


def main():
    import numpy as np

    p = argparse.ArgumentParser()
    p.add_argument("state_dict")
    p.add_argument("--widths")
    p.add_argument("--onnx")
    p.add_argument("--check", nargs="*", default=[])
    p.add_argument("--expect")
    p.add_argument("--dynamo", action="store_true", help="use torch.onnx's dynamo exporter")
    a = p.parse_args()
    model = rebuild(a.widths or a.state_dict + ".widths.json")
    sd = torch.load(a.state_dict, weights_only=True)
    model.load_state_dict(sd, strict=True)
    model.eval()
    out = {"state_dict": a.state_dict, "strict_load": True, "params": sum(t.numel() for t in sd.values())}
    xs = []
    for path, spec in zip(a.check, model.spec["inputs"]):
        x = np.load(path)
        xs.append(torch.from_numpy(x.astype(np.int64) if spec["kind"] == "ids" else x.astype(np.float32)))
    if xs and a.expect:
        with torch.no_grad():
            y = model(*xs)
        y = y[0] if isinstance(y, tuple) else y
        want = torch.from_numpy(np.load(a.expect).astype(np.float32))
        out["rel_error"] = float((y - want).abs().max() / want.abs().max().clamp_min(1e-12))
    if a.onnx:
        if not xs:
            xs = []
            for spec in model.spec["inputs"]:
                shape = [2, *spec["shape"]]
                xs.append(torch.zeros(shape, dtype=torch.int64) if spec["kind"] == "ids" else torch.randn(shape))
        names = [i["name"] for i in model.spec["inputs"]]
        if a.dynamo:
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            torch.onnx.export(model, tuple(xs), a.onnx, input_names=names, output_names=["output"],
                              dynamic_shapes=(tuple({0: batch} for _ in xs),),
                              opset_version=18, dynamo=True, optimize=True)
        else:
            torch.onnx.export(model, tuple(xs), a.onnx, input_names=names, output_names=["output"],
                              dynamic_axes={n: {0: "batch"} for n in names + ["output"]},
                              opset_version=17, dynamo=False)
        out["onnx"] = a.onnx
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
