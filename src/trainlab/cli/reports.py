"""Commands that look at finished runs: evaluate, compare, report, experiment.

cli.main.build_parser calls `add_commands(sub)`; each handler returns an exit code and raises
TrainlabError subclasses for failures the user can act on. The library is imported inside the
handlers: it imports torch, and every command's `--help` answers without it.
"""

from __future__ import annotations

import logging

from trainlab.cli.args import add_allow_import

log = logging.getLogger("trainlab")


# ---------------------------------------------------------------- evaluate

def cmd_evaluate(args) -> int:
    from trainlab.analysis.evaluation import evaluate_run_full
    from trainlab.analysis.tables import CONFUSED_HEADERS, confused_rows, per_class_prf_table, printable, table
    from trainlab.metrics import percent

    ev = evaluate_run_full(args.path, data_dir=args.data_dir, device=args.device, top_k=args.top,
                           allow_import=tuple(args.allow_import or ()),
                           plots_flag=False if args.no_plots else None)
    s = ev.summary
    print(f"{printable(args.path)}: test accuracy {percent(s['accuracy'])}, loss {s['loss']:.4f}, "
          f"macro F1 {percent(s['macro']['f1'])} on {s['n']} test images")
    if ev.data_matches is False:
        print("!! the data differs from what this model was trained with (split hashes do not match)")
    print(per_class_prf_table(s))
    if any(pc["precision"] != pc["precision"] for pc in s["per_class"]):  # NaN: never predicted
        print("n/a precision: the class was never predicted (undefined); its F1 counts as 0")
    if s["most_confused"]:
        print("\nmost confused pairs")
        print(table(CONFUSED_HEADERS, confused_rows(s)))
    if ev.highest_loss:
        print("\nhighest-loss test examples")
        print(table(["test index", "true", "predicted", "confidence", "loss"],
                    [[r["index"], r["true"], r["pred"], percent(r["confidence"]), f"{r['loss']:.3f}"]
                     for r in ev.highest_loss]))
    tables = [p.name for k, p in ev.files.items() if not k.endswith("_plot")]
    print(f"\nwrote {', '.join(tables)} in {printable(ev.out_dir)}")
    if any(k.endswith("_plot") for k in ev.files):
        print(f"figures (PNG and SVG) in {printable(ev.out_dir / 'plots')}")
    return 0


# ---------------------------------------------------------------- compare and report

def cmd_compare(args) -> int:
    from trainlab import plots
    from trainlab.analysis.compare import compare_runs
    from trainlab.analysis.tables import printable

    comp = compare_runs(args.runs)
    for w in comp.warnings:
        log.warning("compare: %s", w)
    print(comp.text())
    if args.output:
        saved = plots.compare_overlay(comp.histories(), args.output)
        print(f"\nwrote {printable(saved.png)} and {printable(saved.svg)}")
    return 0


def cmd_report(args) -> int:
    from trainlab.analysis.report import write_report
    from trainlab.analysis.tables import printable

    path = write_report(args.runs, args.output, data_dir=args.data_dir, device=args.device,
                        allow_import=tuple(args.allow_import or ()),
                        title=args.title)
    print(f"wrote {printable(path)} (self-contained: open it in any browser, offline)")
    return 0


# ---------------------------------------------------------------- the experiment ladder

def cmd_experiment(args) -> int:
    from trainlab.analysis.compare import compare_runs
    from trainlab.tune.experiment import QUICK_SCALE, run_ladder
    from trainlab.analysis.tables import printable

    scale = QUICK_SCALE if args.quick else args.epochs_scale
    results, report = run_ladder(args.runs_dir, dataset=args.dataset, data_dir=args.data_dir,
                                 scale=scale, threads=args.threads, device=args.device,
                                 seed=args.seed, val_size=args.val_size, name=args.name,
                                 quiet=args.quiet)
    print(compare_runs([r.run_dir for r in results]).text())
    print(f"\nwrote {printable(report)}")
    return 0


# ---------------------------------------------------------------- registration

def add_commands(sub) -> None:
    e = sub.add_parser("evaluate", help="per-class test results of a run folder or checkpoint, "
                       "written as JSON/CSV and figures")
    e.add_argument("path", help="run folder or checkpoint file")
    e.add_argument("--data-dir")
    e.add_argument("--device", default="auto")
    e.add_argument("--top", type=int, default=10, help="highest-loss examples to list (default 10)")
    add_allow_import(e)
    e.add_argument("--no-plots", action="store_true", help="tables and files only, no figures")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="compare run folders: config differences, results, per class")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("-o", "--output", help="write the overlaid curves to this figure (PNG and SVG)")
    c.set_defaults(func=cmd_compare)

    r = sub.add_parser("report", help="one self-contained HTML report of run folders")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR")
    r.add_argument("-o", "--output", default="report.html", help="HTML file (default report.html)")
    r.add_argument("--data-dir")
    r.add_argument("--device", default="auto")
    r.add_argument("--title", default="trainlab report")
    add_allow_import(r)
    r.set_defaults(func=cmd_report)

    x = sub.add_parser("experiment", help="run a ready-made sequence of runs and report on it")
    xsub = x.add_subparsers(dest="experiment", required=True, parser_class=type(x))
    f = xsub.add_parser("fashion", help="baseline mlp, the same longer, mlp-reg, cnn; then the report")
    f.add_argument("--runs-dir", default="runs", help="the experiment folder goes under it (default runs)")
    f.add_argument("--name", help="experiment folder name (default fashion-ladder-<time>)")
    f.add_argument("--dataset", default="fashion-mnist")
    f.add_argument("--data-dir")
    f.add_argument("--device", default="auto")
    f.add_argument("--threads", type=int)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--val-size", type=int)
    f.add_argument("--epochs-scale", type=float, default=1.0,
                   help="multiply every step's epochs (at least 1 each), e.g. 0.5")
    f.add_argument("--quick", action="store_true", help="1 epoch per step (2 for the longer one)")
    f.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    f.set_defaults(func=cmd_experiment)
