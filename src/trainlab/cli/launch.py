"""`trainlab train --nproc N`: the launcher that runs the same command under torchrun, the
ranks' side of its error hand-off, and the checks of --nproc and --max-restarts.

The launcher owns its torchrun: a signal it gets (SIGTERM from kill or a supervisor, SIGINT,
SIGHUP) goes to torchrun once, which passes it to every rank (they save as one process
does); a second signal, or a torchrun still running GRACE_S later, ends the whole tree with
SIGKILL. torchrun runs in its own session (a terminal's Ctrl-C reaches the ranks once, via
the launcher and torchrun, never twice); torchrun stops when the launcher is gone, and each
rank when torchrun is gone (stop_when_parent_ends): a kill -9 anywhere orphans no process.

A rank that fails writes its one error line into a file in a folder the launcher made
(ERRORS_ENV) instead of printing it; the launcher prints one of them, once, and exits with
that rank's code (2 for usage errors). torchrun's own logs and traceback are silenced
(`python -m trainlab.cli.launch` is torchrun without them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from trainlab.errors import ConfigError, TrainlabError

ERRORS_ENV = "TRAINLAB_LAUNCH_ERRORS"  # the folder where ranks leave their error line
GRACE_S = 90.0  # after a signal, before SIGKILL (torchrun itself gives its ranks 30 s, then kills them)
SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
MAX_ERROR_FILE = 64 << 10


def launch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Re-run `trainlab ARGV` under torchrun with `nproc` processes on this machine; with
    `max_restarts`, torchrun restarts every process when one dies, and the same command
    continues the run (training.rerun). Returns the exit code."""
    if nproc < 1:
        raise TrainlabError(f"--nproc {nproc} is invalid: use 1 or more processes")
    args = ["--standalone", f"--nproc_per_node={nproc}", *([f"--max-restarts={max_restarts}"] if max_restarts else []),
            "-m", "trainlab", *argv]
    print("trainlab: launching torch.distributed.run " + " ".join(args), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="trainlab-launch-") as errors:
        # OMP_NUM_THREADS=1 is torchrun's own default for its workers, set here without its banner
        env = {**os.environ, ERRORS_ENV: errors, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        return _supervise([sys.executable, "-m", "trainlab.cli.launch", *args], env, Path(errors))


def _supervise(cmd: list[str], env: dict, errors: Path) -> int:
    got: list[int] = []
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def forward(signum, frame):
        got.append(signum)
        if len(got) == 1:  # torchrun passes it to every rank, which saves and stops
            _send(proc.pid, signum)
        else:  # a second Ctrl-C: stop now, without saving
            kill_tree(proc.pid)

    old = {s: signal.signal(s, forward) for s in SIGNALS}
    killed, ranks = False, []
    try:
        deadline = None
        while True:
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                ranks = descendants(proc.pid) or ranks  # known, should torchrun die first
                if got and deadline is None:
                    deadline = time.monotonic() + GRACE_S
                if deadline is not None and time.monotonic() > deadline and not killed:
                    kill_tree(proc.pid)
                    killed = True
        # torchrun killed under its ranks: they get SIGTERM (stop_when_parent_ends) and save; wait
        # for them (bounded) so that their line is read and none is left behind
        end = time.monotonic() + GRACE_S
        while proc.returncode < 0 and any(map(_alive, ranks)) and time.monotonic() < end:
            time.sleep(0.1)
        for p in filter(_alive, ranks):
            _send(p, signal.SIGKILL)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return _report(proc.returncode, got[0] if got else None, killed, errors)


def _report(code: int, signum: int | None, killed: bool, errors: Path) -> int:
    """Print one line and return the exit code for what torchrun and its ranks did."""
    if code == 0:  # finished (a signal too late to stop it changes nothing)
        return 0
    found = read_errors(errors)
    name = signal.Signals(signum).name if signum else None
    if killed:
        line = (f"trainlab: error: {name}: the training processes did not stop within {GRACE_S:g} s and "
                "were killed; continue from the newest checkpoint with: trainlab resume RUN_DIR")
        exit_code = 128 + signum
    elif found is not None:
        line, exit_code = found["line"], found["code"]
        if signum and exit_code not in (128 + s for s in SIGNALS):
            exit_code = 128 + signum
    elif signum:
        line = f"trainlab: interrupted ({name})"
        exit_code = 128 + signum
    else:
        line = (f"trainlab: error: a training process ended without a message (torchrun exit code {code}); "
                "it was probably killed: continue from the newest checkpoint with: trainlab resume RUN_DIR")
        exit_code = 1
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # after SIGHUP the terminal may be gone
        pass
    return exit_code


def read_errors(errors: Path) -> dict | None:
    """The line to show from the ranks' error files: the newest restart round's; a cause over
    a consequence (a rank that lost its peer); then rank 0's, whose message names the run."""
    found = []
    for p in errors.glob("round-*-rank-*.json"):
        try:
            with open(p, "rb") as f:
                e = json.loads(f.read(MAX_ERROR_FILE).decode("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(e, dict) and isinstance(e.get("line"), str) and type(e.get("code")) is int and \
                type(e.get("round")) is int and type(e.get("rank")) is int:
            found.append(((-e["round"], bool(e.get("secondary")), e["rank"]), e))
    return min(found, key=lambda f: f[0])[1] if found else None


# ---------------------------------------------------------------- the flags

def check_nproc_batch(nproc: int, batch_size: int) -> None:
    if batch_size % nproc:
        raise ConfigError(f"batch_size = {batch_size} is the global batch and must divide evenly "
                          f"across --nproc {nproc} processes: choose a multiple of {nproc}")


def check_max_restarts(args) -> None:
    if args.max_restarts and not args.nproc and "TORCHELASTIC_RUN_ID" not in os.environ:
        raise ConfigError("--max-restarts needs --nproc N: torchrun restarts the processes it launched "
                          "(or run under torchrun --max-restarts yourself)")


def without_nproc(argv: list[str]) -> list[str]:
    """The command line the ranks run: this one less --nproc N."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def relaunch(args) -> int:
    """This command again under torchrun, with --nproc processes."""
    return launch(args.nproc, without_nproc(sys.argv[1:] if args.argv is None else args.argv), args.max_restarts)


# ---------------------------------------------------------------- the ranks' side

def launched_rank() -> bool:
    """A rank started by `trainlab train --nproc`: its error line goes to the launcher."""
    return bool(os.environ.get(ERRORS_ENV)) and "RANK" in os.environ


def hand_over(line: str, code: int, secondary: bool = False) -> bool:
    """Leave this rank's error line for the launcher; False if that failed (print it then)."""
    folder = Path(os.environ.get(ERRORS_ENV, ""))
    try:
        rnd, rank = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0), int(os.environ["RANK"])
        data = json.dumps({"line": line, "code": int(code), "round": rnd, "rank": rank, "secondary": secondary})
        tmp = folder / f".rank-{rank}.tmp"
        tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, folder / f"round-{rnd}-rank-{rank}.json")
        return True
    except (OSError, ValueError, KeyError):
        return False


def stop_when_parent_ends(poll_s: float = 0.5) -> None:
    """This process gets one SIGTERM (and saves, as on any SIGTERM) when its parent process
    ends, even by kill -9: a torchrun worker never trains on, orphaned, nor torchrun without
    its launcher. A thread that watches getppid(), not PR_SET_PDEATHSIG: that fires once per
    exiting thread of a multi-threaded parent, and a second SIGTERM aborts the save."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="trainlab-parent-watch", daemon=True).start()


def die_with_torchrun() -> None:
    """A torchrun worker stops (saving) when torchrun is gone."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        stop_when_parent_ends()


# ---------------------------------------------------------------- processes

def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc; torchrun starts each rank in its own
    session, so its process group does not hold them)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(c) for t in os.listdir(f"/proc/{p}/task")
                    for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
        except (OSError, ValueError):
            kids = []
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL for `pid` and everything below it, the children first seen, then the parent."""
    below = descendants(pid)
    _send(pid, signal.SIGSTOP)  # no new rank started while the tree is being killed
    below = list(dict.fromkeys(below + descendants(pid)))
    for p in [*below, pid]:
        _send(p, signal.SIGKILL)


# ---------------------------------------------------------------- torchrun, quiet

def _torchrun(argv: list[str]) -> int:
    """torchrun without its logs and its traceback (the launcher reports in one line)."""
    import logging
    import shutil

    launcher = os.getppid()
    stop_when_parent_ends()  # the launcher gone (kill -9): stop the ranks, as on its SIGTERM
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    try:
        main(argv)
        return 0
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if 0 < code < 256 else 1
    except SignalException as e:
        return 128 + int(e.sigval)
    except Exception as e:  # noqa: BLE001 -- a rendezvous that failed: one line, not torchrun's traceback
        text = str(e).strip().splitlines()
        print(f"trainlab: error: torchrun failed: {type(e).__name__}: {text[0][:300] if text else ''}",
              file=sys.stderr, flush=True)
        return 1
    finally:
        if os.getppid() != launcher and os.environ.get(ERRORS_ENV):  # no launcher left to read or remove it
            shutil.rmtree(os.environ[ERRORS_ENV], ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(_torchrun(sys.argv[1:]))
