"""The checkpoint folder's manifest protocol: runs/<name>/checkpoints/ holds last.pt, best.pt,
epoch-NNNN.pt, top-epoch-NNNN.pt (--keep-top) and manifest.json (each file's sha256, epoch and step). A save records the new
hash beside the old, renames the file in, then drops the old hash, so a kill at any instant
leaves a file that verifies; resume picks the newest verified file, and rebuilds a lost
manifest from the files that load and pass the schema check."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import time
from pathlib import Path

from trainlab.errors import StoreError, TrainlabError
from trainlab.store import faults
from trainlab.store.atomic import (
    atomic_write_bytes,
    commit,
    discard,
    fsync_dir,
    remove_stale_temps,
    write_temp,
)
from trainlab.store.checkpoint import check_free_space, serialize, sha256_bytes, sha256_file
from trainlab.store.schema import _is_int, check_checkpoint, load_checkpoint

log = logging.getLogger("trainlab")

MANIFEST = "manifest.json"


def _stamp() -> str:
    """A time stamp that two set-asides in one second never share."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


# Names in the manifest are plain file names inside checkpoints/: no folders, no "..",
# nothing absolute, nothing hidden, so no entry can point outside the run folder.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\.pt")
_SHA = re.compile(r"[0-9a-f]{64}")
MAX_MANIFEST = 16 << 20
_TOP = re.compile(r"top-(epoch-\d{4,}|step-\d{8,})\.pt")  # --keep-top's files


def valid_name(name) -> bool:
    return isinstance(name, str) and len(name) <= 100 and _NAME.fullmatch(name) is not None


def _valid_entry(entry, nested: bool = False) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not _SHA.fullmatch(entry["sha256"]):
        return False
    for key in ("epoch", "global_step", "bytes"):
        if key in entry and not (_is_int(entry[key]) and entry[key] >= 0):
            return False
    prev = entry.get("replaces")
    return prev is None or (not nested and _valid_entry(prev, nested=True))


class CheckpointDir:
    """runs/<name>/checkpoints/: last.pt, best.pt, epoch-NNNN.pt and manifest.json.

    A save is three steps, each atomic: the manifest first records the new file's hash
    beside the one it replaces, then the file is renamed into place, then the manifest
    drops the old hash. A kill at any instant leaves the file matching one of the two
    hashes, so it verifies: at most the work since the previous save is lost."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def _refuse_link(self) -> None:
        if self.folder.is_symlink():
            raise StoreError(f"{self.folder} is a symbolic link: checkpoints are written only into a "
                             "real folder inside the run folder; replace the link by a folder")

    def read_manifest(self) -> tuple[dict, str | None, list]:
        """(valid entries, why the manifest as a whole is unusable or None, dropped names)."""
        try:
            if self.manifest_path.stat().st_size > MAX_MANIFEST:
                return {}, "larger than any manifest", []
            raw = self.manifest_path.read_bytes()
        except FileNotFoundError:
            return {}, "missing", []
        except OSError as e:  # a folder named manifest.json, no permission
            return {}, f"unreadable ({e.strerror})", []
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {}, "not valid UTF-8 JSON", []
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            return {}, "not a manifest (no 'files' table)", []
        files, dropped = {}, []
        for name, entry in data["files"].items():
            (files.__setitem__(name, entry) if valid_name(name) and _valid_entry(entry) else dropped.append(name))
        return files, None, dropped

    def manifest(self) -> dict:
        return {"files": self.read_manifest()[0]}

    def _write_manifest(self, files: dict) -> None:
        atomic_write_bytes(self.manifest_path, (json.dumps({"files": files}, indent=1) + "\n").encode())

    def save(self, name: str, ckpt: dict | bytes, **info) -> None:
        """Write `name` and record it (sha256 + info) in the manifest, crash-safe at every instant.
        `ckpt`: a checkpoint, or its serialize()d bytes (one serialization for several names)."""
        if not valid_name(name):
            raise ValueError(f"checkpoint name {name!r} is not a plain file name")
        self._refuse_link()
        self.folder.mkdir(parents=True, exist_ok=True)
        data = ckpt if isinstance(ckpt, bytes) else serialize(ckpt)
        check_free_space(self.folder, len(data))
        files = self.read_manifest()[0]
        entry = {"sha256": sha256_bytes(data), "bytes": len(data),
                 "saved": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        # the entry the file on disk matches now (after an earlier kill, maybe the "replaces"
        # one): a second kill in the same window must still leave a verified file
        old = self._match(name, files)[0] if name in files else None
        files[name] = {**entry, "replaces": old}
        tmp = write_temp(self.folder / name, data)  # a full disk fails here, nothing changed yet
        try:
            self._write_manifest(files)  # 1: both hashes accepted
            faults.at("pending", name, info.get("global_step"))
            commit(tmp, self.folder / name)  # 2: the new file in place
        except BaseException:
            discard(tmp)
            raise
        faults.at("renamed", name, info.get("global_step"))
        files[name] = entry
        self._write_manifest(files)  # 3: only the new hash
        faults.at("manifest-done", name, info.get("global_step"))

    def _match(self, name: str, files: dict) -> tuple[dict | None, str | None]:
        path = self.folder / name
        if not valid_name(name):
            return None, "not a plain checkpoint file name"
        if path.is_symlink():
            return None, "a symbolic link, not a checkpoint file"
        if not path.is_file():
            return None, "missing"
        entry = files.get(name)
        if entry is None:
            return None, "not in the manifest"
        digest = sha256_file(path)
        if digest == entry["sha256"]:
            return {k: v for k, v in entry.items() if k != "replaces"}, None
        prev = entry.get("replaces")
        if prev is not None and digest == prev["sha256"]:
            return prev, None  # killed between steps 1 and 2 of a save: the old file is whole
        return None, "its sha256 does not match the manifest (torn or altered)"

    def verify(self, name: str) -> str | None:
        """None if `name` is present and matches its manifest hash, else why not."""
        return self._match(name, self.read_manifest()[0])[1]

    def entry(self, name: str) -> dict | None:
        """The manifest entry that `name` matches now (None if it does not verify)."""
        return self._match(name, self.read_manifest()[0])[0]

    def resolve(self, name: str, files: dict) -> tuple[dict | None, str | None]:
        """(the entry `name` matches in `files`, None) or (None, why not): after a kill
        mid-save the file may match the "replaces" entry, which is what resume uses."""
        return self._match(name, files)

    def files_here(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.folder) if valid_name(e.name))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, name: str) -> None:
        # the file first: a kill between the two leaves an entry for a missing file (skipped
        # quietly), never an orphaned file that is warned about on every resume
        if valid_name(name):
            (self.folder / name).unlink(missing_ok=True)
        files = self.read_manifest()[0]
        files.pop(name, None)
        self._write_manifest(files)

    def verified(self) -> list[tuple[str, dict]]:
        """(name, manifest entry) of every verified checkpoint, newest first; warns about bad ones."""
        files = self.read_manifest()[0]
        good = []
        for name in sorted(set(self.files_here()) | set(files)):
            entry, problem = self._match(name, files)
            if entry is not None:
                good.append((entry.get("global_step", -1), name == "last.pt", name, entry))
            elif problem != "missing":
                log.warning("checkpoint %s is unverified (%s): skipping it", self.folder / name, problem)
        return [g[2:] for g in sorted(good, key=lambda g: g[:3], reverse=True)]

    def newest_good(self) -> tuple[str, dict] | None:
        """(name, manifest entry) of the newest verified checkpoint."""
        good = self.verified()
        return good[0] if good else None

    def recover(self) -> list[str]:
        """For resume, with the run's lock held: if manifest.json is missing or unusable while
        checkpoint files are here, rebuild it from the files that load and pass the structural
        check (the old manifest is kept aside). A loadable checkpoint is never lost to a bad
        manifest. Returns the names recovered."""
        files, problem, dropped = self.read_manifest()
        for name in dropped:
            log.warning("manifest %s: ignored the entry %r (not a plain checkpoint name inside "
                        "checkpoints/, or malformed)", self.manifest_path, name)
        self._refuse_link()
        # files the manifest says nothing about (lost, or a malformed entry); a file whose
        # hash contradicts its entry stays unverified: that is what the hash is for
        names = [n for n in self.files_here() if n not in files and (self.folder / n).is_file()
                 and not (self.folder / n).is_symlink()]
        if not names:
            return []
        rebuilt = dict(files)
        for name in names:
            path = self.folder / name
            try:
                ckpt = check_checkpoint(load_checkpoint(path, map_location="cpu"), path, training=True)
            except TrainlabError as e:
                log.warning("checkpoint %s: not recovered (%s)", path, e)
                continue
            rebuilt[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size,
                             "epoch": ckpt["epoch"], "global_step": ckpt["global_step"], "rebuilt": True}
        added = [n for n in names if n in rebuilt]
        if problem is not None and (self.manifest_path.exists() or self.manifest_path.is_symlink()):
            aside = self.manifest_path.with_name(f"{MANIFEST}.unusable-{_stamp()}")
            os.replace(self.manifest_path, aside)
            log.warning("manifest %s was %s: kept it as %s", self.manifest_path, problem, aside.name)
        if added or problem is not None:
            self._write_manifest(rebuilt)
            log.warning("%s %s: recorded %d of %d unlisted checkpoint file(s) that load and pass the "
                        "structural check: %s", "rebuilt" if problem else "repaired", self.manifest_path,
                        len(added), len(names), ", ".join(added) or "none")
        return added

    def set_aside(self, names: list[str], kind: str) -> Path:
        """Move `names` into <kind>-<time>-<random>/ (kept, never deleted) and drop them from
        the manifest; the folder's name is unique, so nothing set aside is ever overwritten."""
        files = self.read_manifest()[0]
        aside = self.folder / f"{kind}-{_stamp()}"
        aside.mkdir()
        for name in names:
            os.replace(self.folder / name, aside / name)
            files.pop(name, None)
        fsync_dir(aside)
        fsync_dir(self.folder)
        self._write_manifest(files)
        log.warning("moved %d checkpoint file(s) into %s (kept, not deleted): %s", len(names), aside, ", ".join(names))
        return aside

    def set_aside_unusable(self) -> Path | None:
        """Move checkpoint files that do not verify into unusable-<time>/, so a restart from
        epoch 0 cannot overwrite them."""
        files = self.read_manifest()[0]
        bad = [n for n in self.files_here() if self._match(n, files)[0] is None]
        return self.set_aside(bad, "unusable") if bad else None

    def remove_stale_temps(self) -> None:
        """Delete temporary files of interrupted writes (call only with the run's lock held)."""
        remove_stale_temps(self.folder)

    def top_ranked(self, metric: str, mode: str) -> list[tuple[str, dict]]:
        """The top-K files (top-epoch-NNNN.pt, top-step-NNNNNNNN.pt) ranked by `metric`, best
        first; on a tie the earlier one ranks higher. A file whose entry has no finite value for
        `metric` (a rebuilt manifest, another monitor) is not ranked: never pruned, never counted."""
        ranked = []
        for name, entry in self.read_manifest()[0].items():
            value = entry.get("value")
            if (_TOP.fullmatch(name) and entry.get("metric") == metric and isinstance(value, (int, float))
                    and not isinstance(value, bool) and math.isfinite(value)):
                ranked.append((value if mode == "min" else -value, entry.get("global_step", 0), name, entry))
        return [r[2:] for r in sorted(ranked, key=lambda r: r[:3])]

    def enters_top(self, keep: int, metric: str, mode: str, value: float) -> bool:
        """Whether `value` would be among the `keep` best (a tie with the K-th does not enter)."""
        ranked = self.top_ranked(metric, mode)
        if len(ranked) < keep:
            return True
        worst = ranked[keep - 1][1]["value"]
        return value < worst if mode == "min" else value > worst

    def prune_top(self, keep: int, metric: str, mode: str, new: str | None = None) -> None:
        """Keep the `keep` best top files by `metric`. `new`: the file just saved; nothing is
        deleted unless it verifies (a crash leaves K+1 files, pruned at the next save)."""
        if keep <= 0 or (new is not None and self.verify(new) is not None):
            return
        for name, _ in self.top_ranked(metric, mode)[keep:]:
            self.remove(name)

    def prune_periodic(self, keep: int) -> None:
        """Keep the `keep` newest epoch-NNNN.pt files (0 = keep all)."""
        if keep <= 0:
            return
        periodic = sorted((n for n in self.read_manifest()[0] if re.fullmatch(r"epoch-\d+\.pt", n)),
                          key=lambda n: int(n[len("epoch-"):-len(".pt")]))  # epoch-10000 after epoch-9999
        for name in periodic[:-keep]:
            self.remove(name)
