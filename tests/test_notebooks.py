"""The exercise notebooks (notebooks/*.ipynb, issue 7).

- git holds them stripped (no outputs, no execution counts) and well formed: every solution cell
  has a stub, every exercise a check;
- each runs top to bottom with nbclient in quick mode (TRAINLAB_QUICK=1, the real data through
  TRAINLAB_DATA, one torch thread, its runs/ in a temporary folder), in a kernel of this venv;
- the checks can fail: in the same run, each exercise is first executed with its solution cell
  replaced by the stub, and one of its check cells must raise (tests/notebook_runner.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from notebook_runner import notebooks, output_problems, run_notebook, structure_problems, tags

EXPECTED = ["2-3-1-saving-and-loading.ipynb", "2-3-2-gpu-training.ipynb", "2-3-3-fashion-mnist-project.ipynb"]
NOTEBOOKS = notebooks()


def test_the_three_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS if p.name in EXPECTED] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_and_well_formed(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert output_problems(nb) == [], f"{path.name}: strip the outputs before committing " \
                                      "(python tests/notebook_runner.py --strip)"
    assert structure_problems(nb) == []
    assert any("solution" in tags(c) for c in nb.cells), f"{path.name} has no exercises"
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'os.environ.get("TRAINLAB_QUICK"' in source, "the quick switch is read from the environment"
    assert 'trainlab.load_dataset("fashion-mnist")' in source, "the data comes through trainlab's data layer"


@pytest.fixture(scope="session")
def shared_mpl_config(tmp_path_factory):
    """One matplotlib cache for all notebook kernels (each test gets a fresh HOME)."""
    return tmp_path_factory.mktemp("mplconfig")


@pytest.fixture
def quick_kernel_env(real_data_dir, shared_mpl_config, monkeypatch):
    """What the kernel inherits: quick mode, the real data, one thread (the suite runs -n 2)."""
    monkeypatch.setenv("TRAINLAB_QUICK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLCONFIGDIR", str(shared_mpl_config))
    return real_data_dir


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_its_checks_fail_on_stubs(path, quick_kernel_env, tmp_path):
    # run_notebook raises CellExecutionError (with the cell and its traceback) if any cell of the
    # notebook itself fails, the checks after the real solutions included
    report = run_notebook(path, tmp_path, stubs=True, timeout=240)
    assert os.path.realpath(report.python) == os.path.realpath(sys.executable), \
        f"the kernel ran {report.python}, not this venv's python"
    assert report.exercises, f"{path.name} has no exercises"
    assert report.stub_passed == [], \
        f"{path.name}: the checks of exercise(s) {report.stub_passed} pass with the empty stub in place"
    assert sorted(report.stub_failures) == sorted(report.exercises)
    assert Path(tmp_path / "runs").is_dir(), "the notebook writes its runs/ into its working folder"
