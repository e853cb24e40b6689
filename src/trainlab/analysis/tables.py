"""Plain-text tables for the terminal: results a person reads at the end of a run."""

from __future__ import annotations


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A fixed-width table; `align` is one of 'l'/'r' per column (default: first left)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align))

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f}%"


def per_class_table(summary: dict) -> str:
    rows = [[pc["class"], pct(pc["accuracy"]), pct(pc["precision"]), pct(pc["f1"]), pc["support"]]
            for pc in summary["per_class"]]
    rows.append(["overall", pct(summary["accuracy"]), "", "", summary["n"]])
    return table(["class", "accuracy", "precision", "f1", "n"], rows)


def run_summary(title: str, summary: dict, seconds_per_epoch: float, epochs: int, device: str,
                split: str = "test split") -> str:
    head = (f"{title}\n  test accuracy {pct(summary['accuracy'])} on the {split} | "
            f"{epochs} epochs | {seconds_per_epoch:.2f} s/epoch | device {device}")
    confused = summary.get("most_confused") or []
    tail = ""
    if confused:
        tail = "\n  most confused: " + "; ".join(
            f"{c['true']} -> {c['predicted']} ({c['count']})" for c in confused[:3])
    return head + "\n" + per_class_table(summary) + tail
