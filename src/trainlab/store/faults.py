"""The write path's fault-injection seam. Production code marks each phase of a write with
`at(phase, name, step)`; the default `FAULTS` does nothing. Tests replace `FAULTS` (in their
own process, or in a child started through tests/fault_worker.py) to record where a kill
landed or to widen the window between two phases. Nothing here reads the environment.

Phases: "tmp-partial" (half of any temporary file written), and for a checkpoint save
"pending" (the manifest accepts both hashes), "renamed" (the new file in place) and
"manifest-done" (the manifest holds only the new hash)."""

from __future__ import annotations


class NoFaults:
    """The default: every phase passes untouched."""

    def at(self, phase: str, name: str, step: int | None = None) -> None:
        pass


FAULTS = NoFaults()


def at(phase: str, name: str, step: int | None = None) -> None:
    """Announce `phase` of writing `name` (a file name) to the installed faults."""
    FAULTS.at(phase, name, step)
