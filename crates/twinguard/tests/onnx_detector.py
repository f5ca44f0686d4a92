"""A vendor's ONNX anomaly detector for the reference plant, made the way an ML team
outside twinguard would: numpy fits a PCA of the standardised signals on normal data,
and the `onnx` package writes the reconstruction as a graph (Sub, Div, Gemm, MatMul,
Mul, Add). Its threshold is a quantile of the smoothed reconstruction error on the
training data.

usage: onnx_detector.py NORMAL.csv OUT.onnx --exclude a,b,c [--variance 0.9]
       [--smoothing 5] [--quantile 0.999] [--margin 1.5] [--threshold T]

Prints the manifest's `onnx` interface (JSON) on stdout.
"""

import argparse
import csv
import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("normal")
    ap.add_argument("out")
    ap.add_argument("--exclude", default="")
    ap.add_argument("--variance", type=float, default=0.9)
    ap.add_argument("--smoothing", type=int, default=5)
    ap.add_argument("--quantile", type=float, default=0.999)
    ap.add_argument("--margin", type=float, default=1.5)
    ap.add_argument("--threshold", type=float, default=None)
    a = ap.parse_args()

    exclude = set(filter(None, a.exclude.split(","))) | {"time"}
    with open(a.normal, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    columns = [c for c in header if c not in exclude]
    idx = [header.index(c) for c in columns]
    x = np.array([[float(r[i]) for i in idx] for r in rows])
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    keep = sd > 1e-9
    columns = [c for c, k in zip(columns, keep) if k]
    x, mu, sd = x[:, keep], mu[keep], sd[keep]
    z = (x - mu) / sd
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    explained = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(explained, a.variance) + 1)
    p = vt[:k].T  # n x k

    residual = z - z @ p @ p.T
    spe = np.sum(residual**2, axis=1)
    smoothed = np.convolve(spe, np.ones(a.smoothing) / a.smoothing, mode="valid")
    threshold = a.threshold or float(np.quantile(smoothed, a.quantile) * a.margin)

    f32 = lambda v: np.asarray(v, dtype=np.float32)
    n = len(columns)
    nodes = [
        helper.make_node("Sub", ["x", "mu"], ["centred"]),
        helper.make_node("Div", ["centred", "sd"], ["z"]),
        helper.make_node("Gemm", ["z", "p"], ["scores"]),
        helper.make_node("MatMul", ["scores", "pt"], ["z_hat"]),
        helper.make_node("Mul", ["z_hat", "sd"], ["spread"]),
        helper.make_node("Add", ["spread", "mu"], ["x_hat"]),
    ]
    graph = helper.make_graph(
        nodes,
        "plant_pca_reconstruction",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, [1, n])],
        [
            numpy_helper.from_array(f32(mu), "mu"),
            numpy_helper.from_array(f32(sd), "sd"),
            numpy_helper.from_array(f32(p), "p"),
            numpy_helper.from_array(f32(p.T), "pt"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "acme-ml"
    onnx.checker.check_model(model)
    onnx.save(model, a.out)
    print(
        json.dumps(
            {
                "role": "detector",
                "columns": columns,
                "output": "reconstruction",
                "scale": sd.tolist(),
                "threshold": threshold,
                "smoothing": a.smoothing,
            }
        )
    )


if __name__ == "__main__":
    main()
