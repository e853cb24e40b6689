"""A checkpoint written by an older trainlab (commit 3d20b6c, checkpoint format 1: the stored
run in tests/fixtures/resume-format1, made by tests/fixtures/make_resume_fixture.py) resumes
on today's code: every part it holds comes back exactly, and it continues bitwise."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_dataset
from fixtures.make_resume_fixture import CONFIG, Counter  # the fixture's own callback, state key "counter"

import trainlab
from trainlab.store.schema import load_checkpoint
from trainlab.store.runs import environment

HERE = Path(__file__).resolve().parent
OLD = "3d20b6c"  # the commit whose trainlab writes the format-1 run


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory) -> Path:
    """The run as commit 3d20b6c wrote it: that commit's src from this clone's history, in a child."""
    base = tmp_path_factory.mktemp("old")
    repo = HERE.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", OLD, "src"], capture_output=True)
    if archive.returncode:
        pytest.fail(f"git archive {OLD} failed (a shallow clone?): {archive.stderr.decode()[-300:]}")
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
    out = base / "resume-format1"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(base / "src"), str(HERE)]), "OMP_NUM_THREADS": "1"}
    made = subprocess.run([sys.executable, str(HERE / "fixtures" / "make_resume_fixture.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    return out
STOP_AT = 13  # the fixture's run stopped here: epoch 2, step 3


class Probe(Counter):
    """Counter that also records, before the first resumed step, what the run was given back."""

    def on_fit_start(self, run):
        self.seen = {"model": {k: v.clone() for k, v in run.model.state_dict().items()},
                     "optimizer": copy.deepcopy(run.optimizer.state_dict()), "epoch": run.state.epoch,
                     "step": run.state.step, "global_step": run.state.global_step,
                     "history": list(run.state.history), "steps": self.steps,
                     "torch_rng": torch.get_rng_state().clone()}


def _copy(fixture: Path, tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(fixture, dest)
    return dest


def _weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_part_of_an_old_checkpoint_comes_back(fixture_run, tmp_path):
    saved = load_checkpoint(fixture_run / "checkpoints" / "last.pt")
    assert saved["format_version"] == 1 and saved["global_step"] == STOP_AT and saved["partial"] is not None
    probe = Probe()
    result = trainlab.resume(_copy(fixture_run, tmp_path, "a"), data=tiny_dataset(600, 200), progress=False, callbacks=[probe])
    seen = probe.seen
    assert _equal(seen["model"], saved["model"])
    assert (seen["epoch"], seen["step"], seen["global_step"]) == (1, 3, STOP_AT)
    assert seen["steps"] == saved["callbacks"]["counter"]["steps"] == STOP_AT
    assert len(seen["history"]) == 1 and seen["history"][0]["epoch"] == 1
    state, saved_state = seen["optimizer"]["state"], saved["optimizer"]["state"]
    assert state.keys() == saved_state.keys()
    assert all(torch.equal(state[i][k], saved_state[i][k]) for i in state for k in state[i])
    assert torch.equal(seen["torch_rng"], saved["rng"]["torch"])
    assert result.history[-1]["epoch"] == 3 and probe.steps == 30  # 10 steps per epoch, 3 epochs
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "epoch" in r and "event" not in r] == [1, 2, 3]


def test_an_old_checkpoint_continues_bitwise(fixture_run, tmp_path):
    """Resumed straight to the end == resumed for one step, saved by today's code, resumed again.
    And where this machine is the fixture's kind (CPU and torch), == today's uninterrupted run."""
    data = tiny_dataset(600, 200)
    trainlab.resume(_copy(fixture_run, tmp_path, "straight"), data=data, progress=False, callbacks=[Counter()])

    class StopNext(Counter):
        def on_step_end(self, run):
            super().on_step_end(run)
            return "test" if run.state.global_step == STOP_AT + 1 else None

    twice = _copy(fixture_run, tmp_path, "twice")
    trainlab.resume(twice, data=data, progress=False, callbacks=[StopNext()])
    assert load_checkpoint(twice / "checkpoints" / "last.pt")["global_step"] == STOP_AT + 1
    trainlab.resume(twice, data=data, progress=False, callbacks=[Counter()])
    assert _equal(_weights(tmp_path / "straight"), _weights(twice))

    made = json.loads((fixture_run / "meta.json").read_text())
    here = environment()
    if (made["cpu"], made["torch"]) == (here["cpu"], here["torch"]):
        full = trainlab.train({**CONFIG, "runs_dir": str(tmp_path), "name": "full"}, data=data, progress=False,
                              callbacks=[Counter()])
        assert _equal(_weights(tmp_path / "straight"), _weights(full.run_dir))


def test_the_same_command_again_continues_an_old_run(fixture_run, tmp_path):
    """A run saved before today's keys existed (accumulate, mixup, keep_top, ...) is the same run
    to the same command: the keys it lacks ran with their defaults, so nothing reads as a change."""
    _copy(fixture_run, tmp_path, "run")
    result = trainlab.train({**CONFIG, "runs_dir": str(tmp_path), "name": "run"}, data=tiny_dataset(600, 200),
                            progress=False, callbacks=[Counter()])
    assert result.run_dir == tmp_path / "run" and result.history[-1]["epoch"] == 3
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resume" and e.get("by") == "rerun" for e in events)
