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
from pathlib import Path

from . import __version__
from .errors import ConfigError, TrainlabError
from .recipes import RECIPE_FIELDS

log = logging.getLogger("trainlab")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 2
        self.print_usage(sys.stderr)
        print(f"trainlab: error: {message}", file=sys.stderr)
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


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--config", help="TOML file with run and recipe keys; flags override it")
    g.add_argument("--dataset", help="fashion-mnist (default), mnist, or idx:DIR")
    g.add_argument("--data-dir", help="folder with the four IDX files (else TRAINLAB_DATA, cache, download)")
    g.add_argument("--model", help="mlp (default), mlp-reg, cnn, ... or module:function")
    g.add_argument("--model-kwarg", action="append", type=_kv, metavar="KEY=VALUE",
                   help="model argument, e.g. dropout=0.2 or hidden=[512,256] (repeatable)")
    g.add_argument("--recipe", help="textbook or fast (default); its fields below override it")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    g.add_argument("--val-size", type=int, help="validation samples carved from train (default 5000)")
    g.add_argument("--name", help="run folder name under --runs-dir (default: generated)")
    g.add_argument("--runs-dir", help="where run folders go (default runs)")
    g.add_argument("--quiet", action="store_true", default=None, help="no progress bar or per-epoch lines")
    r = p.add_argument_group("recipe fields")
    for name, f in RECIPE_FIELDS.items():
        flag = "--" + name.replace("_", "-")
        if f.type in ("bool", bool):
            r.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            r.add_argument(flag, type=kind, default=None, metavar=name.upper())


def _config_from_args(args) -> "Config":
    from .config import load_toml, resolve

    base = load_toml(args.config) if args.config else {}
    values = {}
    for key in ("dataset", "data_dir", "model", "recipe", "seed", "device", "threads", "val_size",
                "name", "runs_dir", "quiet", *RECIPE_FIELDS):
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    if args.model_kwarg:
        values["model_kwargs"] = {**base.get("model_kwargs", {}), **dict(args.model_kwarg)}
    return resolve(values, base=base, origin=str(args.config or "config"))


# ---------------------------------------------------------------- commands

def cmd_train(args) -> int:
    from .api import train
    from .tables import run_summary

    cfg = _config_from_args(args)
    result = train(cfg)
    hist = result.history
    spe = sum(r["train_seconds"] for r in hist) / len(hist)
    print(run_summary(f"{cfg.model} / recipe {cfg.recipe} -> {result.run_dir}", result.test, spe,
                      len(hist), result.device))
    return 0


def cmd_evaluate(args) -> int:
    from .api import evaluate_run
    from .tables import per_class_table

    summary = evaluate_run(args.path, data_dir=args.data_dir, device=args.device)
    print(per_class_table(summary))
    return 0


def cmd_data_info(args) -> int:
    from .data import load_dataset, measure_mean_std
    from .tables import table

    data = load_dataset(args.dataset, args.data_dir)
    print(f"dataset  {data.name}")
    print(f"source   {data.source.get('kind')}: {data.source.get('path')} {data.source.get('detail', '')}".rstrip())
    print(f"shape    {tuple(data.input_shape)} images, {data.num_classes} classes, "
          f"{len(data.train_y)} train / {len(data.test_y)} test, dtype {data.train_x.dtype}")
    mean, std = measure_mean_std(data.train_x, data.scale)
    print(f"train    mean {mean} std {std} (measured; catalog: mean {data.mean} std {data.std})")
    import torch

    tc = torch.bincount(data.train_y, minlength=data.num_classes).tolist()
    sc = torch.bincount(data.test_y, minlength=data.num_classes).tolist()
    print(table(["label", "class", "train", "test"],
                [[i, c, tc[i], sc[i]] for i, c in enumerate(data.classes)]))
    print("sha256 of decoded payloads:")
    for split, h in data.hashes.items():
        print(f"  {split:<13} {h}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trainlab", description="Train image classifiers with PyTorch, the practical patterns done right.")
    p.add_argument("--version", action="version", version=f"trainlab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model and record the run")
    _add_run_options(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="per-class test results of a run folder or checkpoint")
    e.add_argument("path", help="run folder or checkpoint file")
    e.add_argument("--data-dir")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("data", help="data set commands")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    di = dsub.add_parser("info", help="source, files, shapes, class counts, mean/std, hashes")
    di.add_argument("--dataset", default="fashion-mnist")
    di.add_argument("--data-dir")
    di.set_defaults(func=cmd_data_info)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TrainlabError as e:
        if os.environ.get("TRAINLAB_DEBUG"):
            raise
        print(f"trainlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("trainlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
