"""The argparse pieces every command shares: the parser class (usage errors in one line,
exit 2), value types, --allow-import, and the run and recipe flags built from the fields of
Config and Recipe, with the help their metadata holds.

Imports stay light: `trainlab --help` and every command's `--help` answer without torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from trainlab.config import RUN_FIELDS, load_toml, resolve
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

def _flag_for(parser, name: str, annotation: str, help_text: str) -> None:
    flag = "--" + name.replace("_", "-")
    help_text = help_text.replace("%", "%%")  # argparse formats help with %: a plain "25%" is text
    if annotation.startswith("bool"):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        return
    kind = int if annotation.startswith("int") else float if annotation.startswith("float") else str
    parser.add_argument(flag, type=kind, default=None, metavar=name.upper(), help=help_text)


def add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--config", help="TOML file with run and recipe keys; flags override it")
    g.add_argument("--model-kwarg", action="append", type=kv, metavar="KEY=VALUE",
                   help="model argument, e.g. dropout=0.2 or hidden=[512,256] (repeatable)")
    for name, f in RUN_FIELDS.items():
        if name != "model_kwargs":
            _flag_for(g, name, str(f.type), f.metadata["help"])
    r = p.add_argument_group("recipe fields (override the recipe's values)")
    for name, f in RECIPE_FIELDS.items():
        _flag_for(r, name, str(f.type), f.metadata["help"])


def config_from_args(args):
    base = load_toml(args.config) if args.config else {}
    values = {k: getattr(args, k) for k in (*RUN_FIELDS, *RECIPE_FIELDS)
              if k != "model_kwargs" and getattr(args, k, None) is not None}
    if args.model_kwarg:
        values["model_kwargs"] = {**base.get("model_kwargs", {}), **dict(args.model_kwarg)}
    return resolve(values, base=base, origin=str(args.config or "config"))
