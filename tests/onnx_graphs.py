"""Hand-made ONNX files for tests/test_onnx.py and tests/test_hostile.py: a small graph shaped
like trainlab's exports (uint8 images -> Cast, Flatten, Gemm, Softmax -> probabilities)
with trainlab's metadata, and hostile variants of it (made with onnx.helper)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PIXELS = 28 * 28


def metadata(classes: int = 10) -> dict:
    """What onnx_export.metadata writes for a 1x28x28 mlp."""
    return {"format": "onnx", "model_spec": {"name": "mlp", "kwargs": {}, "input_shape": [1, 28, 28],
                                             "num_classes": classes},
            "classes": [str(i) for i in range(classes)],
            "input": {"name": "images", "dtype": "uint8", "shape": ["N", 1, 28, 28], "layout": "N,C,H,W"},
            "output": {"name": "probabilities", "dtype": "float32", "shape": ["N", classes], "meaning": "x"},
            "preprocessing": {"inside_the_graph": True, "formula": "x", "mean": [0.5], "std": [0.25],
                              "tta_flip": False},
            "opset": 17, "trainlab_version": "0", "source": "model.pt"}


def head(logits: str = "logits"):
    """images -> logits (N, 10): the nodes and initializers every variant starts with."""
    w = numpy_helper.from_array(np.full((PIXELS, 10), 1e-3, np.float32), "W")
    b = numpy_helper.from_array(np.arange(10, dtype=np.float32), "B")
    nodes = [helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "B"], [logits])]
    return nodes, [w, b]


def save(path: Path, nodes, inits, meta=None, *, in_shape=("N", 1, 28, 28), opsets=(("", 17),),
         meta_text: str | None = None, last: str = "logits") -> Path:
    """A model: `nodes` then Softmax(`last`) -> probabilities, with trainlab's metadata."""
    nodes = [*nodes, helper.make_node("Softmax", [last], ["probabilities"], axis=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.UINT8, list(in_shape))],
                          [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
                          list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    m.ir_version = 8
    text = meta_text if meta_text is not None else json.dumps(metadata() if meta is None else meta)
    if text != "":
        helper.set_model_props(m, {"trainlab": text})
    path.write_bytes(m.SerializeToString())
    return path


def good(path: Path) -> Path:
    nodes, inits = head()
    return save(path, nodes, inits)


def slow(path: Path, layers: int = 3000) -> Path:
    """Every check passes, yet it runs for minutes: `layers` 784x784 Gemms sharing one weight."""
    nodes, inits = head()
    sq = numpy_helper.from_array(np.eye(PIXELS, dtype=np.float32), "SQ")
    chain = [helper.make_node("Gemm", [f"h{i}", "SQ"], [f"h{i + 1}"]) for i in range(layers)]
    nodes = [nodes[0], nodes[1], helper.make_node("Identity", ["f"], ["h0"]), *chain,
             helper.make_node("Gemm", [f"h{layers}", "W", "B"], ["logits"])]
    return save(path, nodes, [*inits, sq])


def _body(name, inputs, outputs, nodes):
    return helper.make_graph(nodes, name, inputs, outputs)


def hostile(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase of the sentence that refuses it)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str]] = {}
    f32, i64, b = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL

    def add(name, phrase, nodes, inits, **kw):
        out[name] = (save(folder / f"{name}.onnx", nodes, inits, **kw), phrase)

    nodes, inits = head()
    # a Loop of 2**62 iterations: runs for ever in ONNX Runtime
    body = _body("body", [helper.make_tensor_value_info("i", i64, []), helper.make_tensor_value_info("c", b, []),
                          helper.make_tensor_value_info("v", f32, None)],
                 [helper.make_tensor_value_info("c2", b, []), helper.make_tensor_value_info("v2", f32, None)],
                 [helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Identity", ["v"], ["v2"])])
    add("loop", "'Loop' is not one trainlab exports",
        [*nodes, helper.make_node("Loop", ["M", "T", "logits"], ["looped"], body=body)],
        [*inits, numpy_helper.from_array(np.array(2**62, np.int64), "M"),
         numpy_helper.from_array(np.array(True), "T")], last="looped")
    scan_body = _body("sb", [helper.make_tensor_value_info("s", f32, [10])],
                      [helper.make_tensor_value_info("s2", f32, [10])], [helper.make_node("Identity", ["s"], ["s2"])])
    add("scan", "'Scan' is not one trainlab exports",
        [*nodes, helper.make_node("Scan", ["logits"], ["scanned"], body=scan_body, num_scan_inputs=1)],
        inits, last="scanned")
    branch = [_body(n, [], [helper.make_tensor_value_info(f"{n}o", f32, None)],
                    [helper.make_node("Identity", ["logits"], [f"{n}o"])]) for n in ("then", "else")]
    add("if", "'If' is not one trainlab exports",
        [*nodes, helper.make_node("If", ["T"], ["chosen"], then_branch=branch[0], else_branch=branch[1])],
        [*inits, numpy_helper.from_array(np.array(True), "T")], last="chosen")
    add("custom-domain", "'com.evil'",
        [*nodes, helper.make_node("Evil", ["logits"], ["y"], domain="com.evil")], inits,
        opsets=(("", 17), ("com.evil", 1)), last="y")
    add("custom-opset-only", "operator domain 'com.evil'", nodes, inits, opsets=(("", 17), ("com.evil", 1)))
    add("not-allowed-op", "'Tile' is not one trainlab exports",
        [*nodes, helper.make_node("Tile", ["logits", "R"], ["y"])],
        [*inits, numpy_helper.from_array(np.array([1, 1], np.int64), "R")], last="y")
    add("opset-99", "opset 99", nodes, inits, opsets=(("", 99),))
    add("opset-1", "opset 1", nodes, inits, opsets=(("", 1),))
    # external data: ONNX Runtime would read these files into the weights
    secret = folder / "secret.bin"
    secret.write_bytes(b"s" * (PIXELS * 10 * 4))
    for name, location in (("external-etc-passwd", "/etc/passwd"), ("external-tmp-file", "secret.bin"),
                           ("external-parent", "../" + folder.name + "/secret.bin")):
        nodes, inits = head()
        w = inits[0]
        onnx.external_data_helper.set_external_data(w, location=location, offset=0, length=PIXELS * 10 * 4)
        w.data_location = TensorProto.EXTERNAL
        w.ClearField("raw_data")
        add(name, "external data", nodes, inits)
    nodes, inits = head()
    huge = TensorProto(name="H", data_type=f32, dims=[1 << 20, 1 << 20])  # 4 TiB declared, nothing held
    add("huge-initializer", "declare", [*nodes, helper.make_node("Add", ["logits", "H"], ["y"])], [*inits, huge],
        last="y")
    # windows and padding: a few hundred bytes that would ask for planes of 2**60 pixels
    k = k3 = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "K")
    for name, op, attrs in (("conv-huge-pads", "Conv", {"kernel_shape": [3, 3], "pads": [1 << 30] * 4}),
                            ("maxpool-huge-pads", "MaxPool", {"kernel_shape": [2, 2], "pads": [1 << 30] * 4}),
                            ("maxpool-huge-window", "MaxPool", {"kernel_shape": [1 << 30, 1 << 30]}),
                            ("conv-no-window", "Conv", {"pads": [1, 1, 1, 1]})):
        nodes, inits = head()
        ins = ["x", "K"] if op == "Conv" else ["x"]
        nodes = [nodes[0], helper.make_node(op, ins, ["x2"], **attrs),
                 helper.make_node("Flatten", ["x2"], ["f"]), nodes[2]]
        add(name, f"its {op} node", nodes, [*inits, k])
    nodes, inits = head()
    add("huge-input-shape", "its input is not uint8", nodes, inits, in_shape=("N", 1, 1 << 30, 1 << 30))
    add("symbolic-input-shape", "its input is not uint8", nodes, inits, in_shape=("N", "C", "H", "W"))
    # forged metadata, one field at a time (each would reach predict's code today)
    forged = {
        "format": lambda m: m.update(format="pt"),
        "spec-string": lambda m: m.update(model_spec="mlp"),
        "spec-huge-shape": lambda m: m["model_spec"].update(input_shape=[1, 100000, 100000]),
        "spec-no-classes": lambda m: m["model_spec"].update(num_classes=0),
        "classes-string": lambda m: m.update(classes="abc"),
        "classes-count": lambda m: m.update(classes=["a", "b"]),
        "classes-numbers": lambda m: m.update(classes=list(range(10))),
        "classes-missing": lambda m: m.pop("classes"),
        "mean-string": lambda m: m["preprocessing"].update(mean="x"),
        "mean-infinite": lambda m: m["preprocessing"].update(mean=[float("inf")]),
        "mean-two-channels": lambda m: m["preprocessing"].update(mean=[0.1, 0.2]),
        "std-zero": lambda m: m["preprocessing"].update(std=[0]),
        "std-negative": lambda m: m["preprocessing"].update(std=-1),
        "std-nan": lambda m: m["preprocessing"].update(std=[float("nan")]),
        "preprocessing-missing": lambda m: m.pop("preprocessing"),
        "tta-flip-string": lambda m: m["preprocessing"].update(tta_flip="yes"),
        "input-shape": lambda m: m["input"].update(shape=["N", 3, 28, 28]),
        "input-a-list": lambda m: m.update(input=[1]),
        "input-name": lambda m: m["input"].update(name="other"),
        "output-shape": lambda m: m["output"].update(shape=["N", 5]),
        "opset": lambda m: m.update(opset=99),
        "opset-bool": lambda m: m.update(opset=True),
        "version-list": lambda m: m.update(trainlab_version=[1]),
        "source-table": lambda m: m.update(source={"a": 1}),
    }
    nodes, inits = head()
    for name, change in forged.items():
        meta = copy.deepcopy(metadata())
        change(meta)
        add(f"meta-{name}", "damaged or forged", nodes, inits, meta=meta)
    spec_shape = copy.deepcopy(metadata())  # spec, input and graph all agree on a huge image
    spec_shape["model_spec"]["input_shape"] = [1, 1 << 20, 1 << 20]
    spec_shape["input"]["shape"] = ["N", 1, 1 << 20, 1 << 20]
    add("meta-and-graph-huge-shape", "invalid input shape", nodes, inits, meta=spec_shape,
        in_shape=("N", 1, 1 << 20, 1 << 20))
    for name, text, phrase in (("meta-not-json", "{not json", "not one trainlab exported"),
                               ("meta-a-list", "[1, 2]", "not one trainlab exported"),
                               ("meta-deep", "[" * 100000, "not one trainlab exported"),
                               ("meta-absent", "", "not one trainlab exported")):
        add(name, phrase, nodes, inits, meta_text=text)
    # allowed operators that broadcast small tensors into huge ones (each 144 MB or more from a
    # file of under 100 kB, or growing with the square of the batch), and a size taken from data
    k = 6000
    col, row = (numpy_helper.from_array(np.ones(s, np.float32), n) for s, n in (((k, 1), "Col"), ((1, k), "Row")))
    sink = [helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0), helper.make_node("Add", ["l0", "s"], ["y"])]
    bombs = {
        "add-outer": ([helper.make_node("Add", ["Col", "Row"], ["big"])], [col, row]),
        "matmul-outer": ([helper.make_node("MatMul", ["Col", "Row"], ["big"])], [col, row]),
        "where-outer": ([helper.make_node("Where", ["T", "Col", "Row"], ["big"])],
                        [col, row, numpy_helper.from_array(np.ones((k, 1), bool), "T")]),
        "gather-many": ([helper.make_node("Gather", ["Row", "I"], ["big"], axis=0)],
                        [row, numpy_helper.from_array(np.zeros(k, np.int64), "I")]),
        "concat-many": ([helper.make_node("Concat", ["Row"] * k, ["big"], axis=0)], [row]),
        "input-outer": ([helper.make_node("Flatten", ["x"], ["fx"], axis=0), helper.make_node("Transpose", ["fx"], ["ft"]),
                         helper.make_node("Mul", ["ft", "fx"], ["big"])], []),
        "convtranspose-output-shape": ([helper.make_node("ConvTranspose", ["x", "K"], ["big"], kernel_shape=[3, 3],
                                                         strides=[28, 28], output_shape=[100000, 100000])], [k3]),
        "reshape-from-data": ([helper.make_node("Cast", ["images"], ["xi"], to=i64),
                               helper.make_node("Reshape", ["xi", "M1"], ["fi"]),
                               helper.make_node("Slice", ["fi", "Z", "Two", "Z"], ["shp"]),
                               helper.make_node("Flatten", ["x"], ["fx2"], axis=0),
                               helper.make_node("Reshape", ["fx2", "shp"], ["big"])],
                              [numpy_helper.from_array(np.array([v], np.int64), n)
                               for n, v in (("Z", 0), ("Two", 2), ("M1", -1))]),
    }
    phrases = {"input-outer": "grows faster than the batch", "convtranspose-output-shape": "for a single image",
               "reshape-from-data": "cannot be known before"}
    for name, (extra, more) in bombs.items():
        nodes, inits = head("l0")
        add(f"bomb-{name}", phrases.get(name, "that do not depend on the images"), [*nodes, *extra, *sink],
            [*inits, *more], last="y")
    # not a whole ONNX file
    whole = good(folder / "whole.onnx").read_bytes()
    (folder / "truncated.onnx").write_bytes(whole[: len(whole) // 2])
    out["truncated"] = (folder / "truncated.onnx", "is not an ONNX model")
    (folder / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    out["random"] = (folder / "random.onnx", "")
    (folder / "text.onnx").write_bytes(b"not a model at all\n")
    out["text"] = (folder / "text.onnx", "")
    (folder / "empty.onnx").write_bytes(b"")
    out["empty"] = (folder / "empty.onnx", "is empty")
    (folder / "folder.onnx").mkdir(exist_ok=True)
    out["folder"] = (folder / "folder.onnx", "not a regular file")
    out["missing"] = (folder / "missing.onnx", "no such file")
    (folder / "whole.onnx").unlink()
    return out
