#!/usr/bin/env python3
"""Runs an ONNX model in onnxruntime on .npy inputs and compares its outputs with expected .npy arrays.

Usage: ort_check.py MODEL.onnx --inputs X0.npy [X1.npy ...] --expect Y0.npy [Y1.npy ...] [--tol 1e-4]
       [--no-checker]

The model is first checked with onnx.checker.check_model(full_check=True) (the `onnx` package;
"checker": "skipped" without it, or with --no-checker, for third-party files written to an older
IR than the checker holds them to, e.g. initializers not listed as graph inputs before IR 4). The error of an output is max |ort - expected| / max |expected|
(relative to the output's scale). Prints one JSON line {"model", "checker", "outputs": [{"name",
"shape", "max_abs", "rel_error"}], "ok"}; exits 0 when every output is within --tol, 1 when one is
not, 2 on a usage, checker or load error.
"""
import argparse
import json
import sys

import numpy as np
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--expect", nargs="+", required=True)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--no-checker", action="store_true")
    a = p.parse_args()
    try:
        import onnx

        if a.no_checker:
            raise ImportError
        onnx.checker.check_model(a.model, full_check=True)
        checker = "passed"
    except ImportError:
        checker = "skipped"
    except Exception as e:  # noqa: BLE001 - any checker failure fails the model
        print(json.dumps({"model": a.model, "error": f"onnx.checker: {e}"}))
        return 2
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - report any load failure as a usage error
        print(json.dumps({"model": a.model, "error": str(e)}))
        return 2
    feeds = {}
    for spec, path in zip(sess.get_inputs(), a.inputs):
        x = np.load(path)
        if "int" in spec.type:
            x = x.astype(np.int64)
        else:
            x = x.astype(np.float32)
        feeds[spec.name] = x
    outs = sess.run(None, feeds)
    report, ok = [], True
    for spec, y, path in zip(sess.get_outputs(), outs, a.expect):
        want = np.load(path).astype(np.float32)
        if y.shape != want.shape:
            report.append({"name": spec.name, "shape": list(y.shape), "expected_shape": list(want.shape)})
            ok = False
            continue
        diff = float(np.max(np.abs(y - want))) if y.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        rel = diff / max(scale, 1e-12)
        report.append({"name": spec.name, "shape": list(y.shape), "max_abs": diff, "rel_error": rel})
        ok = ok and rel <= a.tol
    print(json.dumps({"model": a.model, "checker": checker, "outputs": report, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
