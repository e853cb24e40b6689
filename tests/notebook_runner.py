"""Run the exercise notebooks in notebooks/ with nbclient, for tests/test_notebooks.py and by hand.

Exercise cells carry metadata (see notebooks/README.md):
- a solution cell: tags ["solution"], metadata["trainlab"] = {"exercise": id, "stub": starting code};
- a check cell: tags ["check"], metadata["trainlab"] = {"exercise": id}, after its solution cell(s).

`run_notebook` executes a notebook top to bottom in one kernel. With `stubs=True` it also proves
that the checks can fail: just before each solution cell runs, it runs that cell's *stub* instead,
then the cells up to the exercise's last check, and records whether a check cell raised; then it
runs the real solution and everything after it as usual (so the solution's checks must pass).
Each exercise is thus checked against its stub in exactly the state a learner would have reached,
and the notebook is executed only once.

By hand (prints every cell's output; the full run of 2-3-3 is quoted from this):
    python tests/notebook_runner.py notebooks/2-3-3-fashion-mnist-project.ipynb --full --show
    python tests/notebook_runner.py --strip                 # strip outputs in notebooks/ before a commit
    python tests/notebook_runner.py --write-exercises DIR   # the notebooks with stubs instead of solutions
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def exercise_of(cell) -> str | None:
    return cell.get("metadata", {}).get("trainlab", {}).get("exercise")


def stub_of(cell) -> str | None:
    return cell.get("metadata", {}).get("trainlab", {}).get("stub")


# ---------------------------------------------------------------- static checks

def output_problems(nb) -> list[str]:
    """Cells that still carry outputs or execution counts (git must hold stripped notebooks)."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i} has outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i} has an execution count")
    return problems


def structure_problems(nb) -> list[str]:
    """Each solution has a stub that differs from it; each exercise has a solution, then checks."""
    problems = []
    first_solution: dict[str, int] = {}
    checks: dict[str, list[int]] = {}
    for i, cell in enumerate(nb.cells):
        t, ex = tags(cell), exercise_of(cell)
        if "solution" in t and "check" in t:
            problems.append(f"cell {i} is tagged both solution and check")
        if "solution" in t:
            if ex is None:
                problems.append(f"solution cell {i} has no metadata.trainlab.exercise")
                continue
            stub = stub_of(cell)
            if not stub or stub.strip() == cell.source.strip():
                problems.append(f"solution cell {i} (exercise {ex}) has no stub different from the solution")
            first_solution.setdefault(ex, i)
        if "check" in t:
            if ex is None:
                problems.append(f"check cell {i} has no metadata.trainlab.exercise")
                continue
            if ex not in first_solution:
                problems.append(f"check cell {i} (exercise {ex}) comes before any solution of its exercise")
            checks.setdefault(ex, []).append(i)
    for ex in first_solution:
        if ex not in checks:
            problems.append(f"exercise {ex} has no check cell")
    return problems


def strip(nb) -> None:
    """Remove outputs, execution counts and execution timing, in place."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.get("metadata", {}).pop("execution", None)


def write(nb, path: Path) -> None:
    """nbformat's layout plus a final newline (as the notebooks in git are written)."""
    Path(path).write_text(nbformat.writes(nb) + "\n", encoding="utf-8")


def exercise_version(nb):
    """A copy of `nb` with each solution cell's source replaced by its stub (what a learner starts from)."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if "solution" in tags(cell) and stub_of(cell) is not None:
            cell.source = stub_of(cell)
    return nb


# ---------------------------------------------------------------- execution

@dataclass
class Report:
    path: Path
    seconds: float = 0.0
    python: str = ""
    # exercise id -> "ename: evalue" of the first check cell that failed with the stub in place
    stub_failures: dict[str, str] = field(default_factory=dict)
    stub_passed: list[str] = field(default_factory=list)  # exercises whose checks passed on the stub
    exercises: list[str] = field(default_factory=list)
    nb: object = None  # the executed notebook (outputs included), never written back


def _block_end(nb, start: int, ex: str) -> int:
    """Index of the last check cell of exercise `ex` at or after `start`."""
    last = start
    for j in range(start + 1, len(nb.cells)):
        cell = nb.cells[j]
        if "solution" in tags(cell) and exercise_of(cell) != ex:
            break
        if "check" in tags(cell) and exercise_of(cell) == ex:
            last = j
    return last


def _run_quietly(client, source: str, index: int):
    """Execute `source` as a throwaway cell; returns the CellExecutionError or None."""
    cell = new_code_cell(source)
    try:
        client.execute_cell(cell, index, store_history=False)
    except CellExecutionError as e:
        return e
    return None


def _try_stubs(client, nb, index: int, report: Report) -> None:
    """Run exercise `ex` with its stub(s): the block from this solution to its last check."""
    ex = exercise_of(nb.cells[index])
    end = _block_end(nb, index, ex)
    failure = None
    for j in range(index, end + 1):
        cell = nb.cells[j]
        if cell.cell_type != "code":
            continue
        source = stub_of(cell) if "solution" in tags(cell) and exercise_of(cell) == ex else cell.source
        error = _run_quietly(client, source, j)
        if error is not None and failure is None and "check" in tags(cell) and exercise_of(cell) == ex:
            failure = f"{error.ename}: {str(error.evalue).splitlines()[0] if error.evalue else ''}"
    if failure is None:
        report.stub_passed.append(ex)
    else:
        report.stub_failures[ex] = failure


def run_notebook(path: Path, cwd: Path, *, stubs: bool = True, timeout: int = 600) -> Report:
    """Execute `path` top to bottom in a python3 kernel with its working folder `cwd`.

    Raises CellExecutionError when a cell fails (the real solutions and checks included)."""
    nb = nbformat.read(path, as_version=4)
    report = Report(Path(path), nb=nb)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    t0 = time.perf_counter()
    with client.setup_kernel():
        probe = new_code_cell("import sys; print(sys.executable)")
        client.execute_cell(probe, 0, store_history=False)
        report.python = "".join(o.get("text", "") for o in probe.outputs).strip()
        tried: set[str] = set()
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            ex = exercise_of(cell)
            if "solution" in tags(cell) and ex not in tried:
                tried.add(ex)
                report.exercises.append(ex)
                if stubs:
                    _try_stubs(client, nb, index, report)
            client.execute_cell(cell, index)
    report.seconds = time.perf_counter() - t0
    return report


def printed_text(nb) -> str:
    """What the executed cells printed (streams, errors and text results), in order."""
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                text = out.get("data", {}).get("text/plain")
                if text and not text.startswith("<Figure"):
                    parts.append(text + "\n")
            elif out.output_type == "error":
                parts.append(f"{out.ename}: {out.evalue}\n")
    return "".join(parts)


def cell_seconds(nb) -> list[tuple[int, float, str]]:
    """(index, seconds, first line) of each executed code cell, from nbclient's timing metadata."""
    from datetime import datetime

    rows = []
    for i, cell in enumerate(nb.cells):
        ex = cell.get("metadata", {}).get("execution", {})
        start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
        if cell.cell_type == "code" and start and end:
            secs = (datetime.fromisoformat(end.replace("Z", "+00:00"))
                    - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
            rows.append((i, secs, cell.source.splitlines()[0] if cell.source else ""))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", type=Path, help="notebooks (default: all in notebooks/)")
    ap.add_argument("--full", action="store_true", help="TRAINLAB_QUICK off: the real experiments")
    ap.add_argument("--no-stubs", action="store_true", help="skip the stub runs")
    ap.add_argument("--show", action="store_true", help="print what the cells printed")
    ap.add_argument("--save-executed", type=Path, metavar="DIR",
                    help="also write the executed notebooks (with outputs) into DIR, never into notebooks/")
    ap.add_argument("--timing", action="store_true", help="print each cell's seconds")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    ap.add_argument("--strip", action="store_true", help="strip outputs of the notebooks in place, run nothing")
    ap.add_argument("--write-exercises", type=Path, metavar="DIR",
                    help="write the exercise versions (stubs instead of solutions) into DIR, run nothing")
    args = ap.parse_args(argv)
    paths = args.paths or notebooks()
    if args.strip or args.write_exercises:
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            if args.strip:
                strip(nb)
                write(nb, path)
                print("stripped", path)
            else:
                args.write_exercises.mkdir(parents=True, exist_ok=True)
                out = args.write_exercises / path.name
                write(exercise_version(nb), out)
                print("wrote", out)
        return 0
    if args.full:
        os.environ.pop("TRAINLAB_QUICK", None)
    else:
        os.environ["TRAINLAB_QUICK"] = "1"
    total = 0.0
    for path in paths:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_notebook(path, Path(tmp), stubs=not args.no_stubs, timeout=args.timeout)
        total += report.seconds
        if args.show:
            print(printed_text(report.nb))
        if args.save_executed:
            args.save_executed.mkdir(parents=True, exist_ok=True)
            write(report.nb, args.save_executed / path.name)
        if args.timing:
            for i, secs, first in cell_seconds(report.nb):
                print(f"  cell {i:3d} {secs:6.2f}s  {first[:70]}")
        print(f"{path.name}: {report.seconds:.1f}s, kernel {report.python}")
        for ex in report.exercises:
            if ex in report.stub_failures:
                print(f"  exercise {ex}: the check fails on the stub ({report.stub_failures[ex]})")
            elif ex in report.stub_passed:
                print(f"  exercise {ex}: THE CHECK PASSES ON THE STUB")
    print(f"total {total:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
