"""Commands on a trained model's files: inspect, export and predict.

Each handler returns an exit code and raises TrainlabError subclasses for failures the user
can act on. The library is imported inside the handlers: it imports torch, and every
command's `--help` answers without it.
"""

from __future__ import annotations

import json

from trainlab.cli.args import add_allow_import, allowed, positive_float, positive_int
from trainlab.errors import TrainlabError
from trainlab.text import printable


def cmd_inspect(args) -> int:
    from trainlab.analysis.inspection import describe, summarize

    print(summarize(args.path, allowed(args)) if args.summary else describe(args.path))
    return 0


def cmd_export(args) -> int:
    from trainlab.export.export import export_run

    fmt = getattr(args, "format", "safetensors")
    if fmt == "onnx":
        from trainlab.export.onnx_export import PARITY_CHECK_LINE

        weights, meta = export_run(args.path, args.out, allow_import=allowed(args), format="onnx",
                                   data_dir=args.data_dir)
        table = json.loads(meta.read_text())
        print(PARITY_CHECK_LINE.format(**table["parity"]))
        print(printable(f"exporter {table['exporter']} (opset {table['opset']})"
                        + (f"; fell back: {table['fallback']}" if table.get("fallback") else "")))
    else:
        weights, meta = export_run(args.path, args.out, allow_import=allowed(args))
    print(printable(f"wrote {weights} and {meta}"))  # paths the user typed: escaped, never raw
    return 0


def cmd_predict(args) -> int:
    """Any model form, any input (prediction.py); rows stream out as chunks are classified."""
    from trainlab.analysis.predict_output import PredictionWriter
    from trainlab.analysis.prediction import Tally, chunks, open_model, predict_stream, test_split_chunks

    model = open_model(args.checkpoint, device=args.device, allow_import=allowed(args), timeout=args.timeout)
    inputs = [*(args.files or []), *([args.input] if args.input else [])]
    # -n: how many images (the test split: 10 unless told; named inputs: all of them)
    source = chunks(inputs, model, args.n) if inputs else test_split_chunks(model, args.n or 10, args.data_dir)
    tally = writer = None
    for chunk, probs in predict_stream(model, source):
        if writer is None:
            tally = Tally(model.classes) if chunk.labels is not None else None
            writer = PredictionWriter(args.output, model.classes, args.top, tally is not None,
                                      printable(args.checkpoint), name_header="file" if inputs else "#")
        writer.write([printable(n) for n in chunk.names], probs, chunk.labels)
        if tally is not None:
            tally.add(probs, chunk.labels)
    if writer is None:  # every reader refuses an empty input first; this is the last word
        raise TrainlabError("no images to predict")
    writer.finish(tally.summary() if tally is not None else None, full=bool(inputs))
    return 0


# ---------------------------------------------------------------- registration

def add_commands(sub) -> None:
    i = sub.add_parser("inspect", help="what a checkpoint, state_dict or run folder holds")
    i.add_argument("path")
    i.add_argument("--summary", action="store_true",
                   help="the model instead: trainable vs frozen parameters and a table of its layers "
                        "(names, shapes, parameter counts, trainable)")
    add_allow_import(i)
    i.set_defaults(func=cmd_inspect)

    x = sub.add_parser("export", help="write model.safetensors (or model.onnx) + its .json metadata for a run or checkpoint")
    x.add_argument("path")
    x.add_argument("-o", "--out", help="output folder (default: the run folder)")
    x.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                   help="safetensors (default: weights + model.json) or onnx (uint8 images in, probabilities "
                        "out, normalization inside; checked against PyTorch on the test split)")
    x.add_argument("--data-dir", help="with --format onnx: where the run's data is, for the parity check")
    add_allow_import(x)
    x.set_defaults(func=cmd_export)

    pr = sub.add_parser("predict", help="classify image files, folders or IDX / .npy arrays with any trained "
                        "model form (run folder, checkpoint, model.safetensors, model.onnx)")
    pr.add_argument("checkpoint", help="run folder, checkpoint, model.pt, model.safetensors or model.onnx")
    pr.add_argument("files", nargs="*", metavar="FILES_OR_FOLDERS",
                    help="image files (png, jpg, bmp, gif, webp), folders of them (a folder of class "
                         "subfolders is labelled: accuracy, per class, confusion matrix), or IDX / .npy "
                         "arrays; default: the data set's test images")
    pr.add_argument("--input", help="an IDX (.gz) or .npy file of images (the same as naming it)")
    pr.add_argument("-n", "--limit", dest="n", type=positive_int, metavar="N",
                    help="classify at most N images (default: all named; 10 from the test split)")
    pr.add_argument("-k", "--top", type=positive_int, default=3, metavar="K",
                    help="the K most likely classes per image (default 3)")
    pr.add_argument("--output", choices=("table", "csv", "json"), default="table",
                    help="table (default), csv or json (one document) on stdout")
    pr.add_argument("--data-dir")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                    help="a model.onnx is stopped after this long (default 600)")
    add_allow_import(pr)
    pr.set_defaults(func=cmd_predict)
