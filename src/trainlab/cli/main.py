"""The command line: builds the parser, dispatches to the command, and turns every failure
into one sentence.

Exit codes: 0 ok, 2 usage or config errors, 1 other failures. A user error prints one
sentence, never a traceback (set TRAINLAB_DEBUG=1 to see one). The commands live by subject
in train.py, files.py, reports.py, serve.py and data.py; the `--nproc` launcher in launch.py.
The training modules are imported inside the functions that need them: they import torch, and
`--help` and `--version` answer without it.
"""

from __future__ import annotations

import logging
import os
import sys

from trainlab._version import __version__
from trainlab.cli import data, files, launch, reports, serve, train
from trainlab.cli.args import Parser, first_line, import_allowed
from trainlab.errors import TrainlabError
from trainlab.text import printable

log = logging.getLogger("trainlab")


def build_parser() -> Parser:
    p = Parser(prog="trainlab", description="Train image classifiers with PyTorch, the practical patterns done right.")
    p.add_argument("--version", action="version", version=f"trainlab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    train.add_run_commands(sub)  # train, resume
    files.add_commands(sub)  # inspect, export, predict
    reports.add_commands(sub)  # evaluate, compare, report, experiment
    serve.add_command(sub)  # serve
    train.add_search_commands(sub)  # lr-find, sweep
    data.add_commands(sub)  # bench-device, data info
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    # torch arrives with these: imported after parsing, so --help and --version answer without it
    from trainlab.training.distributed import shutdown
    from trainlab.training.signals import stop_like_ctrl_c

    launch.die_with_torchrun()  # a torchrun worker never trains on after torchrun is gone
    stop_like_ctrl_c()
    _held.clear()
    code = _run(args)
    if code and _held:  # a rank under `--nproc`: the launcher prints one rank's line, once
        line, secondary = _held[-1]
        if not launch.hand_over(line, code, secondary):
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
    from trainlab.training.distributed import dist, finish_together
    from trainlab.training.memory import is_out_of_memory

    try:
        import_allowed(args)
        code = args.func(args)
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
        if dist.is_available() and dist.is_initialized():
            _say(f"trainlab: error: lost contact with the other training processes ({first_line(e)}); "
                 "one probably died. Resume from the last checkpoint with: trainlab resume RUN_DIR",
                 secondary=True)
            return 1
        if "WORLD_SIZE" in os.environ and ("gloo" in str(e).lower() or "nccl" in str(e).lower()):
            # joining the process group failed: a peer never came up within TRAINLAB_DIST_TIMEOUT
            _say(f"trainlab: error: could not connect the training processes ({first_line(e)}); start "
                 "the command again, or raise TRAINLAB_DIST_TIMEOUT (seconds, default 120) on a slow or "
                 "busy machine", secondary=True)
            return 1
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


def _unexpected(e: Exception) -> int:
    """Still one line, but marked as trainlab's own fault: a bug to report, not a user error."""
    if os.environ.get("TRAINLAB_DEBUG"):
        raise e
    _say(f"trainlab: internal error: {type(e).__name__}: {first_line(e)} (a bug in trainlab; "
         "TRAINLAB_DEBUG=1 shows the traceback)")
    return 1


_held: list[tuple[str, bool]] = []


def _say(line: str, secondary: bool = False) -> None:
    """The command's one error line; a rank under `--nproc` holds it for the launcher (main)."""
    if launch.launched_rank():
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
