"""ONNX export (trainlab export RUN --format onnx) and predict from model.onnx: uint8 images in,
probabilities out, normalization and flip TTA inside; the parity check with ONNX Runtime on
the test split; a broken export refused; trainlab importable without onnx."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import cli_env, run_cli, train_tiny, write_idx_folder

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from trainlab.export import onnx_export  # noqa: E402
from trainlab.export.export import export_run  # noqa: E402
from trainlab.data import load_dataset  # noqa: E402
from trainlab.errors import TrainlabError  # noqa: E402
from trainlab.inference import load_model, predict_images  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    data = write_idx_folder(root / "data")
    cnn = train_tiny(root / "runs", dataset=f"idx:{data}", model="cnn-fast", name="cnn", epochs=1,
                     hflip=True, tta_flip=True, batch_size=64).run_dir
    mlp = train_tiny(root / "runs", dataset=f"idx:{data}", model="mlp-reg", name="mlp", epochs=1).run_dir
    return {"root": root, "data": data, "cnn": cnn, "mlp": mlp}


def test_export_checks_parity_and_writes_a_self_contained_graph(runs, tmp_path):
    out = tmp_path / "out"
    r = run_cli("export", runs["cnn"], "--format", "onnx", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "parity on 200 test images: argmax agreement 100.00%, max probability difference" in r.stdout
    meta = json.loads((out / "model.onnx.json").read_text())
    assert "exporter dynamo (opset 18)" in r.stdout and "fallback" not in meta
    assert meta["exporter"] == "dynamo" and meta["opset"] == 18 and meta["schema"] == 1
    assert meta["input"] == {"name": "images", "dtype": "uint8", "shape": ["N", 1, 28, 28],
                             "layout": "N,C,H,W, pixel values 0-255"}
    assert meta["classes"] == [str(i) for i in range(10)] and meta["preprocessing"]["tta_flip"] is True
    assert meta["parity"]["argmax_agreement"] == 1.0 and meta["parity"]["max_prob_diff"] <= 1e-4
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (_out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [1, 28, 28] and isinstance(inp.shape[0], str)
    data = load_dataset(f"idx:{runs['data']}")
    model, ckpt = load_model(runs["cnn"], map_location="cpu")
    for n in (1, 7):  # any batch size
        probs = sess.run(None, {"images": data.test_x[:n].numpy()})[0]
        assert probs.shape == (n, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
        ours = predict_images(model, ckpt, data.test_x[:n]).numpy()
        assert np.abs(probs - ours).max() <= 1e-4


def test_a_broken_export_is_refused_and_nothing_is_written(runs, tmp_path, monkeypatch):
    real = onnx_export.wrap

    def off_by_a_bit(model, ckpt):  # a normalization that is not the run's
        packaged = real(model, ckpt)
        packaged.mul.mul_(1.5)
        return packaged

    monkeypatch.setattr(onnx_export, "wrap", off_by_a_bit)
    with pytest.raises(TrainlabError) as e:
        export_run(runs["mlp"], tmp_path / "out", format="onnx")
    msg = str(e.value)
    assert msg.startswith("ONNX export refused: on 200 test images") and "agree on" in msg
    assert "differ by up to" in msg and "nothing was written" in msg
    assert not (tmp_path / "out" / "model.onnx").exists() and not (tmp_path / "out" / "model.onnx.json").exists()


def test_predict_from_onnx_matches_the_checkpoint(runs, tmp_path):
    out = tmp_path / "out"
    export_run(runs["mlp"], out, format="onnx")
    data = load_dataset(f"idx:{runs['data']}")
    np.save(tmp_path / "x.npy", data.test_x[:4].numpy())
    r = run_cli("predict", out / "model.onnx", tmp_path / "x.npy", "--input", runs["data"] / "t10k-images-idx3-ubyte.gz",
                "-n", "6")
    assert r.returncode == 0, r.stderr
    model, ckpt = load_model(runs["mlp"], map_location="cpu")
    top = predict_images(model, ckpt, data.test_x[:4]).argmax(1).tolist()
    lines = [line.split() for line in r.stdout.splitlines()[2:]]
    assert [line[0] for line in lines] == [f"{tmp_path / 'x.npy'}[{i}]" for i in range(4)] + \
        [f"{runs['data'] / 't10k-images-idx3-ubyte.gz'}[{i}]" for i in range(2)]
    assert [int(line[1]) for line in lines[:4]] == top
    probs, classes = onnx_export.predict_onnx(out / "model.onnx", data.test_x[:4])
    assert probs.argmax(1).tolist() == top and classes == [str(i) for i in range(10)]
    ours = predict_images(model, ckpt, data.test_x[:4])
    assert (probs - ours).abs().max().item() <= onnx_export.MAX_PROB_DIFF  # through the checked, child-process path


def test_predict_refuses_a_foreign_onnx_file_and_other_shapes(runs, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "foreign.onnx")
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    r = run_cli("predict", tmp_path / "foreign.onnx", tmp_path / "x.npy")
    assert r.returncode == 1 and "not one trainlab exported" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    r = run_cli("predict", tmp_path / "junk.onnx", tmp_path / "x.npy")
    assert r.returncode == 1 and "is not an ONNX model" in r.stderr
    export_run(runs["mlp"], tmp_path / "out", format="onnx")
    np.save(tmp_path / "big.npy", np.zeros((2, 32, 32), np.uint8))
    r = run_cli("predict", tmp_path / "out" / "model.onnx", tmp_path / "big.npy")
    assert r.returncode == 1 and "the model expects (1, 28, 28)" in r.stderr


def test_trainlab_imports_and_says_so_without_onnx(runs, tmp_path):
    code = (
        "import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None\n"
        "import trainlab, trainlab.export.export\n"
        "from trainlab.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, "export", str(runs["mlp"]), "--format", "onnx", "-o",
                        str(tmp_path / "o")], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == ("trainlab: error: ONNX export and predict need onnx: "
                                                 "pip install 'trainlab[onnx]' (onnx and onnxruntime)")
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_export_of_an_arrays_run_needs_its_data(tmp_path, tiny_data):
    run = train_tiny(tmp_path, data=tiny_data, epochs=1).run_dir
    with pytest.raises(TrainlabError, match="the ONNX parity check runs on the run's test split"):
        export_run(run, tmp_path / "a", format="onnx")
    path, _ = export_run(run, tmp_path / "b", format="onnx", data=tiny_data)
    assert path.is_file()


def test_the_operator_allow_list_is_what_trainlab_exports():
    """onnx_guard.ALLOWED_OPS, derived again: every built-in registered model exported (1 and 3
    channels, with and without flip TTA); the list may be neither short of it nor beyond it."""
    import onnx

    from trainlab import models
    from trainlab.export.onnx_guard import ALLOWED_OPS, OPSETS, TRAINLAB_OPS, USER_MODEL_OPS

    emitted, opsets = set(), set()
    builtin = [n for n in models.available() if models.info(n).factory.__module__.startswith("trainlab.models.")]
    assert {"mlp", "cnn", "resnet"} <= set(builtin)
    for name in builtin:
        for shape in ((1, 28, 28), (3, 32, 32)):
            # both exporters (dynamo first, TorchScript its fallback); flip TTA adds to what a
            # graph without it emits, so the slower dynamo exporter is asked with it only
            for exporter, flip in (("torchscript", False), ("torchscript", True), ("dynamo", True)):
                ckpt = {"model_spec": {"name": name, "kwargs": {}, "input_shape": list(shape), "num_classes": 10},
                        "mean": [0.5] * shape[0], "std": [0.25] * shape[0], "config": {"tta_flip": flip}}
                packaged = onnx_export.wrap(models.build(name, shape, 10).eval(), ckpt)
                proto = onnx.load_from_string(onnx_export.to_onnx(packaged, shape, {}, exporter))
                emitted |= {n.op_type for n in proto.graph.node}
                opsets |= {(o.domain, o.version) for o in proto.opset_import}
    assert emitted == set(TRAINLAB_OPS) and ALLOWED_OPS == TRAINLAB_OPS | USER_MODEL_OPS
    # none of the operators that loop, branch, take their output size from data or draw randomness
    assert not ALLOWED_OPS & {"Loop", "Scan", "If", "Tile", "Expand", "ConstantOfShape", "Range", "Resize",
                              "Upsample", "Pad", "NonZero", "RandomNormal", "RandomUniform", "Multinomial"}
    assert {d for d, _ in opsets} == {""} and {v for _, v in opsets} <= set(OPSETS)


def _wait_for_worker(proc, limit: float = 120) -> int:
    """The ONNX Runtime child of `proc`, once it runs."""
    import time

    from conftest import child_pids

    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None:
        kids = child_pids(proc.pid)
        if kids:
            return kids[0]
        time.sleep(0.1)
    raise AssertionError(f"no ONNX Runtime child process appeared (exit {proc.poll()})")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"])
def test_a_signal_during_an_onnx_prediction_ends_it_at_once(tmp_path, sig):
    """A graph that passes every check yet computes for minutes: SIGTERM, Ctrl-C or SIGHUP
    while ONNX Runtime runs ends trainlab with its one line and 128 + signum; with kill -9
    too, the runtime's process goes with it (no core left busy)."""
    import signal
    import time

    import onnx_graphs
    from conftest import is_alive, start_cli

    signum = getattr(signal, sig)
    slow = onnx_graphs.slow(tmp_path / "slow.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1000, 28, 28), np.uint8))
    proc = start_cli("predict", slow, tmp_path / "x.npy", "-n", "1000", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    try:
        worker = _wait_for_worker(proc)
        time.sleep(1)  # well inside session.run
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)  # seconds when idle; a bound for a loaded CI machine
        end = time.monotonic() + 10
        while is_alive(worker) and time.monotonic() < end:
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not is_alive(worker)
    if signum == signal.SIGKILL:
        assert proc.returncode == -9
        return
    assert proc.returncode == 128 + signum, err
    assert [x for x in err.splitlines() if x.strip()] == [
        "trainlab: interrupted" + ("" if signum == signal.SIGINT else f" ({sig})")]


def test_a_graph_that_runs_too_long_is_stopped_at_the_deadline(tmp_path):
    import onnx_graphs

    slow = onnx_graphs.slow(tmp_path / "slow.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1000, 28, 28), np.uint8))
    r = run_cli("predict", slow, tmp_path / "x.npy", "-n", "1000", "--timeout", "3", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [f"trainlab: error: {slow} ran longer than 3 s on 1000 images and was stopped "
                                     "(a graph that never ends, or a slow one: raise --timeout if you trust it)"]
    r = run_cli("predict", slow, tmp_path / "x.npy", "--timeout", "0")
    assert r.returncode == 2 and "must be above 0" in r.stderr


def test_export_reads_the_data_as_the_run_did(tmp_path):
    """A folder run trained with --image-size and --skip-bad exports: the parity check reads
    its data with the run's own options (today's export read it without them)."""
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "imgs", per_class=12, size=(20, 16))
    (root / "cat" / "broken.png").write_bytes(b"not an image")
    run = train_tiny(tmp_path / "runs", dataset=f"folder:{root}", image_size=12, skip_bad=True, epochs=1, val_size=5,
                     batch_size=8).run_dir
    r = run_cli("export", run, "--format", "onnx", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "model.onnx.json").read_text())["input"]["shape"] == ["N", 3, 12, 12]


def test_every_builtin_export_passes_the_size_check_with_a_batch():
    """onnx_guard.check_sizes (outputs bounded by shape inference) refuses no graph trainlab
    writes: every built-in model, 1 and 3 channels, runs in batches of more than one image."""
    import onnx

    from trainlab import models
    from trainlab.export.onnx_guard import check_sizes

    for name in [n for n in models.available() if models.info(n).factory.__module__.startswith("trainlab.models.")]:
        for shape in ((1, 28, 28), (3, 32, 32)):
            ckpt = {"model_spec": {"name": name, "kwargs": {}, "input_shape": list(shape), "num_classes": 10},
                    "mean": [0.5] * shape[0], "std": [0.25] * shape[0], "config": {"tta_flip": True}}
            for exporter in ("torchscript", "dynamo"):
                blob = onnx_export.to_onnx(onnx_export.wrap(models.build(name, shape, 10).eval(), ckpt), shape, {},
                                           exporter)
                assert check_sizes(onnx.load_from_string(blob), name, len(blob)) > 1, (name, shape, exporter)


@pytest.mark.parametrize("failure", ["raises", "unguarded", "parity"])
def test_the_torchscript_exporter_is_the_fallback_and_says_why(runs, tmp_path, monkeypatch, caplog, failure):
    """The dynamo exporter failing, emitting a graph onnx_guard refuses, or failing the parity
    check: the TorchScript exporter writes the file, and the metadata and a warning say why."""
    real_graph, real_parity = onnx_export._graph, onnx_export.parity

    def graph(packaged, shape, exporter):
        if exporter == "dynamo" and failure == "raises":
            raise RuntimeError("an operator it cannot export")
        proto = real_graph(packaged, shape, exporter)
        if exporter == "dynamo" and failure == "unguarded":
            proto.graph.node[0].op_type = "Loop"
        return proto

    def parity(blob, *a, **kw):
        p = real_parity(blob, *a, **kw)
        props = onnx_export._need("onnx").load_from_string(blob).metadata_props
        exporter = json.loads(next(e.value for e in props if e.key == "trainlab"))["exporter"]
        return {**p, "max_prob_diff": 1.0} if failure == "parity" and exporter == "dynamo" else p

    monkeypatch.setattr(onnx_export, "_graph", graph)
    monkeypatch.setattr(onnx_export, "parity", parity)
    path, meta_path = export_run(runs["mlp"], tmp_path / "out", format="onnx")
    meta = json.loads(meta_path.read_text())
    assert meta["exporter"] == "torchscript" and meta["opset"] == 17
    assert meta["fallback"].startswith("the dynamo exporter failed: ")
    assert {"raises": "an operator it cannot export", "unguarded": "Loop", "parity": "agree"}[failure] in meta["fallback"]
    assert "using the TorchScript exporter" in caplog.text
    assert meta["parity"]["argmax_agreement"] == 1.0
