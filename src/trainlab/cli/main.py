"""The command line: parses arguments, calls the library, prints results.

Exit codes: 0 ok, 2 usage or config errors, 1 other failures. A user error prints one
sentence, never a traceback (set TRAINLAB_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from trainlab._version import __version__
from trainlab.analysis.tables import printable
from trainlab.errors import ConfigError, TrainlabError
from trainlab.recipes import RECIPE_FIELDS

log = logging.getLogger("trainlab")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 2
        self.print_usage(sys.stderr)
        print(f"trainlab: error: {printable(message)}", file=sys.stderr)
        raise SystemExit(2)


def _kv(text: str):
    """KEY=VALUE with VALUE parsed as JSON when it can be (numbers, lists, true/false)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, _, raw = text.partition("=")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


RUN_HELP = {
    "dataset": "fashion-mnist (default), mnist, idx:DIR, folder:DIR (image files), cifar10:DIR, cifar100:DIR, or SCHEME:ARG of a format registered "
               "by a module named with --allow-import",
    "data_dir": "folder with the four IDX files (else TRAINLAB_DATA, the cache, download)",
    "model": "mlp (default), mlp-reg, cnn, ... or module:function",
    "recipe": "auto (default: the preset registered with the model, else fast), textbook, fast, "
              "fast-cnn or resnet; the recipe fields below override it",
    "device": "auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N, mps",
    "threads": "CPU threads for torch (default: all cores)",
    "val_size": "validation samples carved from train (default 5000)",
    "name": "run folder name under --runs-dir (default: generated)",
    "runs_dir": "where run folders go (default runs)",
    "quiet": "no progress bar or per-epoch lines",
    "monitor": "metric for best.pt and early stopping: val_loss (default), val_acc, train_loss, train_acc",
    "mode": "min, max or auto (default: from the metric's name)",
    "patience": "stop after this many epochs without improvement (0 = off); restores the best weights",
    "min_delta": "the least change that counts as an improvement",
    "save_every": "also keep epoch-NNNN.pt every N epochs (0 = off)",
    "keep": "how many epoch-NNNN.pt to keep (0 = all; default 3)",
    "tensorboard": "also write TensorBoard events",
    "test_every_epoch": "also evaluate the test split every epoch (an evaluation pass each; labelled "
                        "'not for selection'); off: the test split is evaluated once, at the end",
    "compile": "torch.compile the training forward",
    "channels_last": "NHWC memory layout for convolutional models",
    "tf32": "CUDA: allow TF32 matmuls and convolutions",
    "init_from": "start from these weights: a run folder, trainlab checkpoint, state_dict .pt/.pth or "
                 ".safetensors (matched by name; a head of another class count is re-initialized)",
    "init_strict": "with --init-from: any missing, unexpected or mis-shaped tensor is an error",
    "init_map": "with --init-from: OLD=NEW[,OLD=NEW] renames of its tensor-name prefixes, applied before "
                "trainlab's own matching (which strips or adds prefixes such as model., module., net.)",
    "reinit_head": "with --init-from: the head (the last Linear) keeps its fresh initialization even when "
                   "the class counts agree",
    "freeze": "body (everything but the head: the last Linear) or PREFIX[,PREFIX]: parameters not trained",
    "unfreeze_at": "with --freeze: the frozen parameters train from this epoch on (1-based; 0 = never)",
    "body_lr_mult": "learning rate of everything but the head, as a multiple of --lr (default 1)",
    "train_per_class": "train on at most N images per class (seeded, stratified; 0 = all)",
    "image_size": "folder: images: resize the shorter side to N and centre-crop NxN (default: the most common size)",
    "skip_bad": "folder: images: leave out files that cannot be decoded (counted) instead of stopping",
    "memory_budget": "stream a split larger than this to the device in chunks (bytes, or e.g. 2GiB; "
                     "default: half the free memory); same results",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0 and finite, got {text!r}")
    return value


def add_allow_import(parser) -> None:
    parser.add_argument("--allow-import", action="append", metavar="MODULE",
                        help="import MODULE first (its trainlab.register / register_format calls "
                             "take effect) and allow a model that a run's files name as "
                             "MODULE:function (a file never imports code by itself; repeatable)")


def _allowed(args) -> tuple[str, ...]:
    return tuple(getattr(args, "allow_import", None) or ())


def _import_allowed(args) -> None:
    """The modules named with --allow-import, imported once before the command reads any
    config, so the models and data formats they register are there when it does."""
    from trainlab.models import _import

    for name in dict.fromkeys(_allowed(args)):
        if ":" in name:
            raise ConfigError(f"--allow-import {name}: name a module (e.g. {name.partition(':')[0]}), "
                              "not module:function")
        try:
            _import(name)
        except Exception as e:  # noqa: BLE001 - the module's own failure, whatever it is: one sentence
            where = ("; run from the folder that holds it or put it on PYTHONPATH"
                     if isinstance(e, ModuleNotFoundError) else "")
            raise TrainlabError(f"--allow-import {name}: importing it failed ({type(e).__name__}: "
                                f"{_first_line(e)}){where}") from None


def _flag_for(parser, name: str, annotation: str, help_text: str | None = None) -> None:
    flag = "--" + name.replace("_", "-")
    if annotation.startswith("bool"):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        return
    kind = int if annotation.startswith("int") else float if annotation.startswith("float") else str
    parser.add_argument(flag, type=kind, default=None, metavar=name.upper(), help=help_text)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from trainlab.config import RUN_FIELDS

    g = p.add_argument_group("run")
    g.add_argument("--config", help="TOML file with run and recipe keys; flags override it")
    g.add_argument("--model-kwarg", action="append", type=_kv, metavar="KEY=VALUE",
                   help="model argument, e.g. dropout=0.2 or hidden=[512,256] (repeatable)")
    for name, f in RUN_FIELDS.items():
        if name != "model_kwargs":
            _flag_for(g, name, str(f.type), RUN_HELP.get(name))
    r = p.add_argument_group("recipe fields (override the recipe's values)")
    for name, f in RECIPE_FIELDS.items():
        _flag_for(r, name, str(f.type))


def _config_from_args(args):
    from trainlab.config import RUN_FIELDS, load_toml, resolve

    base = load_toml(args.config) if args.config else {}
    values = {k: getattr(args, k) for k in (*RUN_FIELDS, *RECIPE_FIELDS)
              if k != "model_kwargs" and getattr(args, k, None) is not None}
    if args.model_kwarg:
        values["model_kwargs"] = {**base.get("model_kwargs", {}), **dict(args.model_kwarg)}
    return resolve(values, base=base, origin=str(args.config or "config"))


# ---------------------------------------------------------------- commands

def _print_result(result) -> int:
    from trainlab.analysis.tables import run_summary

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 prints
        return 0
    cfg = result.config
    print(run_summary(f"{cfg.model} / recipe {cfg.recipe} -> {result.run_dir}", result))
    return 0


def _resume_overrides(args) -> dict:
    """`train --resume RUN --lr X ...`: every flag given counts, as with `resume`."""
    from trainlab.config import RUN_FIELDS

    if args.config:
        raise ConfigError("--config cannot be combined with --resume: the run's own config is used; "
                          "give the values to change as flags")
    if args.model_kwarg:
        raise ConfigError("--model-kwarg cannot change on --resume: the model is restored from the "
                          "checkpoint; start a new run instead")
    for flag in ("name", "runs_dir"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')} cannot be combined with --resume: the run "
                              "continues in its own folder (fork it with trainlab resume --into)")
    return {k: getattr(args, k) for k in (*RUN_FIELDS, *RECIPE_FIELDS)
            if k not in ("model_kwargs", "epochs") and getattr(args, k, None) is not None}


def _check_nproc_batch(nproc: int, batch_size: int) -> None:
    if batch_size % nproc:
        raise ConfigError(f"batch_size = {batch_size} is the global batch and must divide evenly "
                          f"across --nproc {nproc} processes: choose a multiple of {nproc}")


def _bar() -> bool:
    """A progress bar only for a person at a terminal (not in CI logs or a pipe)."""
    return sys.stderr.isatty() and os.environ.get("CI") != "true"


def cmd_train(args) -> int:
    from trainlab.api import resume, train

    if args.nproc:
        from trainlab.training.launcher import launch

        if not args.resume:  # the usage error here, in one line, not in every rank's traceback
            _check_nproc_batch(args.nproc, _config_from_args(args).train.batch_size)
        return launch(args.nproc, _without_nproc(sys.argv[1:] if args.argv is None else args.argv),
                      args.max_restarts)
    _check_max_restarts(args)
    if args.resume:
        overrides = _resume_overrides(args)
        return _print_result(resume(args.resume, epochs=args.epochs, overrides=overrides,
                                    allow_changes=args.allow_changes or bool(overrides),
                                    allow_data_change=args.allow_changes, allow_import=_allowed(args),
                                    progress=_bar()))
    cfg = _config_from_args(args)
    if ":" in cfg.model and args.model is None:  # named by a file, not on this command line
        module = cfg.model.partition(":")[0]
        if module not in _allowed(args):
            raise ConfigError(f"{args.config} names the model {cfg.model!r}, which needs importing "
                              f"{module!r}: a file never imports code by itself; pass --allow-import "
                              f"{module} if you trust that module (or give --model on the command line)")
    return _print_result(train(cfg, progress=_bar(), restart=args.restart))


def _check_max_restarts(args) -> None:
    if args.max_restarts and not args.nproc and "TORCHELASTIC_RUN_ID" not in os.environ:
        raise ConfigError("--max-restarts needs --nproc N: torchrun restarts the processes it launched "
                          "(or run under torchrun --max-restarts yourself)")


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def cmd_resume(args) -> int:
    from trainlab.api import resume

    if args.nproc:
        from trainlab.training.launcher import launch

        return launch(args.nproc, _without_nproc(sys.argv[1:] if args.argv is None else args.argv),
                      args.max_restarts)
    _check_max_restarts(args)
    overrides = {k: v for k, v in (("lr", args.lr), ("grad_clip", args.grad_clip),
                                   ("weight_decay", args.weight_decay)) if v is not None}
    if args.reset_optimizer and not args.into:
        raise ConfigError("--reset-optimizer needs --into NEW_DIR: a fresh optimizer makes another "
                          "run, so it is forked, not continued in place")
    return _print_result(resume(args.run_dir, epochs=args.epochs, into=args.into,
                                reset_optimizer=args.reset_optimizer,
                                allow_changes=args.allow_changes or bool(overrides), overrides=overrides,
                                allow_data_change=args.allow_changes, allow_import=_allowed(args),
                                from_checkpoint=args.from_checkpoint, progress=_bar()))


def cmd_inspect(args) -> int:
    from trainlab.analysis.inspection import describe

    print(describe(args.path))
    return 0


def cmd_export(args) -> int:
    from trainlab.analysis.export import export_run

    fmt = getattr(args, "format", "safetensors")
    if fmt == "onnx":
        from trainlab.analysis.onnx_export import PARITY_CHECK_LINE

        weights, meta = export_run(args.path, args.out, allow_import=_allowed(args), format="onnx",
                                   data_dir=args.data_dir)
        table = json.loads(meta.read_text())
        print(PARITY_CHECK_LINE.format(**table["parity"]))
        print(printable(f"exporter {table['exporter']} (opset {table['opset']})"
                        + (f"; fell back: {table['fallback']}" if table.get("fallback") else "")))
    else:
        weights, meta = export_run(args.path, args.out, allow_import=_allowed(args))
    print(printable(f"wrote {weights} and {meta}"))  # paths the user typed: escaped, never raw
    return 0


def cmd_predict(args) -> int:
    """Any model form, any input (prediction.py); rows stream out as chunks are classified."""
    from trainlab.analysis.predict_output import PredictionWriter
    from trainlab.analysis.prediction import Tally, chunks, open_model, predict_stream, test_split_chunks

    model = open_model(args.checkpoint, device=args.device, allow_import=_allowed(args), timeout=args.timeout)
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


def cmd_data_info(args) -> int:
    from trainlab.analysis.tables import table
    from trainlab.data import load_dataset, measure_mean_std

    data = load_dataset(args.dataset, args.data_dir, image_size=args.image_size, skip_bad=True)
    print(f"dataset  {printable(data.name)}")
    print(printable(f"source   {data.source.get('kind')}: {data.source.get('path')} {data.source.get('detail', '')}".rstrip()))
    print(f"shape    {tuple(data.input_shape)} images, {data.num_classes} classes, "
          f"{len(data.train_y)} train / {len(data.test_y)} test, dtype {data.train_x.dtype}")
    print(f"test     {data.test_split}")
    mean, std = measure_mean_std(data.train_x, data.scale)
    print(f"train    mean {mean} std {std} (measured; catalog: mean {data.mean} std {data.std})")
    import torch

    tc = torch.bincount(data.train_y, minlength=data.num_classes).tolist()
    sc = torch.bincount(data.test_y, minlength=data.num_classes).tolist()
    print(table(["label", "class", "train", "test"],
                [[i, c, tc[i], sc[i]] for i, c in enumerate(data.classes)]))
    src = data.source
    if "modes" in src:  # an image folder: what the files are, and what was converted or left out
        print(f"files    modes {', '.join(f'{m} {n}' for m, n in src['modes'].items())}; sizes "
              f"{', '.join(f'{s} {n}' for s, n in list(src['sizes'].items())[:5])}"
              f"{' ...' if len(src['sizes']) > 5 else ''}; {src.get('ignored', 0)} other files ignored")
        if src.get("val_given"):
            print(f"val      the {src['val_given']} images in val/ (counted under train above): the "
                  "runs validate on them, val_size is not used")
        if "test_carved" in src:
            print(f"test     carved: {src['test_carved']['fraction']:.0%} of each class, seed "
                  f"{src['test_carved']['seed']} ({len(src['test_carved']['files'])} files)")
        bad = src.get("bad") or []
        print(f"bad      {src.get('skipped_bad', 0)} file(s) cannot be decoded (training stops on them "
              "unless --skip-bad)" if bad else "bad      none")
        for rel, why in bad[:10]:
            print(f"  {printable(rel)}: {printable(why)}")
    print("sha256 of decoded payloads:")
    for split, h in data.hashes.items():
        print(f"  {split:<13} {h}")
    return 0


def cmd_lr_find(args) -> int:
    import time
    from pathlib import Path

    from trainlab import plots
    from trainlab.store import runs
    from trainlab.training.lr_find import NOT_USED, lr_find

    given = [k for k in NOT_USED if getattr(args, k, None) is not None]
    if given:  # accepted and ignored would be a lie: refused by name
        k = given[0]
        raise ConfigError(f"lr-find does not use --{k.replace('_', '-')} ({NOT_USED[k]}): leave it out here "
                          "and give it to trainlab train")
    cfg = _config_from_args(args)
    seeds = _seed_list(args.seeds)
    out = Path(args.out) if args.out else Path(cfg.runs_dir) / "lr-find" / \
        f"{cfg.model.replace(':', '-')}-{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    _writable_folder(out, "--out")  # before minutes of the test, not after
    result = lr_find(cfg, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr, seeds=seeds)
    figure = plots.lr_find_curve(result.lrs, result.losses, result.suggestion, out / "lr_find",
                                 f"{cfg.model} / recipe {cfg.recipe}, batch {result.batch_size}")
    runs.write_json(out / "lr_find.json", {"model": cfg.model, "recipe": cfg.recipe, "seeds": seeds,
                                           "lrs": result.lrs, "losses": {str(k): v for k, v in result.losses.items()},
                                           "suggestion": result.suggestion, "rule": result.rule,
                                           "input_shape": result.input_shape,
                                           "stopped": {str(k): v for k, v in result.stopped.items()},
                                           "seconds": result.seconds})
    shape = "x".join(map(str, result.input_shape))
    print(f"lr-find: {cfg.model} / recipe {cfg.recipe}, {shape} images, batch {result.batch_size}, {args.steps} steps from "
          f"{args.start_lr:g} to {args.end_lr:g}, seeds {', '.join(map(str, seeds))}: {result.seconds:.1f} s")
    for seed, why in result.stopped.items():
        print(f"  seed {seed}: {why}")
    print(f"suggested lr: {result.suggestion:.3g} ({result.rule})")
    print(printable(f"the curve: {figure.png}"))
    return 0


def _writable_folder(path, flag: str) -> None:
    """`path` is (made) a folder this process can write in, or one sentence now."""
    if path.exists() and not path.is_dir() or path.is_symlink():
        raise ConfigError(f"{flag} {path} is not a folder: name a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainlabError(f"{flag} {path} cannot be created ({e.strerror}): name a folder you can write in") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise TrainlabError(f"{flag} {path} is not writable: name a folder you can write in")


def cmd_sweep(args) -> int:
    from trainlab.tune.sweep import confirm, sweep
    from trainlab.metrics import percent

    result = sweep(args.space, trials=args.trials, out=args.out, workers=args.workers, storage=args.storage)
    s, best = result.summary, result.best
    print(f"sweep {printable(str(args.out))}: {s['trials']} trials ({s['complete']} complete, {s['pruned']} pruned, "
          f"{s['failed']} failed)")
    for row in result.trials:
        if row["state"] == "FAIL":
            print(f"  trial {row['number']} failed: {printable(row.get('reason', 'no reason recorded'))[:300]}")
    print(f"best (by validation, {s['direction']}): trial {best['number']} {best['value']:.4f} "
          f"with {best['params']} -> {printable(str(args.out))}/trials/{best['run']}")
    if s["top5_spread"] is not None:
        print(f"  the top trials' validation scores spread by {s['top5_spread']:.4f}: that much of the lead "
              "may be luck")
    print(f"  its test accuracy, reported once: {percent(best['test_accuracy'])}")
    if args.confirm:
        c = confirm(args.out, args.space, args.confirm, storage=args.storage)
        print(f"confirmed over {args.confirm} more seeds: test accuracy {percent(c['mean'])} "
              f"± {percent(c['std'])}")
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} is invalid: give integers separated by commas, e.g. 0,1,2") from None
    return seeds


def cmd_bench_device(args) -> int:
    from trainlab.analysis.bench_device import run
    from trainlab.analysis.tables import table

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    timings, advice, params = run(args.model, args.batch_size, args.steps)
    print(f"model {args.model} ({params:,} parameters), batch size {args.batch_size}, {args.steps} timed steps")
    print(table(["device", "way", "ms/step", "samples/s", "of which copy ms"],
                [[t.device, t.way, f"{t.ms_per_step:.2f}", f"{args.batch_size * 1000 / t.ms_per_step:,.0f}",
                  f"{t.transfer_ms:.2f}" if t.way == "textbook" else "-"] for t in timings]))
    print(advice)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trainlab", description="Train image classifiers with PyTorch, the practical patterns done right.")
    p.add_argument("--version", action="version", version=f"trainlab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model and record the run")
    _add_run_options(t)
    t.set_defaults(func=cmd_train)

    t.add_argument("--nproc", type=_positive_int, help="launch N data-parallel processes on this machine (torchrun)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR instead (same as trainlab resume; "
                   "the flags given change the run as resume's do, or are refused by name)")
    t.add_argument("--allow-changes", action="store_true", help="with --resume: accept changed data or config")
    t.add_argument("--restart", action="store_true", help="the named run's folder exists: start over, the old "
                   "folder kept aside as NAME-before-restart-<time> (without it, the same command continues it)")
    t.add_argument("--max-restarts", type=_positive_int, default=0, metavar="N",
                   help="with --nproc: when a process dies, torchrun restarts them all (up to N times) and "
                        "they continue from the newest checkpoint")
    add_allow_import(t)

    r = sub.add_parser("resume", help="continue a run from its newest verified checkpoint")
    r.add_argument("run_dir")
    r.add_argument("--epochs", type=_positive_int, help="train up to this many epochs in all (extends the run)")
    r.add_argument("--into", metavar="NEW_DIR", help="fork into a new run folder instead of continuing in place")
    r.add_argument("--from", dest="from_checkpoint", metavar="NAME",
                   help="continue from this checkpoint (e.g. best.pt) instead of the newest; in place, "
                        "newer checkpoints are set aside in checkpoints/superseded-<time>/")
    r.add_argument("--reset-optimizer", action="store_true",
                   help="with --into: start with fresh optimizer state (see the loss spike)")
    r.add_argument("--lr", type=float, help="change the learning rate (implies --allow-changes)")
    r.add_argument("--grad-clip", type=float, help="change gradient clipping (implies --allow-changes)")
    r.add_argument("--weight-decay", type=float, help="change weight decay (implies --allow-changes)")
    r.add_argument("--allow-changes", action="store_true", help="resume even if the data or config differ")
    r.add_argument("--nproc", type=_positive_int, help="resume with N data-parallel processes (torchrun)")
    r.add_argument("--max-restarts", type=_positive_int, default=0, metavar="N",
                   help="with --nproc: restart the processes up to N times if one dies")
    add_allow_import(r)
    r.set_defaults(func=cmd_resume)

    i = sub.add_parser("inspect", help="what a checkpoint, state_dict or run folder holds")
    i.add_argument("path")
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
    pr.add_argument("-n", "--limit", dest="n", type=_positive_int, metavar="N",
                    help="classify at most N images (default: all named; 10 from the test split)")
    pr.add_argument("-k", "--top", type=_positive_int, default=3, metavar="K",
                    help="the K most likely classes per image (default 3)")
    pr.add_argument("--output", choices=("table", "csv", "json"), default="table",
                    help="table (default), csv or json (one document) on stdout")
    pr.add_argument("--data-dir")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                    help="a model.onnx is stopped after this long (default 600)")
    add_allow_import(pr)
    pr.set_defaults(func=cmd_predict)

    from trainlab.cli.reports import add_commands  # evaluate, compare, report, experiment

    add_commands(sub)
    from trainlab.cli.serve import add_command as add_serve  # serve

    add_serve(sub)

    lf = sub.add_parser("lr-find", help="the learning-rate range test: a suggested rate, and its curve")
    _add_run_options(lf)
    lf.add_argument("--steps", type=_positive_int, default=200, help="steps of the test (default 200)")
    lf.add_argument("--start-lr", type=float, default=1e-6)
    lf.add_argument("--end-lr", type=float, default=1.0)
    lf.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (a band)")
    lf.add_argument("--out", metavar="DIR", help="where the curve goes (default RUNS_DIR/lr-find/<model>-<time>)")
    add_allow_import(lf)
    lf.set_defaults(func=cmd_lr_find)

    sw = sub.add_parser("sweep", help="a hyperparameter sweep on Optuna (crash-safe: run it again to continue)")
    sw.add_argument("space", help="TOML: fixed keys at the top, a [space] table of the keys to search")
    sw.add_argument("--trials", type=_positive_int, required=True, help="complete + pruned trials in all")
    sw.add_argument("--out", required=True, metavar="DIR", help="the sweep folder (trials, study journal, summary)")
    sw.add_argument("--workers", type=_positive_int, default=1, help="parallel trial processes on this machine")
    sw.add_argument("--confirm", type=_positive_int, metavar="N", help="retrain the winner with N more seeds")
    sw.add_argument("--storage", metavar="URL", help="an Optuna RDB URL (e.g. postgresql://...) instead of the "
                    "journal file: machines running the same command share one study (give it on every run)")
    add_allow_import(sw)
    sw.set_defaults(func=cmd_sweep)

    b = sub.add_parser("bench-device", help="time training steps per device: does the GPU help?")
    b.add_argument("--model", default="cnn")
    b.add_argument("--batch-size", type=_positive_int, default=256)
    b.add_argument("--steps", type=_positive_int, default=30)
    b.add_argument("--threads", type=_positive_int)
    b.set_defaults(func=cmd_bench_device)

    d = sub.add_parser("data", help="data set commands")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    di = dsub.add_parser("info", help="source, files, shapes, class counts, mean/std, hashes")
    di.add_argument("--dataset", default="fashion-mnist")
    di.add_argument("--data-dir")
    di.add_argument("--image-size", type=_positive_int, help="folder: images: the size policy to show (see train)")
    add_allow_import(di)
    di.set_defaults(func=cmd_data_info)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    from trainlab.training import launcher
    from trainlab.training.distributed import shutdown
    from trainlab.training.signals import stop_like_ctrl_c

    launcher.die_with_torchrun()  # a torchrun worker never trains on after torchrun is gone
    stop_like_ctrl_c()
    _held.clear()
    code = _run(args)
    if code and _held:  # a rank under `--nproc`: the launcher prints one rank's line, once
        line, secondary = _held[-1]
        if not launcher.hand_over(line, code, secondary):
            print(line, file=sys.stderr)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    if shutdown():
        # gloo's worker threads can abort the interpreter's own teardown ("terminate called
        # without an active exception", seen in ~1 run of 6 here): the work is done and the
        # process group destroyed, so leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(args) -> int:
    """The command's exit code; user errors become one line on stderr."""
    try:
        _import_allowed(args)
        code = args.func(args)
        from trainlab.training.distributed import finish_together

        finish_together()  # DDP: no rank tears down while another still talks to it
        return code
    except TrainlabError as e:
        if os.environ.get("TRAINLAB_DEBUG"):
            raise
        _say(f"trainlab: error: {printable(e)}")  # a file name cannot forge a line
        return e.exit_code
    except KeyboardInterrupt as e:
        import signal

        signum = getattr(e, "signum", signal.SIGINT)  # Stopped: SIGTERM or SIGHUP
        try:  # after SIGHUP the terminal may be gone
            _say("trainlab: interrupted" + (f" ({signal.Signals(signum).name})" if signum != signal.SIGINT else ""))
        except (OSError, ValueError):
            pass
        return 128 + signum
    except BrokenPipeError:  # `trainlab inspect ... | head`: the reader left; nothing to say
        _silence_stdout()
        return 1
    except RuntimeError as e:
        # a peer process died under DDP: gloo/NCCL report it as a RuntimeError
        from trainlab.training.distributed import dist

        if dist.is_available() and dist.is_initialized():
            _say(f"trainlab: error: lost contact with the other training processes ({_first_line(e)}); "
                 "one probably died. Resume from the last checkpoint with: trainlab resume RUN_DIR",
                 secondary=True)
            return 1
        if "WORLD_SIZE" in os.environ and ("gloo" in str(e).lower() or "nccl" in str(e).lower()):
            # joining the process group failed: a peer never came up within TRAINLAB_DIST_TIMEOUT
            _say(f"trainlab: error: could not connect the training processes ({_first_line(e)}); start "
                 "the command again, or raise TRAINLAB_DIST_TIMEOUT (seconds, default 120) on a slow or "
                 "busy machine", secondary=True)
            return 1
        from trainlab.training.memory import is_out_of_memory

        if is_out_of_memory(e):  # CUDA's OutOfMemoryError or the CPU allocator's, outside training
            return _out_of_memory()
        return _unexpected(e)
    except MemoryError:
        if os.environ.get("TRAINLAB_DEBUG"):
            raise
        return _out_of_memory()
    except OSError as e:  # the disk or the OS said no (full, read-only, missing): one sentence
        if os.environ.get("TRAINLAB_DEBUG"):
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _say(f"trainlab: error: {e.strerror or e}{where}; earlier files are intact")
        return 1
    except Exception as e:
        return _unexpected(e)


def _out_of_memory() -> int:
    _say("trainlab: error: out of memory: use a smaller batch size, model, image size or data set "
         "(earlier files are intact)")
    return 1


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _unexpected(e: Exception) -> int:
    """Still one line, but marked as trainlab's own fault: a bug to report, not a user error."""
    if os.environ.get("TRAINLAB_DEBUG"):
        raise e
    _say(f"trainlab: internal error: {type(e).__name__}: {_first_line(e)} (a bug in trainlab; "
         "TRAINLAB_DEBUG=1 shows the traceback)")
    return 1


_held: list[tuple[str, bool]] = []


def _say(line: str, secondary: bool = False) -> None:
    """The command's one error line; a rank under `--nproc` holds it for the launcher (main)."""
    from trainlab.training.launcher import launched_rank

    if launched_rank():
        _held.append((line, secondary))
    else:
        print(line, file=sys.stderr)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not raise again
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
