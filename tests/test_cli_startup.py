"""The command line answers at once: `--help`, `--version` and every command's `--help` never
import torch (seconds of start-up), and every run and recipe flag has its help."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from conftest import cli_env

# In a fresh process: the package face (what the console script imports first), then each
# command's --help in turn; after each, whether torch has been imported so far.
DRIVER = r"""
import argparse, contextlib, io, json, sys

import trainlab
from trainlab.cli.main import build_parser, main

def commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from commands(sub, (*prefix, name))

seen = {"import trainlab": [0, "torch" in sys.modules, True]}
for argv in [["--help"], ["--version"], *[[*c, "--help"] for c in commands(build_parser())]]:
    out, code = io.StringIO(), None
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
    seen[" ".join(argv)] = [code, "torch" in sys.modules, bool(out.getvalue().strip())]
print(json.dumps(seen))
"""


def test_help_and_version_never_import_torch():
    proc = subprocess.run([sys.executable, "-c", DRIVER], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout)
    assert {"--help", "--version", "train --help", "data info --help", "experiment fashion --help"} <= set(seen)
    for what, (code, torch_imported, printed) in seen.items():  # in order: the first offender is named
        assert not torch_imported, f"`{what}` imported torch"
        assert code == 0 and printed, f"`{what}` exited {code}, printing {'something' if printed else 'nothing'}"


def test_the_entry_point_imports_no_torch_for_version():
    """`python -m trainlab --version` as a user runs it: no torch module in Python's import log."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "trainlab", "--version"], env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("trainlab "), proc.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "trainlab.cli.main" in imported  # the log is read: the command's own modules are in it
    assert not [m for m in imported if m.split(".")[0] == "torch"]


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_every_flag_of_train_and_lr_find_has_help():
    from trainlab.cli.main import build_parser
    from trainlab.config import RUN_FIELDS
    from trainlab.recipes import RECIPE_FIELDS

    parser = build_parser()
    for command in ("train", "lr-find"):
        sub = _subparser(parser, command)
        flags = {s for a in sub._actions for s in a.option_strings}
        for name in [*RUN_FIELDS, *RECIPE_FIELDS]:  # every field is a flag (model_kwargs: --model-kwarg)
            assert f"--{name.replace('_', '-')}" in flags or name == "model_kwargs", name
        missing = [a.option_strings for a in sub._actions if a.option_strings and not (a.help or "").strip()]
        assert not missing, f"{command} flags without help: {missing}"
        sub.format_help()  # a '%' in a help text is printed, not taken for a format


def test_train_help_shows_the_recipe_fields_help():
    proc = subprocess.run([sys.executable, "-m", "trainlab", "train", "--help"], env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe = proc.stdout.split("recipe fields (override the recipe's values):", 1)[1]
    assert "learning rate: the peak rate when a schedule is on" in recipe
    assert "first 25% of steps" in " ".join(recipe.split())
