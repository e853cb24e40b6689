"""Figures of a run and of several runs, written as PNG and SVG.

matplotlib is an optional dependency (`pip install trainlab[report]`), imported only when
a figure is drawn. Figures are built with `matplotlib.figure.Figure` and rendered by the
Agg canvas explicitly, never through pyplot: no display is needed, no global figure
registry can leak, and a notebook's own backend is left alone (which calling
`matplotlib.use("Agg")` would switch).

Every `plot_*`-style function takes `out` (a path without or with a suffix; the suffix
is replaced) and returns `Saved(png, svg)`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

from trainlab.errors import TrainlabError
from trainlab.metrics import percent
from trainlab.store.runs import epoch_rows
from trainlab.store.atomic import atomic_write_bytes
from trainlab.text import printable


class Saved(NamedTuple):
    png: Path
    svg: Path


def _label(text) -> str:
    """A class, run or file name as figure text: escaped like the terminal's (a control
    character would reach stderr in matplotlib's missing-glyph warning) and with `$` literal
    (matplotlib reads $...$ as math, and fails on a malformed one)."""

    return printable(text).replace("$", r"\$")


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise TrainlabError("figures need matplotlib: pip install trainlab[report]") from None
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, out: str | Path) -> Saved:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    base = Path(out)
    base = base.with_suffix("") if base.suffix in (".png", ".svg") else base
    if base.parent.is_symlink():
        raise TrainlabError(f"{base.parent} is a symbolic link: figures are written only into a real "
                            "folder; replace the link by a folder")
    base.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    png, svg = base.with_name(base.name + ".png"), base.with_name(base.name + ".svg")
    import io


    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    atomic_write_bytes(png, buf.getvalue())  # never through a planted link
    # fixed hash salt + no date: the same figure gives the same SVG bytes
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "trainlab"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    atomic_write_bytes(svg, buf.getvalue())
    return Saved(png, svg)


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            xs.append(r["epoch"])
            ys.append(v)
    return xs, ys


# val is drawn last and dashed: it often lies right on the test curve
SPLIT_STYLE = {"train": dict(color="tab:blue"), "test": dict(color="tab:red"),
               "val": dict(color="tab:orange", ls="--")}


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------- one run

def curves(history: list[dict], out, title: str = "") -> Saved:
    """The "scissors": train vs val/test loss and accuracy per epoch, gap shaded."""
    rows = epoch_rows(history)
    fig = _figure(10, 3.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, metric, name in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        for split, style in SPLIT_STYLE.items():
            xs, ys = _series(rows, f"{split}_{metric}")
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, label=split, **style)
        # the shaded band is the gap between training and held-out data: the overfitting the
        # picture is about (validation: the test split is evaluated per epoch only on request)
        xs_tr, tr = _series(rows, f"train_{metric}")
        for held in ("val", "test"):
            xs_he, he = _series(rows, f"{held}_{metric}")
            if xs_tr and xs_tr == xs_he:
                ax.fill_between(xs_tr, tr, he, color="tab:red", alpha=0.08, label=f"train-{held} gap")
                break
        _epoch_axis(ax)
        ax.set_ylabel(name)
    best = _best_val_epoch(rows)
    if best is not None:
        for ax in (ax_loss, ax_acc):
            ax.axvline(best, color="grey", lw=0.8, ls=":", label=f"best val (epoch {best})")
    ax_loss.legend(fontsize=8)
    fig.suptitle(_label(title or "train vs validation"))
    return _save(fig, out)


def _best_val_epoch(rows: list[dict]):
    xs, ys = _series(rows, "val_loss")
    return xs[ys.index(min(ys))] if ys else None


def per_class_bars(per_class: list[dict], out, title: str = "", overall: float | None = None) -> Saved:
    """Per-class test accuracy as horizontal bars, hardest class highlighted."""
    names = [_label(pc["class"]) for pc in per_class]
    accs = [pc["accuracy"] if pc["accuracy"] is not None else float("nan") for pc in per_class]
    fig = _figure(7, 0.35 * len(names) + 1.2)
    ax = fig.subplots()
    finite = [a for a in accs if not math.isnan(a)]
    worst = min(finite) if finite and min(finite) < max(finite) else None
    colors = ["tab:red" if a == worst else "tab:blue" for a in accs]
    ys = list(range(len(names)))
    ax.barh(ys, [0 if math.isnan(a) else a for a in accs], color=colors)
    for y, a in zip(ys, accs):
        ax.text(min(a, 1) + 0.005 if not math.isnan(a) else 0.005, y, percent(a, 1), va="center", fontsize=8)
    ax.set_yticks(ys, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("test accuracy (recall)")
    if overall is not None:
        ax.axvline(overall, color="grey", ls="--", lw=1, label=f"overall {percent(overall, 1)}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title(_label(title or "per-class accuracy"))
    return _save(fig, out)


def confusion_figure(cm, classes: list[str], title: str = ""):
    """A Figure of the confusion matrix: colour = share of the true class, text = count."""
    import numpy as np

    counts = np.asarray(cm, dtype=np.int64)
    totals = counts.sum(1, keepdims=True)
    frac = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    n, classes = len(classes), [_label(c) for c in classes]
    size = max(4.0, 0.45 * n + 1.5)
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for t in range(n):
        for p in range(n):
            if counts[t, p]:
                ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if frac[t, p] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    ax.set_title(_label(title or "confusion matrix"))
    return fig


def confusion_heatmap(cm, classes: list[str], out, title: str = "") -> Saved:
    return _save(confusion_figure(cm, classes, title), out)


def _as_hwc(images):
    """uint8 or float NCHW (tensor or array) -> float NHWC in [0, 1], for imshow."""
    import numpy as np

    x = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    x = x.astype(np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.max(initial=0) > 1.5:  # stored pixels (0-255)
        x = x / 255.0
    else:  # already scaled or normalized floats: stretch each image to [0, 1]
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-8)
    return x.transpose(0, 2, 3, 1).clip(0, 1)


def _show(ax, img) -> None:
    if img.shape[2] == 1:
        ax.imshow(img[:, :, 0], cmap="gray_r", vmin=0, vmax=1)
    else:
        ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])


def misclassified_grid(images, true: list[int], pred: list[int], confidence: list[float],
                       classes: list[str], out, cols: int = 8, title: str = "") -> Saved:
    """Images with "true -> predicted (confidence)" above each one."""
    imgs = _as_hwc(images)
    n = len(imgs)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig = _figure(max(6.0, 1.5 * cols), 1.75 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            ax.axis("off")
            continue
        _show(ax, imgs[i])
        ax.set_title(f"{_label(classes[true[i]])}\n→ {_label(classes[pred[i]])} {percent(confidence[i], 0)}",
                     fontsize=7, color="tab:red" if true[i] != pred[i] else "black")
    if n == 0:
        axes[0].text(0.5, 0.5, "no misclassified examples", ha="center", va="center")
    fig.suptitle(_label(title or "highest-loss test errors (true → predicted, confidence)"), fontsize=10)
    return _save(fig, out)


def sample_grid(images, labels, classes: list[str], out, per_class: int = 8, title: str = "") -> Saved:
    """The first `per_class` images of each class, one row per class."""
    import numpy as np

    labels = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in range(len(classes))]
    pick = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    imgs = _as_hwc(images[pick] if len(pick) else images[:0])
    fig = _figure(1.1 * per_class + 1.2, 1.1 * len(classes) + 0.4)
    axes = fig.subplots(len(classes), per_class, squeeze=False)
    k = 0
    for c, idx in enumerate(chosen):
        for j in range(per_class):
            ax = axes[c, j]
            if j < len(idx):
                _show(ax, imgs[k])
                k += 1
            else:
                ax.axis("off")
        axes[c, 0].set_ylabel(_label(classes[c]), rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(_label(title or "samples by class"), fontsize=10)
    return _save(fig, out)


# ---------------------------------------------------------------- several runs

def resume_overlay(with_state: list[dict], without_state: list[dict], fork_epoch: int, out,
                   parent: list[dict] | None = None, title: str = "") -> Saved:
    """Loss curves of a run resumed with vs without its optimizer state, fork marked.

    `parent` (optional) is the history both continued from, drawn up to the fork.
    """
    fig = _figure(10, 3.8)
    ax_tr, ax_val = fig.subplots(1, 2)
    shared = [r for r in epoch_rows(parent or []) if r["epoch"] <= fork_epoch]
    branches = [(epoch_rows(with_state), "resumed with optimizer state", "tab:green"),
                (epoch_rows(without_state), "resumed with a fresh optimizer", "tab:purple")]
    has_val = any(_series(rows, "val_loss")[0] for rows, _, _ in branches)
    for ax, key in ((ax_tr, "train_loss"), (ax_val, "val_loss" if has_val else "test_loss")):
        if shared:
            ax.plot(*_series(shared, key), color="black", marker="o", ms=3, label="before resume")
        for rows, label, color in branches:
            if shared:  # connect each branch to the fork point
                rows = [shared[-1]] + [r for r in rows if r["epoch"] > fork_epoch]
            ax.plot(*_series(rows, key), color=color, marker="o", ms=3, label=label)
        ax.axvline(fork_epoch, color="grey", ls="--", lw=1)
        ax.annotate(f"resume at epoch {fork_epoch}", (fork_epoch, 1), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize=8, color="grey")
        _epoch_axis(ax)
        ax.set_ylabel(key.replace("_", " "))
    ax_tr.legend(fontsize=8)
    fig.suptitle(_label(title or "resume: with vs without optimizer state"))
    return _save(fig, out)


def compare_overlay(histories: dict[str, list[dict]], out, title: str = "") -> Saved:
    """Several runs' curves in one figure: loss and accuracy (val solid, train dotted)."""
    fig = _figure(11, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    cmap = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
    for i, (name, hist) in enumerate(histories.items()):
        rows = epoch_rows(hist)
        color = cmap[i % len(cmap)]
        val_key = "val_loss" if _series(rows, "val_loss")[0] else "test_loss"
        ax_loss.plot(*_series(rows, val_key), color=color, label=_label(f"{name} ({val_key.split('_')[0]})"))
        ax_loss.plot(*_series(rows, "train_loss"), color=color, ls=":", lw=1)
        # validation, as the loss panel: per-epoch test accuracy exists only when asked for, never to choose by
        acc_key = "val_acc" if _series(rows, "val_acc")[0] else "test_acc"
        ax_acc.plot(*_series(rows, acc_key), color=color, marker="o", ms=2.5,
                    label=_label(f"{name} ({acc_key.split('_')[0]})"))
        ax_acc.plot(*_series(rows, "train_acc"), color=color, ls=":", lw=1)
    ax_loss.set_ylabel("loss (solid: val, dotted: train)")
    ax_acc.set_ylabel("accuracy (solid: val, dotted: train)")
    for ax in (ax_loss, ax_acc):
        _epoch_axis(ax)
    ax_acc.legend(fontsize=7)
    fig.suptitle(_label(title or "runs compared"))
    return _save(fig, out)


def lr_find_curve(lrs: list[float], losses: dict, suggestion: float, out, title: str = "") -> Saved:
    """The range test: smoothed loss against a log-scaled rate, one line per seed (a band for
    several), the suggested rate marked."""
    fig = _figure(7, 4)
    ax = fig.subplots()
    curves_ = list(losses.values())
    n = min(len(c) for c in curves_)
    if len(curves_) > 1:
        lo = [min(c[i] for c in curves_) for i in range(n)]
        hi = [max(c[i] for c in curves_) for i in range(n)]
        ax.fill_between(lrs[:n], lo, hi, color="tab:blue", alpha=0.2, label=f"{len(curves_)} seeds: min-max")
    median = [sorted(c[i] for c in curves_)[len(curves_) // 2] for i in range(n)]
    ax.plot(lrs[:n], median, color="tab:blue", label="smoothed loss" + (" (median)" if len(curves_) > 1 else ""))
    ax.axvline(suggestion, color="tab:red", ls="--", lw=1, label=f"suggested lr {suggestion:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    finite = [v for v in median if math.isfinite(v)]
    if finite:  # the divergence at the end would squash the interesting part
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 2.5 * finite[0]) * 1.05)
    ax.legend(fontsize=8)
    ax.set_title(_label(title or "learning-rate range test"))
    return _save(fig, out)


def sweep_scatter(trials: list[dict], out, higher_is_better: bool = False) -> Saved:
    """A sweep: each searched parameter against the trial's validation score (pruned trials
    hollow: their score is where they were stopped), the best trial marked."""
    names = sorted({k for t in trials for k in t["params"]})
    fig = _figure(3.2 * max(1, len(names)), 3.2)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    scored = [t for t in trials if t["value"] is not None and math.isfinite(t["value"])]
    complete = [t for t in scored if t["state"] == "COMPLETE"]
    best = (max if higher_is_better else min)(complete, key=lambda t: t["value"]) if complete else None
    for ax, name in zip(axes, names):
        for state, style in (("COMPLETE", dict(color="tab:blue")), ("PRUNED", dict(facecolors="none",
                                                                                  edgecolors="tab:grey"))):
            pts = [(t["params"][name], t["value"]) for t in scored if t["state"] == state and name in t["params"]]
            if pts:
                xs, ys = zip(*pts)
                numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
                ax.scatter(xs if numeric else [str(x) for x in xs], ys, s=18, label=state.lower(), **style)
        if best is not None and name in best["params"]:
            ax.scatter([best["params"][name]], [best["value"]], marker="*", s=140, color="tab:red", label="best")
        values = [t["params"][name] for t in scored if name in t["params"]]
        if values and all(isinstance(v, float) for v in values) and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(name)
    axes[0].set_ylabel("validation score")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"sweep: {len(scored)} trials ({'higher' if higher_is_better else 'lower'} is better)")
    return _save(fig, out)
