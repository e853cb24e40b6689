"""Runs trainlab CLI commands on hostile inputs for tests/test_hostile.py: torch is imported
once, then each command runs in its own forked process under a memory limit (RLIMIT_AS,
the parent's size + LIMIT_MB), with stdout/stderr captured. A fresh interpreter per command
would cost ~2 s of torch import each; a fork costs milliseconds.

usage: python hostile_driver.py CASES_JSON RESULTS_JSON
CASES_JSON: [{"argv": [...], "cwd": "...", "timeout": seconds (optional)}, ...]; RESULTS_JSON: [{"code", "stdout", "stderr"}]
"""

import json
import os
import resource
import sys

LIMIT_MB = int(os.environ.get("HOSTILE_LIMIT_MB", "2048"))


def vm_size() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def run_one(case: dict, out_path: str, err_path: str) -> int:
    pid = os.fork()
    if pid == 0:  # the child: limit memory, redirect output, run the command, leave at once
        try:
            limit = vm_size() + (LIMIT_MB << 20)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            os.chdir(case.get("cwd") or ".")
            for fd, path in ((1, out_path), (2, err_path)):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.path.insert(0, os.getcwd())  # as `python -m trainlab` run from that folder would
            for k, v in case.get("env", {}).items():
                os.environ[k] = v
            from trainlab.cli.main import main

            if case.get("timeout"):  # a case that hangs ends here (SIGALRM kills it: code -14), not in a stuck test
                import signal

                signal.alarm(int(case["timeout"]))
            try:
                code = main(case["argv"])
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        except BaseException:  # anything escaping main() is a traceback the user would see
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import trainlab.cli.main  # noqa: F401  (imported once, before any fork)

    cases = json.load(open(sys.argv[1]))
    results = []
    tmp = sys.argv[2] + ".d"
    os.makedirs(tmp, exist_ok=True)
    for i, case in enumerate(cases):
        out, err = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
        code = run_one(case, out, err)
        results.append({"code": code, "stdout": open(out, errors="replace").read(),
                        "stderr": open(err, errors="replace").read()})
    json.dump(results, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
