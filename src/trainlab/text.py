"""Text that reaches a terminal: the lowest layer, so every other one may use it."""

from __future__ import annotations


def printable(text) -> str:
    """`text` safe for one terminal line: control characters (a newline, an escape sequence
    that clears the screen) and undecodable bytes of a file name written as escapes, so no
    file or class name can forge a row or a message."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)
