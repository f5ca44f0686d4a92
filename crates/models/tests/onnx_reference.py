"""Reference ONNX graphs and their outputs, made by the `onnx` package and run by
ONNX Runtime (neither written here), for checking twinguard's runtime against.

usage: onnx_reference.py OUT_DIR

Writes OUT_DIR/mlp.onnx (an autoencoder-shaped network over the operators a detector
commonly uses), OUT_DIR/score.onnx (one that outputs a single score) and
OUT_DIR/cases.json: for each graph, rows of input and ONNX Runtime's first output.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

N = 6
rng = np.random.default_rng(20261126)


def const(name, a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def mlp(path):
    mu = rng.normal(0, 5, N)
    sd = rng.uniform(0.5, 3, N)
    w1 = rng.normal(0, 0.5, (4, N))  # Gemm with transB
    b1 = rng.normal(0, 0.1, 4)
    w2 = rng.normal(0, 0.5, (4, 3))
    b2 = rng.normal(0, 0.1, 3)
    w3 = rng.normal(0, 0.5, (3, N))
    nodes = [
        helper.make_node("Sub", ["x", "mu"], ["c"]),
        helper.make_node("Div", ["c", "sd"], ["z"]),
        helper.make_node("Gemm", ["z", "w1", "b1"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["h2b"]),
        helper.make_node("Tanh", ["h2b"], ["t2"]),
        helper.make_node("MatMul", ["t2", "w3"], ["h3"]),
        helper.make_node("Sigmoid", ["h3"], ["s3"]),
        helper.make_node("Mul", ["s3", "sd"], ["y0"]),
        helper.make_node("Add", ["y0", "mu"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [const("mu", mu), const("sd", sd), const("w1", w1), const("b1", b1),
         const("w2", w2), const("b2", b2), const("w3", w3)],
    )
    return save(graph, path)


def score(path):
    w = rng.normal(0, 1, (N, N))
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("ReduceSumSquare", ["h"], ["s"], axes=[1], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "score",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1])],
        [const("w", w)],
    )
    return save(graph, path)


def main():
    out = sys.argv[1]
    cases = {}
    for name, make in (("mlp", mlp), ("score", score)):
        path = make(f"{out}/{name}.onnx")
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        rows = rng.normal(0, 4, (40, N)).astype(np.float32)
        outputs = [session.run(None, {"x": r[None, :]})[0].ravel().tolist() for r in rows]
        cases[name] = {"inputs": rows.tolist(), "outputs": outputs}
    with open(f"{out}/cases.json", "w") as f:
        json.dump(cases, f)


if __name__ == "__main__":
    main()
