"""The command line: a thin layer over the library (`trainlab --help`)."""

from trainlab.cli.main import main

__all__ = ["main"]
