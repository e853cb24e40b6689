"""Comparing runs: only the differing config keys, seeds grouped, different data flagged."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_dataset, train_tiny

from trainlab.analysis.compare import compare_runs, load_run, mean_std, resume_pairs
from trainlab.errors import TrainlabError

# Each recipe's own batch size, which these runs keep (train_tiny's default is 32)
FAST_BATCH, TEXTBOOK_BATCH = 256, 64


@pytest.fixture
def three_runs(tiny_data, tmp_path):
    """Two seeds of the default recipe and one textbook run, on the same data."""
    runs = tmp_path / "runs"
    return [train_tiny(runs, tiny_data, name="s0", batch_size=FAST_BATCH, seed=0),
            train_tiny(runs, tiny_data, name="s1", batch_size=FAST_BATCH, seed=1),
            train_tiny(runs, tiny_data, name="tb", batch_size=TEXTBOOK_BATCH, recipe="textbook", lr=3e-4)]


def test_mean_std_format():
    assert mean_std([0.8, 0.9], pct=True) == "85.00 ± 7.07%"
    assert mean_std([0.8], pct=True) == "80.00%"
    assert mean_std([0.05, -0.01], pct=True, signed=True) == "+2.00 ± 4.24%"
    assert mean_std([float("nan")]) == "n/a"


def test_only_differing_keys_and_seed_groups(three_runs):
    comp = compare_runs([r.run_dir for r in three_runs])
    assert "seed" in comp.diff_keys and "recipe" in comp.diff_keys and "lr" in comp.diff_keys
    for same in ("model", "epochs", "val_size", "dataset", "name", "runs_dir", "quiet"):
        assert same not in comp.diff_keys
    assert comp.warnings == []
    assert [len(g.runs) for g in comp.groups] == [2, 1]
    headers, rows = comp.summary_table()
    seed_row = rows[0]
    assert seed_row[0] == "s0 (+1 seeds)" and seed_row[headers.index("seed")] == "0,1"
    accs = [r.test_accuracy for r in three_runs[:2]]
    assert seed_row[headers.index("test acc")] == mean_std(accs, pct=True)
    assert "±" in seed_row[headers.index("test acc")]
    # per class side by side: one column per group
    h, pc_rows = comp.per_class_table()
    assert h == ["class", "s0 (+1 seeds)", "tb"] and [r[0] for r in pc_rows] == [f"c{i}" for i in range(10)]
    text = comp.text()
    assert "s0 (+1 seeds)" in text and "per-class test accuracy" in text


def test_one_test_accuracy_per_run_of_the_model_it_kept_gap_and_time(three_runs, tmp_path):
    """The run's one test evaluation (results.json), named by the model it saw; a per-epoch
    test_acc in old rows is never shown as a second figure."""
    run = tmp_path / "crafted"
    shutil.copytree(three_runs[0].run_dir, run)
    rows = [{"epoch": 1, "train_acc": 0.70, "val_loss": 0.9, "test_acc": 0.68, "seconds": 1.0},
            {"epoch": 2, "train_acc": 0.90, "val_loss": 0.5, "test_acc": 0.85, "seconds": 1.5},
            {"event": "resume", "from": "last.pt", "epoch": 2, "step": 0},
            {"epoch": 3, "train_acc": 0.99, "val_loss": 0.7, "test_acc": 0.83, "seconds": 2.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = json.loads((run / "results.json").read_text())
    results["test"]["accuracy"], results["total_seconds"] = 0.84, 4.5
    results["tested"] = {"weights": "best", "epoch": 2, "ema": False, "label": "epoch 2 (best val_loss)"}
    (run / "results.json").write_text(json.dumps(results))
    stats = load_run(run).stats()
    assert stats["test_acc"] == 0.84 and stats["tested"] == "epoch 2 (best val_loss)"
    assert stats["gap"] == pytest.approx(0.90 - 0.84)  # the tested epoch's train accuracy
    assert stats["epochs"] == 3 and stats["seconds"] == 4.5
    headers, table_rows = compare_runs([run, three_runs[2].run_dir]).summary_table()
    assert [h for h in headers if "test acc" in h] == ["test acc"]
    assert table_rows[0][headers.index("test acc")] == "84.00%"
    assert table_rows[0][headers.index("tested model")] == "epoch 2 (best val_loss)"
    assert table_rows[0][headers.index("train-test gap")] == "+6.00%"
    assert "85.00" not in " ".join(table_rows[0]) and "83.00" not in " ".join(table_rows[0])


def test_a_real_run_says_which_model_its_test_accuracy_is_of(tiny_data, tmp_path):
    plain = train_tiny(tmp_path, tiny_data, name="plain", epochs=2)
    stopped = train_tiny(tmp_path, tiny_data, name="es", epochs=2, patience=5, ema=0.9)
    assert plain.results["tested"]["label"] == "epoch 2 (last)"
    best = stopped.results["best"]["epoch"]
    assert stopped.results["tested"] == {"weights": "best", "epoch": best, "ema": True,
                                         "label": f"epoch {best} (best val_loss), EMA weights"}
    # a run folder from before results.json said it: told from its config
    del plain.results["tested"]
    (plain.run_dir / "results.json").write_text(json.dumps(plain.results))
    assert load_run(plain.run_dir).tested() == "epoch 2 (last)"


def test_two_runs_of_one_seed_are_repeats_not_two_seeds(tiny_data, tmp_path):
    a = train_tiny(tmp_path, tiny_data, name="a", batch_size=FAST_BATCH, seed=0)
    b = train_tiny(tmp_path, tiny_data, name="b", batch_size=FAST_BATCH, seed=0)
    c = train_tiny(tmp_path, tiny_data, name="c", batch_size=FAST_BATCH, seed=1)
    comp = compare_runs([a.run_dir, b.run_dir])
    headers, rows = comp.summary_table()
    assert [g.name for g in comp.groups] == ["a (+1 runs, 1 seed)"]
    assert "±" not in rows[0][headers.index("test acc")]  # one seed: no spread to show
    assert any("a, b share seed 0" in n for n in comp.notes)
    comp = compare_runs([a.run_dir, b.run_dir, c.run_dir])
    assert [g.name for g in comp.groups] == ["a (+2 runs, 2 seeds)"]
    headers, rows = comp.summary_table()
    # the spread is over the two seeds (seed 0's repeats averaged first)
    per_seed = [(a.test_accuracy + b.test_accuracy) / 2, c.test_accuracy]
    assert rows[0][headers.index("test acc")] == mean_std(per_seed, pct=True)
    assert "(+2 runs, 2 seeds)" in comp.text()


def test_different_data_is_flagged_not_grouped(tiny_data, tmp_path):
    other = tiny_dataset(seed=7)  # same shapes and names as tiny_data, other images
    a = train_tiny(tmp_path, tiny_data, name="a", batch_size=FAST_BATCH, seed=0)
    # b differs only by seed... and by its data
    b = train_tiny(tmp_path, other, name="b", batch_size=FAST_BATCH, seed=1)
    comp = compare_runs([a.run_dir, b.run_dir])
    assert len(comp.groups) == 2, "runs on different data must never be averaged"
    assert [g.data for g in comp.groups] == ["A", "B"]
    assert len(comp.warnings) == 2 and all("DIFFERENT DATA" in w for w in comp.warnings)
    assert comp.text().startswith("!! DIFFERENT DATA")


def test_same_bytes_from_another_source_is_a_note(three_runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(three_runs[1].run_dir, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["data_fingerprint"]["source"] = "folder"
    (copy / "meta.json").write_text(json.dumps(meta))
    comp = compare_runs([three_runs[0].run_dir, copy])
    assert comp.warnings == [] and len(comp.groups) == 1
    assert "identical" in comp.notes[0]


def test_resume_pairs_from_real_forks(tiny_data, three_runs, tmp_path):
    """Fork one run at its last checkpoint twice, keeping and resetting the optimizer."""
    from trainlab.api import resume

    parent = three_runs[0].run_dir
    forks = [resume(parent, epochs=4, into=tmp_path / f"fork-reset-{reset}", reset_optimizer=reset,
                    data=tiny_data, progress=False).run_dir for reset in (False, True)]
    pairs = resume_pairs([load_run(p) for p in [parent, *forks]])
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair.epoch == 2 and len(pair.parent_history) == 2
    assert pair.with_state.path == forks[0] and pair.without_state.path == forks[1]
    # the fork's history holds the parent's epochs, then its own; the marker is not an epoch
    assert [r["epoch"] for r in pair.with_state.history] == [1, 2, 3, 4]
    comp = compare_runs(forks)
    assert comp.diff_keys == [] and comp.warnings == []


def test_compare_cli(cli, three_runs, tmp_path):
    out = tmp_path / "fig" / "overlay.png"
    proc = cli("compare", *(r.run_dir for r in three_runs), "-o", out)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "s0 (+1 seeds)" in text and "train-test gap" in text and "c9" in text
    assert out.stat().st_size > 1000 and out.with_suffix(".svg").exists()


def test_compare_cli_not_a_run_folder(cli, tmp_path):
    proc = cli("compare", tmp_path)
    assert proc.returncode == 1
    err = proc.stderr
    assert "not a trainlab run folder" in err and "Traceback" not in err
    with pytest.raises(TrainlabError):
        compare_runs([])
