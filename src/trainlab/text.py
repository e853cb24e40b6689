"""Text that reaches a terminal, and sizes in words: the lowest layer, so every other one may use it."""

from __future__ import annotations

import logging
import re


def printable(text) -> str:
    """`text` safe for one terminal line: control characters (a newline, an escape sequence
    that clears the screen) and undecodable bytes of a file name written as escapes, so no
    file or class name can forge a row or a message."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


class PrintableArgs(logging.Filter):
    """On the trainlab logger: each argument of a log line (a run folder, a class or file name)
    made `printable`, so none forges a line or runs an escape sequence; the message's own text
    stays as written."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = {k: _safe_arg(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(_safe_arg(a) for a in record.args)
        return True


def _safe_arg(a):
    """`a` itself when its text is printable (so %d, %.4f and %r format it as before), else its
    escaped text."""
    if a is None or isinstance(a, (int, float)):
        return a
    text = str(a)
    return a if text.isprintable() else printable(text)


_USERINFO = re.compile(r"(?<=://)[^/?#]*@")  # to the last @ of the authority, as URL parsers split it


def hide_credentials(text: str) -> str:
    """A URL's `user:password@` written as `***@`: a URI is shown (an error, a log line) or
    stored (a checkpoint) only without the secret it may carry (MLFLOW_TRACKING_URI can)."""
    return _USERINFO.sub("***@", text)


def protect_log(logger: logging.Logger | None = None) -> None:
    """Install PrintableArgs on the trainlab logger once (importing trainlab does)."""
    logger = logger or logging.getLogger("trainlab")
    if not any(isinstance(f, PrintableArgs) for f in logger.filters):
        logger.addFilter(PrintableArgs())


# ---------------------------------------------------------------- sizes

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | None) -> int | None:
    """"2GiB", "500MB", "1.5GB", "1000000" as bytes; None for None or anything else."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]{1,15}(?:\.[0-9]{1,6})?)\s*([A-Za-z]{0,3})\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        return None
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    return value if value < 2**62 else None


def format_bytes(n: float) -> str:
    """Bytes for a sentence: "512 B", "12.3 KiB", "4.0 MiB", "1.2 GiB" (small sizes stay visible)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} B"
