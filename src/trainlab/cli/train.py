"""Commands that train: train, resume, lr-find and sweep.

Each handler returns an exit code and raises TrainlabError subclasses for failures the user
can act on. The library is imported inside the handlers: it imports torch, and every
command's `--help` answers without it.
"""

from __future__ import annotations

import os
import sys

from trainlab.cli import launch
from trainlab.cli.args import (
    add_allow_import,
    add_run_options,
    allowed,
    config_from_args,
    positive_int,
)
from trainlab.config import RUN_FIELDS
from trainlab.errors import ConfigError, TrainlabError
from trainlab.recipes import RECIPE_FIELDS
from trainlab.text import printable


def _print_result(result) -> int:
    from trainlab.analysis.tables import run_summary

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 prints
        return 0
    cfg = result.config
    print(run_summary(f"{cfg.model} / recipe {cfg.recipe} -> {result.run_dir}", result))
    return 0


def _resume_overrides(args) -> dict:
    """`train --resume RUN --lr X ...`: every flag given counts, as with `resume`."""
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


def _bar() -> bool:
    """A progress bar only for a person at a terminal (not in CI logs or a pipe)."""
    return sys.stderr.isatty() and os.environ.get("CI") != "true"


def cmd_train(args) -> int:
    from trainlab.api import resume, train

    if args.nproc:
        if not args.resume:  # the usage error here, in one line, not in every rank's traceback
            launch.check_nproc_batch(args.nproc, config_from_args(args).train.batch_size)
        return launch.relaunch(args)
    launch.check_max_restarts(args)
    if args.resume:
        overrides = _resume_overrides(args)
        return _print_result(resume(args.resume, epochs=args.epochs, overrides=overrides,
                                    allow_changes=args.allow_changes or bool(overrides),
                                    allow_data_change=args.allow_changes, allow_import=allowed(args),
                                    progress=_bar()))
    cfg = config_from_args(args)
    if ":" in cfg.model and args.model is None:  # named by a file, not on this command line
        module = cfg.model.partition(":")[0]
        if module not in allowed(args):
            raise ConfigError(f"{args.config} names the model {cfg.model!r}, which needs importing "
                              f"{module!r}: a file never imports code by itself; pass --allow-import "
                              f"{module} if you trust that module (or give --model on the command line)")
    return _print_result(train(cfg, progress=_bar(), restart=args.restart))


def cmd_resume(args) -> int:
    from trainlab.api import resume

    if args.nproc:
        return launch.relaunch(args)
    launch.check_max_restarts(args)
    overrides = {k: v for k, v in (("lr", args.lr), ("grad_clip", args.grad_clip),
                                   ("weight_decay", args.weight_decay)) if v is not None}
    if args.reset_optimizer and not args.into:
        raise ConfigError("--reset-optimizer needs --into NEW_DIR: a fresh optimizer makes another "
                          "run, so it is forked, not continued in place")
    return _print_result(resume(args.run_dir, epochs=args.epochs, into=args.into,
                                reset_optimizer=args.reset_optimizer,
                                allow_changes=args.allow_changes or bool(overrides), overrides=overrides,
                                allow_data_change=args.allow_changes, allow_import=allowed(args),
                                from_checkpoint=args.from_checkpoint, progress=_bar()))


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
    cfg = config_from_args(args)
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


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} is invalid: give integers separated by commas, e.g. 0,1,2") from None
    return seeds


def cmd_sweep(args) -> int:
    from trainlab.metrics import percent
    from trainlab.tune.sweep import confirm, sweep

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


# ---------------------------------------------------------------- registration

def add_run_commands(sub) -> None:
    """train and resume."""
    t = sub.add_parser("train", help="train a model and record the run")
    add_run_options(t)
    t.set_defaults(func=cmd_train)

    t.add_argument("--nproc", type=positive_int, help="launch N data-parallel processes on this machine (torchrun)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR instead (same as trainlab resume; "
                   "the flags given change the run as resume's do, or are refused by name)")
    t.add_argument("--allow-changes", action="store_true", help="with --resume: accept changed data or config")
    t.add_argument("--restart", action="store_true", help="the named run's folder exists: start over, the old "
                   "folder kept aside as NAME-before-restart-<time> (without it, the same command continues it)")
    t.add_argument("--max-restarts", type=positive_int, default=0, metavar="N",
                   help="with --nproc: when a process dies, torchrun restarts them all (up to N times) and "
                        "they continue from the newest checkpoint")
    add_allow_import(t)

    r = sub.add_parser("resume", help="continue a run from its newest verified checkpoint")
    r.add_argument("run_dir")
    r.add_argument("--epochs", type=positive_int, help="train up to this many epochs in all (extends the run)")
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
    r.add_argument("--nproc", type=positive_int, help="resume with N data-parallel processes (torchrun)")
    r.add_argument("--max-restarts", type=positive_int, default=0, metavar="N",
                   help="with --nproc: restart the processes up to N times if one dies")
    add_allow_import(r)
    r.set_defaults(func=cmd_resume)


def add_search_commands(sub) -> None:
    """lr-find and sweep."""
    lf = sub.add_parser("lr-find", help="the learning-rate range test: a suggested rate, and its curve")
    add_run_options(lf)
    lf.add_argument("--steps", type=positive_int, default=200, help="steps of the test (default 200)")
    lf.add_argument("--start-lr", type=float, default=1e-6, help="the rate the test starts at (default 1e-6)")
    lf.add_argument("--end-lr", type=float, default=1.0, help="the rate the test ends at (default 1)")
    lf.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (a band)")
    lf.add_argument("--out", metavar="DIR", help="where the curve goes (default RUNS_DIR/lr-find/<model>-<time>)")
    add_allow_import(lf)
    lf.set_defaults(func=cmd_lr_find)

    sw = sub.add_parser("sweep", help="a hyperparameter sweep on Optuna (crash-safe: run it again to continue)")
    sw.add_argument("space", help="TOML: fixed keys at the top, a [space] table of the keys to search")
    sw.add_argument("--trials", type=positive_int, required=True, help="complete + pruned trials in all")
    sw.add_argument("--out", required=True, metavar="DIR", help="the sweep folder (trials, study journal, summary)")
    sw.add_argument("--workers", type=positive_int, default=1, help="parallel trial processes on this machine")
    sw.add_argument("--confirm", type=positive_int, metavar="N", help="retrain the winner with N more seeds")
    sw.add_argument("--storage", metavar="URL", help="an Optuna RDB URL (e.g. postgresql://...) instead of the "
                    "journal file: machines running the same command share one study (give it on every run)")
    add_allow_import(sw)
    sw.set_defaults(func=cmd_sweep)
