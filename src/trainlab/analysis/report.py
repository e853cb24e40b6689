"""One self-contained HTML report of several runs: open it anywhere, offline.

Everything is inside the file: PNG figures as base64 data URIs, CSS inline, no scripts,
no fonts or links to fetch. Each run is evaluated (trainlab.analysis.evaluation writes its files
and figures into its folder) unless its evaluation is already newer than its checkpoint.
"""

from __future__ import annotations

import base64
import html
import logging
import tempfile
import time
from pathlib import Path

from trainlab import plots
from trainlab.analysis.compare import Comparison, RunRecord, compare_runs, resume_pairs
from trainlab.analysis.evaluation import EVALUATION_FILE, PLOTS_DIR, evaluate_run_full, load_evaluation
from trainlab.analysis.tables import CONFUSED_HEADERS, confused_rows, per_class_rows
from trainlab.data import Dataset
from trainlab.errors import ConfigError, TrainlabError
from trainlab.inference import checkpoint_path
from trainlab.metrics import percent
from trainlab.store.atomic import atomic_write_text
from trainlab.store import runs
from trainlab.tune.sweep_summary import summarize

log = logging.getLogger("trainlab")

FIGURES = ("curves", "per_class", "confusion_matrix", "misclassified", "samples")

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 1.5em; color: #1d1d1f; background: #fff; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.4em; }
.meta { color: #555; }
table { border-collapse: collapse; margin: .6em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
td { white-space: nowrap; } td:first-child { white-space: normal; }
th { background: #f4f4f6; } td:first-child, th:first-child { text-align: left; }
tr.worst td { background: #fde8e8; } tr.overall td { font-weight: 600; background: #f7f7f9; }
.warn { background: #fff3cd; border: 2px solid #e0a800; padding: .6em 1em; font-weight: 600; }
.note { background: #eef5ff; border-left: 4px solid #4a90e2; padding: .4em 1em; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0; border: 1px solid #eee; }
nav a { margin-right: 1em; } code { background: #f4f4f6; padding: 0 .25em; }
.scroll { overflow-x: auto; } .scroll table { font-size: 12.5px; } .side { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.side img { max-width: 560px; }
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _img(path: Path | None, alt: str) -> str:
    # only a real PNG file of the run is embedded: a planted link (to ~/.ssh/...) never is
    if path is None or Path(path).is_symlink() or not Path(path).is_file():
        return f'<p class="meta">({_esc(alt)}: not available)</p>'
    raw = Path(path).read_bytes()
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return f'<p class="meta">({_esc(alt)}: not a PNG file, left out)</p>'
    data = base64.b64encode(raw).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _table(headers: list[str], rows: list[list], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fresh(run_dir: Path) -> bool:
    """The run's evaluation and figures exist and are newer than its checkpoint."""
    ev, ckpt = run_dir / EVALUATION_FILE, checkpoint_path(run_dir)
    figures = [run_dir / PLOTS_DIR / f"{f}.png" for f in FIGURES if f != "curves"]
    return (ev.exists() and all(p.exists() for p in figures)
            and (not ckpt.exists() or ev.stat().st_mtime >= ckpt.stat().st_mtime))


def _ensure_evaluated(run: RunRecord, data_dir, device, data, allow_import=()) -> dict | None:
    if checkpoint_path(run.path).is_file() and not _fresh(run.path):
        evaluate_run_full(run.path, data_dir=data_dir, device=device, data=data, plots_flag=True,
                          allow_import=allow_import)
    elif not (run.path / PLOTS_DIR / "curves.png").exists() and run.history:
        plots.curves(run.history, run.path / PLOTS_DIR / "curves", f"{run.name}: train vs validation")
    return load_evaluation(run.path)


def hardest_classes(summary: dict, n: int = 3) -> str:
    """'shirt 61.2% (-24.3 points vs overall 85.5%), ...': the sentence a reader wants."""
    pcs = [pc for pc in summary.get("per_class", []) if isinstance(pc.get("accuracy"), (int, float))]
    overall = summary.get("accuracy")
    worst = sorted(pcs, key=lambda pc: pc["accuracy"])[:n]
    return ", ".join(f"{pc['class']} {percent(pc['accuracy'])} ({100 * (pc['accuracy'] - overall):+.1f} points)"
                     for pc in worst) + f" vs overall {percent(overall)}"


def class_balance_note(cfg: dict, results: dict | None) -> str:
    """Which correction for class imbalance the run trained with (training.build.class_balance)."""
    if cfg.get("balanced_sampler"):
        return "Class balance: balanced sampler (each epoch drawn with every class equally often)."
    if cfg.get("class_weights") is None:
        return "Class balance: none (plain loss and sampling)."
    record = (results or {}).get("class_balance")
    weights = record.get("weights") if isinstance(record, dict) else None
    shown = ""
    if isinstance(weights, list) and all(isinstance(w, (int, float)) for w in weights):
        shown = ": " + ", ".join(f"{w:.3g}" for w in weights[:20]) + (", ..." if len(weights) > 20 else "")
    source = "auto, inverse training frequency" if cfg["class_weights"] == "auto" else "given"
    return f"Class balance: loss weighted by class ({source}){shown}."


def _run_section(i: int, run: RunRecord, evaluation: dict | None) -> str:
    summary = (evaluation or {}).get("test") or run.test or {}
    cfg = run.config
    figs = run.path / PLOTS_DIR
    # the epochs trained (results.json, else the rows), beside the plan when they differ
    trained = (run.results or {}).get("epochs", run.history[-1]["epoch"] if run.history else 0)
    epochs = f"{trained} epochs" + (f" (of {cfg.get('epochs')} planned)" if cfg.get("epochs") != trained else "")
    out = [f'<section id="run-{i}"><h2>{_esc(run.name)}</h2>',
           f'<p class="meta">model <code>{_esc(cfg.get("model"))}</code>, recipe '
           f'<code>{_esc(cfg.get("recipe"))}</code>, {_esc(epochs)}, optimizer '
           f'{_esc(cfg.get("optimizer"))} lr {_esc(cfg.get("lr"))}, batch {_esc(cfg.get("batch_size"))}, '
           f'seed {_esc(cfg.get("seed"))} | device {_esc((run.results or {}).get("device", "?"))} | '
           f'folder <code>{_esc(run.path)}</code></p>']
    if summary:
        out.append(f"<p><b>test accuracy {percent(summary.get('accuracy'))}</b> of the model at "
                   f"{_esc(run.tested())}, macro F1 "
                   f"{percent((summary.get('macro') or {}).get('f1'))}; hardest classes: "
                   f"{_esc(hardest_classes(summary))}</p>")
    out.append("<h3>Train vs validation</h3>" + _img(figs / "curves.png", "train and validation curves"))
    # train figures are running averages in training mode (dropout, augmentation on)
    note = "Train loss and accuracy are running averages over each epoch, in training mode"
    if (cfg.get("label_smoothing") or 0) > 0:
        note += (f"; the train loss also includes label smoothing ({cfg['label_smoothing']}) and the "
                 "val/test losses do not, so compare the accuracies rather than the losses")
    out.append(f'<p class="meta">{_esc(note)}.</p>')
    if summary.get("per_class"):
        pcs = summary["per_class"]
        accs = [pc["accuracy"] for pc in pcs if isinstance(pc["accuracy"], (int, float))]
        worst = min(accs) if accs and min(accs) < max(accs) else None
        classes = ["worst" if pc["accuracy"] == worst else "" for pc in pcs] + ["overall"]
        # the terminal's per-class table, its columns named in full
        out.append('<h3>Per class</h3><div class="side">' + _table(
            ["class", "accuracy (= recall)", "precision", "F1", "n"], per_class_rows(summary), classes)
            + _img(figs / "per_class.png", "per-class accuracy") + "</div>"
            + f'<p class="meta">{_esc(class_balance_note(cfg, run.results))}</p>')
    if summary.get("most_confused"):
        out.append("<h3>Most confused pairs</h3>" + _table(CONFUSED_HEADERS, confused_rows(summary)))
    out.append("<h3>Confusion matrix</h3>" + _img(figs / "confusion_matrix.png", "confusion matrix"))
    out.append("<h3>Highest-loss mistakes</h3>" + _img(figs / "misclassified.png", "misclassified test images"))
    out.append("</section>")
    return "\n".join(out)


def _comparison_section(comp: Comparison, tmp: Path) -> str:
    out = ['<section id="comparison"><h2>Comparison</h2>']
    out += [f'<p class="warn">{_esc(w)}</p>' for w in comp.warnings]
    out += [f'<p class="note">{_esc(n)}</p>' for n in comp.notes]
    out.append('<div class="scroll">' + _table(*comp.summary_table()) + "</div>")
    out.append('<p class="meta">Test acc: each run\'s one test evaluation, at the end, of the model it kept '
               "(tested model: the best by validation when early stopping restored it, else the last "
               "epoch's; the EMA weights when EMA is on). Gap: that epoch's running train accuracy minus "
               "the test accuracy. Seeds of one configuration: mean ± std over distinct seeds.</p>")
    if any(r.history for r in comp.runs):
        fig = plots.compare_overlay(comp.histories(), tmp / "overlay")
        out.append(_img(fig.png, "curves of all runs"))
    headers, rows = comp.per_class_table()
    if rows:
        out.append('<h3>Per-class test accuracy side by side</h3><div class="scroll">'
                   + _table(headers, rows) + "</div>")
    for k, pair in enumerate(resume_pairs(comp.runs)):
        fig = plots.resume_overlay(pair.with_state.history, pair.without_state.history, pair.epoch,
                                   tmp / f"resume-{k}", parent=pair.parent_history)
        out.append(f"<h3>Resume at epoch {pair.epoch}: with vs without optimizer state</h3>"
                   + _img(fig.png, "resume comparison"))
    out.append("</section>")
    return "\n".join(out)


MAX_SWEEP_RUNS = 5  # a sweep's best trials shown as runs; the rest are in its figure


def _expand(paths) -> tuple[list[Path], list[Path], list[Path]]:
    """Run folders, sweep folders (their best complete trials join the runs) and lr-find folders."""

    run_dirs, sweeps, finders = [], [], []
    for p in map(Path, paths):
        if (p / "sweep.json").is_file() and (p / "trials").is_dir():
            sweeps.append(p)
            trials = runs.read_json(p / "sweep.json")
            ranked = [t for t in _sweep_trials(p) if t["state"] == "COMPLETE"]
            ranked.sort(key=lambda t: t["value"], reverse=trials.get("direction") == "maximize")
            run_dirs += [p / "trials" / t["run"] for t in ranked[:MAX_SWEEP_RUNS]]
        elif (p / "lr_find.json").is_file():
            finders.append(p)
        else:
            run_dirs.append(p)
    return run_dirs, sweeps, finders


def _sweep_trials(folder: Path) -> list[dict]:
    return summarize(folder).trials


def _sweep_section(folder: Path) -> str:
    s = runs.read_json(folder / "sweep.json")
    best = s["best"]
    rows = [[name, f"{value:.3f}"] for name, value in (s.get("importances") or {}).items()]
    parts = [f'<section id="sweep-{_esc(folder.name)}"><h2>Sweep {_esc(folder)}</h2>',
             f'<p>{s["trials"]} trials ({s["complete"]} complete, {s["pruned"]} pruned); the best by validation '
             f'({_esc(s["direction"])}): trial {best["number"]}, {best["value"]:.4f}, with '
             f'<code>{_esc(best["params"])}</code>; its test accuracy, reported once: '
             f'{percent(best.get("test_accuracy"))}.</p>']
    if s.get("top5_spread") is not None:
        parts.append(f'<p class="note">The top trials\' validation scores spread by {s["top5_spread"]:.4f}: '
                     "that much of the winner's lead may be luck.</p>")
    if s.get("confirmed"):
        c = s["confirmed"]
        parts.append(f"<p>Confirmed over {c['seeds']} more seeds: test accuracy {percent(c['mean'])} ± "
                     f"{percent(c['std'])}.</p>")
    parts.append(_img(folder / "sweep.png", "each parameter against the validation score"))
    if rows:
        parts.append("<h3>Parameter importances (fANOVA)</h3>" + _table(["parameter", "importance"], rows))
    return "\n".join(parts) + "</section>"


def _lr_find_section(folder: Path) -> str:
    r = runs.read_json(folder / "lr_find.json")
    return (f'<section id="lr-find-{_esc(folder.name)}"><h2>Learning-rate range test: {_esc(r["model"])} / '
            f'recipe {_esc(r["recipe"])}</h2><p>Suggested rate {r["suggestion"]:.3g}: {_esc(r["rule"])} '
            f'(seeds {_esc(r["seeds"])}, {r["seconds"]:.1f} s).</p>' + _img(folder / "lr_find.png", "the range test")
            + "</section>")


def write_report(run_dirs: list[str | Path], out_path: str | Path, *, data_dir=None,
                 device: str = "auto", data: Dataset | None = None,
                 title: str = "trainlab report", allow_import=()) -> Path:
    """Evaluate the runs as needed and write one offline HTML file; returns its path. A sweep
    folder adds its section (figure, importances, the winner) and its best trials as runs; an
    lr-find folder adds its curve."""
    if not run_dirs:
        raise TrainlabError("report needs at least one run folder")
    out_path = Path(out_path)
    if out_path.is_dir():  # before any run is evaluated: a usage error changes nothing
        raise ConfigError(f"-o {out_path} is a folder: give the report's file name, e.g. {out_path / 'report.html'}")
    run_dirs, sweeps, finders = _expand(run_dirs)
    if not run_dirs:
        raise TrainlabError("report needs at least one run folder (a sweep with no complete trial has none)")
    comp = compare_runs(run_dirs)
    evaluations = [_ensure_evaluated(r, data_dir, device, data, allow_import) for r in comp.runs]
    samples = next((r.path / PLOTS_DIR / "samples.png" for r in comp.runs
                    if (r.path / PLOTS_DIR / "samples.png").exists()), None)
    with tempfile.TemporaryDirectory() as tmp:
        nav = " ".join(['<a href="#comparison">comparison</a>', '<a href="#data">data</a>']
                       + [f'<a href="#run-{i}">{_esc(r.name)}</a>' for i, r in enumerate(comp.runs)])
        body = [f"<h1>{_esc(title)}</h1>",
                f'<p class="meta">{len(comp.runs)} run(s), written {_esc(time.strftime("%Y-%m-%d %H:%M"))}'
                "; every figure is embedded, nothing is fetched.</p>",
                f"<nav>{nav}</nav>", _comparison_section(comp, Path(tmp)),
                '<section id="data"><h2>The data</h2>' + _img(samples, "samples by class") + "</section>"]
        body += [_sweep_section(s) for s in sweeps] + [_lr_find_section(f) for f in finders]
        body += [_run_section(i, r, ev) for i, (r, ev) in enumerate(zip(comp.runs, evaluations))]
    doc = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>{_esc(title)}</title><link rel=\"icon\" href=\"data:,\">"
           f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, doc)
    return out_path
