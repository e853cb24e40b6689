"""The argparse pieces every command shares: the parser class (usage errors in one line,
exit 2), value types, --allow-import, and the run and recipe flags built from Config.

Imports stay light: `trainlab --help` and every command's `--help` answer without torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from trainlab.errors import ConfigError, TrainlabError
from trainlab.recipes import RECIPE_FIELDS
from trainlab.text import printable


class Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 2
        self.print_usage(sys.stderr)
        print(f"trainlab: error: {printable(message)}", file=sys.stderr)
        raise SystemExit(2)


def kv(text: str):
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0 and finite, got {text!r}")
    return value


# ---------------------------------------------------------------- --allow-import

def add_allow_import(parser) -> None:
    parser.add_argument("--allow-import", action="append", metavar="MODULE",
                        help="import MODULE first (its trainlab.register / register_format calls "
                             "take effect) and allow a model that a run's files name as "
                             "MODULE:function (a file never imports code by itself; repeatable)")


def allowed(args) -> tuple[str, ...]:
    return tuple(getattr(args, "allow_import", None) or ())


def import_allowed(args) -> None:
    """The modules named with --allow-import, imported once before the command reads any
    config, so the models and data formats they register are there when it does."""
    # models import torch: imported here, after parsing, so that --help never pays for it
    from trainlab.models import _import

    for name in dict.fromkeys(allowed(args)):
        if ":" in name:
            raise ConfigError(f"--allow-import {name}: name a module (e.g. {name.partition(':')[0]}), "
                              "not module:function")
        try:
            _import(name)
        except Exception as e:  # noqa: BLE001 - the module's own failure, whatever it is: one sentence
            where = ("; run from the folder that holds it or put it on PYTHONPATH"
                     if isinstance(e, ModuleNotFoundError) else "")
            raise TrainlabError(f"--allow-import {name}: importing it failed ({type(e).__name__}: "
                                f"{first_line(e)}){where}") from None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


# ---------------------------------------------------------------- run and recipe flags

def _flag_for(parser, name: str, annotation: str, help_text: str | None = None) -> None:
    flag = "--" + name.replace("_", "-")
    if annotation.startswith("bool"):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        return
    kind = int if annotation.startswith("int") else float if annotation.startswith("float") else str
    parser.add_argument(flag, type=kind, default=None, metavar=name.upper(), help=help_text)


def add_run_options(p: argparse.ArgumentParser) -> None:
    from trainlab.config import RUN_FIELDS

    g = p.add_argument_group("run")
    g.add_argument("--config", help="TOML file with run and recipe keys; flags override it")
    g.add_argument("--model-kwarg", action="append", type=kv, metavar="KEY=VALUE",
                   help="model argument, e.g. dropout=0.2 or hidden=[512,256] (repeatable)")
    for name, f in RUN_FIELDS.items():
        if name != "model_kwargs":
            _flag_for(g, name, str(f.type), RUN_HELP.get(name))
    r = p.add_argument_group("recipe fields (override the recipe's values)")
    for name, f in RECIPE_FIELDS.items():
        _flag_for(r, name, str(f.type))


def config_from_args(args):
    from trainlab.config import RUN_FIELDS, load_toml, resolve

    base = load_toml(args.config) if args.config else {}
    values = {k: getattr(args, k) for k in (*RUN_FIELDS, *RECIPE_FIELDS)
              if k != "model_kwargs" and getattr(args, k, None) is not None}
    if args.model_kwarg:
        values["model_kwargs"] = {**base.get("model_kwargs", {}), **dict(args.model_kwarg)}
    return resolve(values, base=base, origin=str(args.config or "config"))
