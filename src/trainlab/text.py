"""Text that reaches a terminal: the lowest layer, so every other one may use it."""

from __future__ import annotations

import logging


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


def protect_log(logger: logging.Logger | None = None) -> None:
    """Install PrintableArgs on the trainlab logger once (importing trainlab does)."""
    logger = logger or logging.getLogger("trainlab")
    if not any(isinstance(f, PrintableArgs) for f in logger.filters):
        logger.addFilter(PrintableArgs())
