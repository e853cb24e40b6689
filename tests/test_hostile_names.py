"""Class names and file names reach the terminal escaped at every printing site: a name with
a newline cannot forge a line (say, a fake error), an ANSI escape sequence never runs."""

from __future__ import annotations

import pytest
from conftest import make_images, run_cli, write_idx_folder

from trainlab.analysis.tables import run_summary
from trainlab.data.idx import write_idx

# what classes.txt can carry (one name a line): escape sequences and a bell
EVIL = [f"\x1b[2J\x1b[31mc{i}\x07" for i in range(10)]


def _raw_controls(text: str) -> list[str]:
    return sorted({c for c in text if not c.isprintable() and c not in "\n"})


def test_the_after_run_summary_escapes_class_names_and_the_run_folder(tmp_path):
    from conftest import train_tiny

    from trainlab.data import from_arrays

    names = ["ok\ntrainlab: error: forged line"] + EVIL[1:]
    tx, ty = make_images(300, seed=1)
    sx, sy = make_images(100, seed=2)
    sy = sy[::-1].copy()  # test labels that do not match: the model is surely confused
    result = train_tiny(tmp_path / "runs\n\x1b[2J", from_arrays(tx, ty, sx, sy, classes=names), name="r", epochs=1)
    text = run_summary(f"mlp -> {result.run_dir}", result)
    assert not _raw_controls(text), _raw_controls(text)
    assert not [line for line in text.splitlines() if line.startswith("trainlab: error")]
    confused = [line for line in text.splitlines() if "most confused" in line]
    assert len(confused) == 1 and "\\x1b[2J" in confused[0]
    assert "runs\\n\\x1b[2J" in text.splitlines()[0]


@pytest.fixture(scope="module")
def evil_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evil")
    idx = write_idx_folder(root / "idx", n_train=400, n_test=100, classes=EVIL)
    labels = make_images(100, seed=2)[1][::-1].copy()  # mismatched test labels: confused pairs to print
    write_idx(idx / "t10k-labels-idx1-ubyte.gz", labels)
    runs = root / "runs\x1b[2J"
    r = run_cli("train", "--dataset", f"idx:{idx}", "--runs-dir", runs, "--name", "r", "--threads", "1",
                "--val-size", "100", "--batch-size", "50", "--epochs", "1", "--model", "mlp",
                "--model-kwarg", "hidden=[16]")
    return idx, runs / "r", r


def test_train_prints_no_raw_control_character(evil_run):
    _, _, r = evil_run
    assert r.returncode == 0, r.stderr
    assert not _raw_controls(r.stdout + r.stderr), (r.stdout + r.stderr)[-2000:]
    assert "most confused: \\x1b[2J\\x1b[31mc" in r.stdout  # the names are there, escaped


@pytest.mark.parametrize("command", ["evaluate", "predict", "inspect", "compare", "report", "data"])
def test_every_command_that_prints_names_escapes_them(evil_run, tmp_path, command):
    idx, run, _ = evil_run
    args = {"evaluate": [run, "--no-plots"], "predict": [run, "-n", "5"], "inspect": [run],
            "compare": [run], "report": [run, "-o", tmp_path / "report\x1b[2J.html"],
            "data": ["info", "--dataset", f"idx:{idx}"]}[command]
    r = run_cli(command, *args)
    assert r.returncode == 0, r.stderr
    assert not _raw_controls(r.stdout + r.stderr), (r.stdout + r.stderr)[-2000:]
    assert "\\x1b[2J" in r.stdout + r.stderr  # a name or the folder was printed, escaped


def test_log_arguments_are_escaped_and_numbers_keep_their_format(caplog):
    """Every trainlab log line (the run folder, a class or file name as an argument) is escaped
    by the logger's filter; printable arguments, numpy numbers included, format as before."""
    import logging

    import numpy as np

    import trainlab  # noqa: F401 (installs the filter)

    with caplog.at_level(logging.INFO, logger="trainlab"):
        logging.getLogger("trainlab").info("run %s: %d epochs, lr %.2f, %r", "a\nb\x1b[2J", np.int64(3), 0.5, "ok")
    assert caplog.messages[-1] == "run a\\nb\\x1b[2J: 3 epochs, lr 0.50, 'ok'"
