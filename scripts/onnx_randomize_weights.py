#!/usr/bin/env python3
"""Gives an ONNX model's generated weights random values, for a numeric check that means something.

The "light" model-zoo files of the onnx package build every weight with ConstantOfShape (one value
everywhere), so their outputs are nearly constant. This writes a copy in which each such weight is
an initializer of seeded normal values (He-scaled, sqrt(2 / fan_in), for rank >= 2; N(0, scale^2)
otherwise) (positive for BatchNormalization variances).
Usage: onnx_randomize_weights.py IN.onnx OUT.onnx [--seed 0] [--scale 0.05]
"""
import argparse

import numpy as np
import onnx
from onnx import numpy_helper


def main():
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=0.05)
    a = p.parse_args()
    m = onnx.load(a.src)
    rng = np.random.default_rng(a.seed)
    inits = {t.name: t for t in m.graph.initializer}
    variances = {n.input[4] for n in m.graph.node if n.op_type == "BatchNormalization" and len(n.input) > 4}
    keep = []
    for n in m.graph.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in inits:
            shape = numpy_helper.to_array(inits[n.input[0]]).astype(np.int64)
            # He-scaled for weight matrices and kernels, so activations neither vanish nor explode
            fan_in = int(np.prod(shape[1:])) if len(shape) >= 2 else 0
            std = np.sqrt(2.0 / fan_in) if fan_in > 0 else a.scale
            v = (rng.standard_normal(shape) * std).astype(np.float32)
            if n.output[0] in variances:
                v = 1.0 + np.abs(v)
            m.graph.initializer.append(numpy_helper.from_array(v, n.output[0]))
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    onnx.save(m, a.dst)


if __name__ == "__main__":
    main()
