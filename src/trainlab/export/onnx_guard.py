"""An ONNX file is code: its graph runs. So a model.onnx is read and checked here, with the
`onnx` package only, before ONNX Runtime ever sees its bytes. Accepted: graphs trainlab's
own exporter could have written -- the operators it emits for its registered models
(tests/test_onnx.py exports them all and checks this list against what they emit) and the
bounded standard operators a user's model adds (USER_MODEL_OPS), no
subgraphs (Loop, Scan, If), no custom domains or local functions, no external data (a
reference to a file would make ONNX Runtime read any file on disk), opsets trainlab
exports, one uint8 N,C,H,W input of fixed C,H,W, one float N,classes output, initializers
no bigger than the file, and trainlab's metadata checked field by field as a model.pt's is.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from trainlab.errors import TrainlabError
from trainlab.export.onnx_run import BATCH
from trainlab.store.schema import check_checkpoint

# what onnx_export.to_onnx emits for every registered model (with and without flip TTA, 1 and 3 channels)
TRAINLAB_OPS = frozenset({"Add", "BatchNormalization", "Cast", "Constant", "Conv", "Div", "Flatten", "Gemm",
                          "GlobalAveragePool", "Identity", "MaxPool", "Mul", "Relu", "Slice", "Softmax",
                          # the dynamo exporter's flatten and global average pool (constant shape
                          # and axes; check_sizes bounds what they output)
                          "Reshape", "ReduceMean"})
# and what a user's own model (trainlab exports those too) may add: standard operators without
# subgraphs whose output is no bigger than their inputs allow. Left out: control flow (Loop, Scan,
# If) and every operator that takes its output size from data (Tile, Expand, ConstantOfShape,
# Range, Resize, Upsample, Pad, NonZero ...) or draws random numbers.
USER_MODEL_OPS = frozenset({
    "Abs", "AveragePool", "Clip", "Concat", "ConvTranspose", "Dropout", "Elu", "Erf", "Exp", "Gelu",
    "GlobalMaxPool", "GroupNormalization", "HardSigmoid", "HardSwish", "InstanceNormalization",
    "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "MatMul", "Max", "Mean", "Min", "Mish", "Neg",
    "PRelu", "Pow", "Reciprocal", "ReduceMax", "ReduceMin", "ReduceSum", "Selu",
    "Shape", "Sigmoid", "Softplus", "Softsign", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Transpose",
    "Unsqueeze", "Gather", "Equal", "Where", "Less", "Greater", "Not", "And", "Or",
})
ALLOWED_OPS = TRAINLAB_OPS | USER_MODEL_OPS
OPSETS = range(17, 19)  # the default-domain opsets trainlab exports (onnx_export.EXPORTERS)
MAX_BYTES = 2**31 - 1  # protobuf's own limit for one message: a bigger model.onnx is not a whole one
MAX_META_CHARS = 64 << 20  # the "trainlab" metadata entry (class names dominate)
# what one batch's node outputs may hold together (the runtime frees most of them sooner; the
# batch is made smaller for a model whose one image needs more), and what outputs that do not
# grow with the batch may hold beyond the file's own bytes
ACTIVATION_BUDGET = 2 << 30
CONSTANT_SLACK = 64 << 20
INPUT, OUTPUT = "images", "probabilities"


def _need(what: str):
    """onnx or onnxruntime, imported here only (importing trainlab never needs them), or one sentence."""
    try:
        if what == "onnx":
            import onnx
            return onnx
        import onnxruntime
        return onnxruntime
    except ImportError:
        raise TrainlabError(f"ONNX export and predict need {what}: pip install 'trainlab[onnx]' "
                            "(onnx and onnxruntime)") from None


def _bad(path, what: str):
    raise TrainlabError(f"{path}: {what}: trainlab never writes such a graph, so it is refused unrun")


def read_bounded(path: Path) -> bytes:
    """The file's bytes, read at most MAX_BYTES + 1 of them."""
    if not path.is_file():
        raise TrainlabError(f"{path}: no such file" if not path.exists() else f"{path} is not a regular file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # read() preallocates what it is asked for: ask for the file's size (+1: it grew), never 2 GiB
            blob = f.read(size + 1) if size <= MAX_BYTES else b""
    except OSError as e:
        raise TrainlabError(f"{path} cannot be read ({e.strerror or e})") from None
    if size > MAX_BYTES or len(blob) > MAX_BYTES:
        raise TrainlabError(f"{path} is larger than 2 GiB, which no single ONNX file can be: it is not a model")
    if not blob:
        raise TrainlabError(f"{path} is empty: it is not an ONNX model")
    return blob


def parse(blob: bytes, path):
    """The ModelProto of `blob`; nothing outside the bytes is read (no external data)."""
    onnx = _need("onnx")
    try:
        return onnx.load_model_from_string(blob)  # never follows external_data (no base folder)
    except Exception as e:  # noqa: BLE001 -- protobuf raises DecodeError and friends
        raise TrainlabError(f"{path} is not an ONNX model (it does not parse: "
                            f"{(str(e).splitlines() or [type(e).__name__])[0][:200]})") from None


def _tensors(proto):
    """Every TensorProto the graph carries: initializers and node attributes."""
    yield from proto.graph.initializer
    for node in proto.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors


def _nbytes(t) -> int:
    from onnx import helper

    if any(d < 0 for d in t.dims):
        return -1
    try:
        size = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return -1
    return math.prod(t.dims) * size


def check_graph(proto, path, file_size: int) -> None:
    """Refuse what trainlab never writes, before a runtime sees it (one sentence each)."""
    from onnx import TensorProto

    g = proto.graph
    ops = {(o.domain, o.version) for o in proto.opset_import}
    for domain, version in ops:
        if domain not in ("", "ai.onnx"):
            _bad(path, f"it uses the operator domain {domain[:100]!r}, not the standard one")
        if version not in OPSETS:
            _bad(path, f"its opset {version} is not one trainlab exports ({OPSETS.start}-{OPSETS.stop - 1})")
    if not ops:
        _bad(path, "it names no opset")
    if proto.functions or proto.training_info or g.sparse_initializer:
        _bad(path, "it holds local functions, training graphs or sparse tensors")
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            _bad(path, f"its operator {node.op_type[:100]!r} is from the custom domain {node.domain[:100]!r}")
        if node.op_type not in ALLOWED_OPS:
            _bad(path, f"its operator {node.op_type[:100]!r} is not one trainlab exports (control flow, "
                       "sizes taken from data and randomness are refused; see trainlab.export.onnx_guard)")
        for a in node.attribute:
            if a.HasField("g") or a.graphs or a.HasField("sparse_tensor") or a.sparse_tensors:
                _bad(path, f"its {node.op_type} node holds a subgraph or sparse tensor")
    declared = 0
    for t in _tensors(proto):
        if t.data_location == TensorProto.EXTERNAL or t.external_data:
            _bad(path, "it refers to external data files, which trainlab never writes (and which would "
                       "make ONNX Runtime read other files)")
        n = _nbytes(t)
        if n < 0 or t.data_type == TensorProto.STRING:
            _bad(path, f"its tensor {t.name[:100]!r} has a type or shape trainlab never writes")
        declared += n
    if declared > file_size:
        _bad(path, f"its tensors declare {declared:,} bytes but the file holds {file_size:,}")


def _dims(value_info) -> list | None:
    tt = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def check_io(proto, path, meta: dict) -> None:
    """One uint8 N,C,H,W input (C,H,W fixed, N symbolic or fixed) and one float N,classes
    output, as the metadata says."""
    from onnx import TensorProto

    g = proto.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    spec = meta["model_spec"]
    want_in, want_out = list(spec["input_shape"]), [spec["num_classes"]]
    for kind, vis, name, dtype, want in (("input", inputs, INPUT, TensorProto.UINT8, want_in),
                                         ("output", list(g.output), OUTPUT, TensorProto.FLOAT, want_out)):
        if len(vis) != 1 or vis[0].name != name:
            _bad(path, f"its graph does not have the one {kind} {name!r} trainlab writes")
        dims = _dims(vis[0])
        if vis[0].type.tensor_type.elem_type != dtype or dims is None or dims[1:] != want or not (
                isinstance(dims[0], str) or (isinstance(dims[0], int) and dims[0] > 0)):
            _bad(path, f"its {kind} is not {TensorProto.DataType.Name(dtype).lower()} shaped "
                       f"{['N', *want]} as its metadata says")


def check_windows(proto, path, meta: dict) -> None:
    """Conv and MaxPool windows no bigger than the image and padding smaller than the window,
    as trainlab writes them: a pad of 2**30 would make ONNX Runtime allocate a plane of
    2**60 pixels from a file of a few hundred bytes."""
    side = max(meta["model_spec"]["input_shape"][1:])
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "MaxPool", "AveragePool"):
            continue
        a = {x.name: list(x.ints) for x in node.attribute}
        kernel = a.get("kernel_shape") or []
        if not kernel or not all(1 <= k <= side for k in kernel):
            _bad(path, f"its {node.op_type} node has a window {kernel} outside 1..{side} (the image's side)")
        for key in ("strides", "dilations"):
            if not all(1 <= v <= side for v in a.get(key, [])):
                _bad(path, f"its {node.op_type} node has {key} {a[key][:8]} outside 1..{side}")
        if not all(0 <= v < max(kernel) for v in a.get("pads", [])):
            _bad(path, f"its {node.op_type} node pads by {a['pads'][:8]}, beyond its window {kernel}")


def _output_bytes(proto, n: int, path) -> dict[str, int]:
    """Bytes of every node output when the batch is `n`, from onnx's shape inference with the
    batch fixed and the file's own value_info ignored (it could lie)."""
    from onnx import ModelProto, helper, shape_inference

    m = ModelProto()
    m.CopyFrom(proto)
    del m.graph.value_info[:]
    for vi in (*m.graph.input, *m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.name in (INPUT, OUTPUT) and dims:
            dims[0].Clear()
            dims[0].dim_value = n
    try:
        m = shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001 -- InferenceError, or a C++ error for odd protos
        _bad(path, f"its tensor shapes do not follow from its input ({(str(e).splitlines() or [''])[0][:200]})")
    types = {vi.name: vi.type for vi in (*m.graph.value_info, *m.graph.output)}
    sizes = {}
    for node in m.graph.node:
        for name in node.output:
            t = types.get(name)
            dims = _dims_of(t) if t is not None else None
            if dims is None:
                _bad(path, f"the size of its {node.op_type} node's output {name[:100]!r} cannot be known before "
                           "it runs (a size taken from data)")
            try:
                item = helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type).itemsize
            except (KeyError, TypeError, ValueError):
                _bad(path, f"its {node.op_type} node's output {name[:100]!r} has a type trainlab never writes")
            sizes[name] = math.prod(dims) * item
    return sizes


def _dims_of(t) -> list[int] | None:
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.tensor_type.shape.dim]
    return None if any(d < 0 for d in dims) else dims


def check_sizes(proto, path, file_size: int) -> int:
    """The batch this graph may run with, from what its nodes output (shape inference at batch
    1 and 2). An allowed operator can still broadcast two small tensors into a huge one (an
    outer product by Add, MatMul or Where; Gather with many indices; Concat of one input many
    times): every output must grow at most linearly with the batch, what does not grow with it
    must stay within the file's size (plus CONSTANT_SLACK), and one image's share must fit
    ACTIVATION_BUDGET."""
    one, two = _output_bytes(proto, 1, path), _output_bytes(proto, 2, path)
    per_image = fixed = 0
    for name, b1 in one.items():
        b2 = two[name]
        if b2 > 2 * b1 or b2 < b1:
            _bad(path, f"its output {name[:100]!r} grows faster than the batch ({b1:,} bytes for one image, "
                       f"{b2:,} for two)")
        per_image += b2 - b1
        fixed += 2 * b1 - b2
    if fixed > 2 * file_size + CONSTANT_SLACK:
        _bad(path, f"its nodes output {fixed:,} bytes that do not depend on the images, far more than the "
                   f"{file_size:,} bytes of the file")
    if per_image > ACTIVATION_BUDGET:
        _bad(path, f"its nodes output {per_image:,} bytes for a single image (at most {ACTIVATION_BUDGET:,})")
    return max(1, min(BATCH, ACTIVATION_BUDGET // max(per_image, 1)))


def _string(v, limit=100_000) -> bool:
    return isinstance(v, str) and len(v) <= limit


def check_meta(proto, path) -> dict:
    """trainlab's metadata entry, every field checked as a model.pt's are (check_checkpoint)."""
    entries = [p.value for p in proto.metadata_props if p.key == "trainlab"]
    meta = None
    if len(entries) == 1 and len(entries[0]) <= MAX_META_CHARS:
        try:
            meta = json.loads(entries[0])
        except (ValueError, RecursionError):
            meta = None
    if not isinstance(meta, dict):
        raise TrainlabError(f"{path} is an ONNX model but not one trainlab exported (no trainlab metadata): "
                            "predict it with ONNX Runtime directly")

    def bad(what):
        raise TrainlabError(f"{path}: its trainlab metadata {what}: the file is damaged or forged")

    if meta.get("format") != "onnx":
        bad("does not say format 'onnx'")
    pre = meta.get("preprocessing")
    if not isinstance(pre, dict):
        bad("has no preprocessing table")
    if not isinstance(pre.get("tta_flip"), bool):
        bad("has a tta_flip that is not true or false")
    # the model.pt checks, on the same fields: spec, mean and std per channel, classes
    fields = {"model_spec": meta.get("model_spec"), "model": {}, "mean": pre.get("mean"), "std": pre.get("std"),
              "config": {"dataset": "onnx"}}
    if "classes" not in meta:
        bad("has no class names")
    fields["classes"] = meta["classes"]
    check_checkpoint(fields, path)
    spec = meta["model_spec"]
    for kind, name, dtype, shape in (("input", INPUT, "uint8", ["N", *spec["input_shape"]]),
                                     ("output", OUTPUT, "float32", ["N", spec["num_classes"]])):
        v = meta.get(kind)
        if not isinstance(v, dict) or v.get("name") != name or v.get("dtype") != dtype or v.get("shape") != shape:
            bad(f"has an {kind} that is not {name!r}, {dtype}, {shape}")
    opset = meta.get("opset")
    if not (isinstance(opset, int) and not isinstance(opset, bool) and opset in OPSETS):
        bad(f"names an opset {str(opset)[:20]!r} that trainlab does not export")
    for key in ("trainlab_version", "source"):
        if key in meta and not _string(meta[key]):
            bad(f"has a {key} that is not a short text")
    return meta


def check_file(path) -> tuple[bytes, dict, int]:
    """(the model's bytes, its trainlab metadata, the batch it may run with), or one sentence
    saying why not."""
    path = Path(path)
    blob = read_bounded(path)
    proto = parse(blob, path)
    meta = check_meta(proto, path)  # first: a foreign model is told so, whatever its graph
    check_graph(proto, path, len(blob))
    onnx = _need("onnx")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 -- ValidationError, or a C++ error for odd protos
        _bad(path, f"it is not a valid ONNX model ({(str(e).splitlines() or [''])[0][:200]})")
    check_io(proto, path, meta)
    check_windows(proto, path, meta)
    return blob, meta, check_sizes(proto, path, len(blob))
