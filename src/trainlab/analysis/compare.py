"""Compare finished runs: what differs in their configs, and what that did to the results.

`compare_runs(paths)` loads run folders and builds the tables `trainlab compare` prints
and the report shows. Each run has ONE test accuracy: its final evaluation (results.json), of
the model it kept, named beside it. Runs whose configs differ only by `seed` form one group,
shown as mean ± std (sample std) over distinct seeds (repeats of one seed are averaged first and
named in a note). Runs trained on different data (different split hashes, data set or
validation split) are flagged in `warnings`, never averaged together.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from trainlab.analysis.tables import printable, table
from trainlab.config import load_toml
from trainlab.errors import ConfigError, TrainlabError
from trainlab.store import runs

# Keys that name or place a run, or only change what it prints or saves: never a "difference".
IGNORED_KEYS = ("name", "runs_dir", "quiet", "tensorboard", "test_every_epoch", "save_every", "keep")


@dataclass
class RunRecord:
    path: Path
    name: str
    config: dict
    meta: dict
    history: list[dict]  # one row per epoch (resume markers dropped)
    results: dict | None  # results.json, None for an unfinished run

    @property
    def test(self) -> dict | None:
        return self.results.get("test") if self.results else None

    def tested(self) -> str:
        """Which model the test accuracy is of: results.json says (runs before it did are told
        from their config: early stopping restored the best, else the last epoch's weights)."""
        if self.results is None:
            return "none (unfinished)"
        label = (self.results.get("tested") or {}).get("label")
        if isinstance(label, str):
            return label
        best = self.results.get("best") if isinstance(self.results.get("best"), dict) else {}
        if (self.config.get("patience") or 0) > 0 and isinstance(best.get("epoch"), int) and best["epoch"] > 0:
            text = f"epoch {best['epoch']} (best {best.get('metric', 'val_loss')})"
        else:
            text = f"epoch {self.results.get('epochs', '?')} (last)"
        return text + (", EMA weights" if (self.config.get("ema") or 0) > 0 else "")

    def tested_epoch(self) -> int | None:
        tested = (self.results or {}).get("tested") or {}
        if isinstance(tested.get("epoch"), int):
            return tested["epoch"]
        text = self.tested()
        return int(text.split()[1]) if text.startswith("epoch ") and text.split()[1].isdigit() else None

    def stats(self) -> dict:
        test = self.test["accuracy"] if self.test and _finite(self.test.get("accuracy")) else math.nan
        epoch = self.tested_epoch()
        row = next((r for r in self.history if r.get("epoch") == epoch), {})
        seconds = (self.results or {}).get("total_seconds")
        if seconds is None:
            seconds = sum(r.get("seconds", 0.0) for r in self.history)
        return {
            "test_acc": test,
            "tested": self.tested(),
            # train_acc is the running accuracy of the tested model's epoch, measured with dropout
            # and augmentation on: it understates the true train accuracy (so the gap too)
            "gap": row.get("train_acc", math.nan) - test,
            "epochs": self.history[-1].get("epoch", 0) if self.history else 0,
            "seconds": seconds,
        }

    def per_class_acc(self) -> dict[str, float]:
        return {pc["class"]: _num(pc["accuracy"]) for pc in (self.test or {}).get("per_class", [])}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) else math.nan


def load_run(path: str | Path) -> RunRecord:
    path = Path(path)
    if not (path / runs.CONFIG_FILE).is_file():
        raise TrainlabError(f"{path} is not a trainlab run folder (it has no {runs.CONFIG_FILE})")
    meta = runs.read_json(path / runs.META_FILE) if (path / runs.META_FILE).exists() else {}
    results = runs.read_results(path / runs.RESULTS_FILE) if (path / runs.RESULTS_FILE).exists() else None
    try:
        config = load_toml(path / runs.CONFIG_FILE)
    except ConfigError as e:  # the run's file, not the user's command line
        raise TrainlabError(f"{path}: {e}") from None
    _check_shape(path, meta, results)
    rows = runs.read_metrics(path)  # bounded and type-checked, or one sentence naming the file
    return RunRecord(path, path.name, config, meta, runs.epoch_rows(rows), results)


def _check_shape(path: Path, meta, results) -> None:
    """meta.json and results.json of the shapes trainlab writes, or one sentence."""
    def bad(name, what):
        raise TrainlabError(f"{path / name} is not what trainlab writes ({what}): the run folder is "
                            "damaged; leave it out of the comparison")

    if not isinstance(meta, dict):
        bad(runs.META_FILE, "not a JSON object")
    if meta.get("data_fingerprint") is not None and not isinstance(meta["data_fingerprint"], dict):
        bad(runs.META_FILE, "data_fingerprint is not a table")
    if isinstance(meta.get("parent"), dict) and not isinstance(meta["parent"].get("run", ""), str):
        bad(runs.META_FILE, "parent.run is not a path")
    if results is None:
        return
    if not isinstance(results, dict):
        bad(runs.RESULTS_FILE, "not a JSON object")
    tested = results.get("tested")
    if tested is not None and not (isinstance(tested, dict) and isinstance(tested.get("label", ""), str)
                                   and len(tested.get("label", "")) <= 200 and isinstance(tested.get("epoch", 0), int)
                                   and not isinstance(tested.get("epoch", 0), bool)):
        bad(runs.RESULTS_FILE, "tested is not a table with a label and an epoch")
    for key in ("total_seconds", "seconds_per_epoch", "epochs"):
        if results.get(key) is not None and not isinstance(results[key], (int, float)):
            bad(runs.RESULTS_FILE, f"{key} is not a number")
    test = results.get("test")
    if test is not None:
        if not isinstance(test, dict) or not isinstance(test.get("per_class", []), list):
            bad(runs.RESULTS_FILE, "test is not a table with a per_class list")
        for pc in test.get("per_class", []):
            if not (isinstance(pc, dict) and isinstance(pc.get("class"), str)
                    and isinstance(pc.get("accuracy"), (int, float))):
                bad(runs.RESULTS_FILE, "a per_class entry lacks its class name or accuracy")


# ---------------------------------------------------------------- data identity

def _hashes(run: RunRecord) -> dict:
    fp = run.meta.get("data_fingerprint") or {}
    return {k: v for k, v in fp.items() if k.endswith(("images", "labels"))}


def data_key(run: RunRecord) -> tuple:
    """Same key = same bytes (by split hashes) and the same validation split size."""
    fp = run.meta.get("data_fingerprint") or {}
    hashes = _hashes(run)
    content = tuple(sorted(hashes.items())) if hashes else ("source", fp.get("source"))
    return (fp.get("dataset", run.config.get("dataset")), content, run.config.get("val_size"))


def _describe_data(run: RunRecord) -> str:
    fp = run.meta.get("data_fingerprint") or {}
    test = _hashes(run).get("test_images", "?")
    return (f"dataset {fp.get('dataset', run.config.get('dataset'))}, source {fp.get('source', '?')}, "
            f"test images sha256 {test[:12]}, val_size {run.config.get('val_size')}")


# ---------------------------------------------------------------- the comparison

@dataclass
class Group:
    runs: list[RunRecord]
    data: str  # data group letter: A, B, ...

    @property
    def seeds(self) -> dict:
        """{seed: [runs]}: the distinct seeds of the group, in order of appearance."""
        by_seed: dict = {}
        for r in self.runs:
            by_seed.setdefault(_show(r.config.get("seed", 0)), []).append(r)
        return by_seed

    @property
    def name(self) -> str:
        first, n, seeds = self.runs[0].name, len(self.runs), len(self.seeds)
        if n == 1:
            return first
        if seeds == n:
            return f"{first} (+{n - 1} seeds)"
        return f"{first} (+{n - 1} runs, {seeds} seed{'s' if seeds > 1 else ''})"

    def per_seed(self, values: list[float]) -> list[float]:
        """One value per distinct seed (repeats of a seed averaged): the spread is the seeds'."""
        index = {id(r): v for r, v in zip(self.runs, values)}
        out = []
        for members in self.seeds.values():
            vals = [index[id(r)] for r in members if _finite(index[id(r)])]
            out.append(statistics.fmean(vals) if vals else math.nan)
        return out


@dataclass
class Comparison:
    runs: list[RunRecord]
    groups: list[Group]
    diff_keys: list[str]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary_table(self) -> tuple[list[str], list[list[str]]]:
        headers = ["run", *self.diff_keys, "data", "epochs", "test acc", "tested model", "train-test gap", "time"]
        rows = []
        for g in self.groups:
            stats = [r.stats() for r in g.runs]
            col = lambda k: [s[k] for s in stats]  # noqa: E731
            cfg_cells = [_config_cell(g, k) for k in self.diff_keys]
            rows.append([g.name, *cfg_cells, g.data, _epochs_cell(col("epochs")),
                         mean_std(g.per_seed(col("test_acc")), pct=True), "; ".join(dict.fromkeys(col("tested"))),
                         mean_std(g.per_seed(col("gap")), pct=True, signed=True),
                         _time(statistics.fmean(col("seconds")))])
        return headers, rows

    def per_class_table(self) -> tuple[list[str], list[list[str]]]:
        classes: list[str] = []
        for r in self.runs:
            classes += [c for c in r.per_class_acc() if c not in classes]
        headers = ["class", *[g.name for g in self.groups]]
        rows = [[c, *[mean_std(g.per_seed([r.per_class_acc().get(c, math.nan) for r in g.runs]), pct=True)
                      for g in self.groups]] for c in classes]
        return headers, rows

    def text(self) -> str:
        parts = [printable(f"!! {w}") for w in self.warnings]  # run folder names: escaped
        parts += [printable(f"note: {n}") for n in self.notes]
        parts.append(table(*self.summary_table()))
        h, rows = self.per_class_table()
        if rows:
            parts += ["", "per-class test accuracy (of each run's saved model.pt)", table(h, rows)]
        return "\n".join(parts)

    def histories(self) -> dict[str, list[dict]]:
        return {r.name: r.history for r in self.runs}


def _config_cell(g: Group, key: str) -> str:
    values = [r.config.get(key) for r in g.runs]
    distinct = list(dict.fromkeys(map(_show, values)))
    return ",".join(distinct)


def _epochs_cell(epochs: list[int]) -> str:
    return ",".join(map(str, sorted(set(epochs))))


def _show(v) -> str:
    return "-" if v is None else str(v)


def mean_std(values: list[float], pct: bool = False, signed: bool = False) -> str:
    """'85.12%' for one value, '85.12 ± 0.30%' for several (sample std), 'n/a' for none."""
    vals = [v for v in values if _finite(v)]
    if not vals:
        return "n/a"
    scale, unit = (100, "%") if pct else (1, "")
    m = statistics.fmean(vals) * scale
    text = f"{m:+.2f}" if signed else f"{m:.2f}"
    if len(vals) > 1:
        text += f" ± {statistics.stdev(vals) * scale:.2f}"
    return text + unit


def _time(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _display_names(records: list[RunRecord]) -> None:
    seen: dict[str, int] = {}
    for r in records:
        if r.name in seen:  # same folder name under different parents: add the parent
            r.name = f"{r.path.parent.name}/{r.name}"
        seen[r.name] = seen.get(r.name, 0) + 1


def compare_runs(paths: list[str | Path]) -> Comparison:
    if not paths:
        raise TrainlabError("compare needs at least one run folder")
    records = [load_run(p) for p in paths]
    _display_names(records)
    keys = sorted({k for r in records for k in r.config} - set(IGNORED_KEYS))
    diff = [k for k in keys if len({_show(r.config.get(k)) for r in records}) > 1]

    # data groups: letters in order of first appearance
    letters: dict[tuple, str] = {}
    for r in records:
        letters.setdefault(data_key(r), "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[len(letters) % 26])
    warnings = []
    if len(letters) > 1:
        for key, letter in letters.items():
            members = [r for r in records if data_key(r) == key]
            warnings.append(f"DIFFERENT DATA — group {letter}: {', '.join(r.name for r in members)} "
                            f"({_describe_data(members[0])}). Results across data groups are not "
                            "comparable; they are never averaged together.")
    notes = []
    sources = {(r.meta.get("data_fingerprint") or {}).get("source") for r in records}
    if len(letters) == 1 and len(sources) > 1:
        notes.append(f"the runs read their data from different sources ({', '.join(map(str, sources))}) "
                     "but the bytes are identical (same split hashes)")
    unfinished = [r.name for r in records if r.results is None]
    if unfinished:
        warnings.append(f"UNFINISHED (no results.json): {', '.join(unfinished)}; they have no test "
                        "accuracy yet (the test split is evaluated once, when a run finishes)")

    # seed groups: same data and the same config apart from the seed
    groups: dict[tuple, Group] = {}
    for r in records:
        cfg = tuple((k, _show(r.config.get(k))) for k in diff if k != "seed")
        key = (data_key(r), cfg)
        if key in groups:
            groups[key].runs.append(r)
        else:
            groups[key] = Group([r], letters[data_key(r)])
    for g in groups.values():
        for seed, members in g.seeds.items():
            if len(members) > 1:
                notes.append(f"{', '.join(r.name for r in members)} share seed {seed} and their config: "
                             "repeats of one run, averaged as one seed (a spread needs distinct seeds)")
    return Comparison(records, list(groups.values()), diff, warnings, notes)


# ---------------------------------------------------------------- resume pairs

@dataclass
class ResumePair:
    with_state: RunRecord
    without_state: RunRecord
    epoch: int
    parent_history: list[dict]


def resume_pairs(records: list[RunRecord]) -> list[ResumePair]:
    """Forks of the same parent at the same epoch, one keeping and one resetting the optimizer."""
    forks: dict[tuple, dict[bool, RunRecord]] = {}
    for r in records:
        parent = r.meta.get("parent")
        if not isinstance(parent, dict) or "run" not in parent or "epoch" not in parent:
            continue
        where = Path(parent["run"])
        key = (str(where.resolve()) if where.exists() else where.name, parent["epoch"])
        forks.setdefault(key, {})[bool(parent.get("reset_optimizer"))] = r
    pairs = []
    for (where, epoch), sides in forks.items():
        if False in sides and True in sides:
            parent_dir = Path(where)
            history = runs.epoch_rows(runs.read_metrics(parent_dir)) if parent_dir.is_dir() else []
            pairs.append(ResumePair(sides[False], sides[True], epoch, history))
    return pairs
