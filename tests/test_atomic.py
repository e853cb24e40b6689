"""The one atomic writer: a planted link or file never redirects a write, a failure leaves
the old file, stale temporaries are cleaned, and every writer in trainlab goes through it."""

from __future__ import annotations

import ast
import errno
import os
from pathlib import Path

import pytest
from conftest import refuse_writes_under

import trainlab.store.atomic as atomic
from trainlab.errors import StoreError
from trainlab.store.atomic import append_line, atomic_write_bytes, remove_stale_temps

SRC = Path(__file__).resolve().parents[1] / "src" / "trainlab"


@pytest.fixture
def fixed_temp_name(monkeypatch):
    """Make the random part of the temp name predictable, as an attacker would hope."""
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: "abcd")
    return lambda path: path.with_name(f".{path.name}.tmp-{os.getpid()}-abcd")


def test_a_symlink_planted_at_the_temp_name_is_refused_and_its_target_untouched(tmp_path, fixed_temp_name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "run" / "last.pt"
    target.parent.mkdir()
    fixed_temp_name(target).symlink_to(victim)
    with pytest.raises(StoreError, match="symbolic link stands at its temporary name"):
        atomic_write_bytes(target, b"new checkpoint bytes")
    assert victim.read_text() == "precious"
    assert not target.exists()
    assert fixed_temp_name(target).is_symlink()  # not ours: left for the user to look at


def test_a_file_planted_at_the_temp_name_is_never_written_through(tmp_path, fixed_temp_name):
    target = tmp_path / "manifest.json"
    fixed_temp_name(target).write_text("planted")
    with pytest.raises(StoreError, match="refused to write"):
        atomic_write_bytes(target, b"{}")
    assert fixed_temp_name(target).read_text() == "planted"


def test_a_symlink_at_the_target_is_replaced_itself_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "config.toml"
    target.symlink_to(victim)
    atomic_write_bytes(target, b"x = 1\n")
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and target.read_bytes() == b"x = 1\n"


def test_append_refuses_a_symlinked_log(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    log = tmp_path / "metrics.jsonl"
    log.symlink_to(victim)
    with pytest.raises(StoreError):
        append_line(log, '{"epoch": 1}')
    assert victim.read_text() == "precious\n"


def test_temp_names_differ_per_write_so_two_writers_never_share_one(tmp_path, monkeypatch):
    seen = []
    real = atomic.os.open

    def spy(path, flags, mode=0o777):
        seen.append(str(path))
        return real(path, flags, mode)

    monkeypatch.setattr(atomic.os, "open", spy)
    for _ in range(3):
        atomic_write_bytes(tmp_path / "a.json", b"{}")
    temps = [p for p in seen if ".tmp-" in p]
    assert len(set(temps)) == 3


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES])
def test_a_read_only_folder_gives_one_sentence_and_leaves_the_old_file(tmp_path, monkeypatch, err):
    # CI runs as root, which ignores permission bits: the OS's answer is injected instead
    target = tmp_path / "results.json"
    target.write_text("old")
    refuse_writes_under(monkeypatch, tmp_path, err)
    with pytest.raises(StoreError, match="read-only or not yours"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"


def test_stale_temps_of_every_kind_are_cleaned_and_nothing_else(tmp_path):
    keep = ["last.pt", "config.toml", "metrics.jsonl", ".lock"]
    stale = [".last.pt.tmp-123-abcd", ".manifest.json.tmp-9-ffff", "config.toml.tmp", "results.json.tmp"]
    for name in keep + stale:
        (tmp_path / name).write_text("x")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / ".model.pt.tmp-1-link").symlink_to(victim)  # a link is removed, its target is not
    (tmp_path / ".dir.tmp-1-x").mkdir()  # folders are never removed
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted(stale + [".model.pt.tmp-1-link"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["victim", ".dir.tmp-1-x"])
    assert victim.read_text() == "precious"


# Files allowed to write without trainlab.store.atomic, and why.
WRITERS_ALLOWED = {
    "store/atomic.py": "the writer itself",
    "data/sources.py": "downloads stream into a fresh temporary folder, renamed into the cache whole",
    "data/npm.py": "unpacks into a fresh temporary folder, renamed into the cache whole",
    "data/folder/cache.py": "the decode cache is written into a fresh temporary folder, renamed whole",
    "data/folder/decode.py": "decodes into that fresh temporary folder (the cache's), renamed whole",
    "cli/launch.py": "a rank's error line, into the launcher's private temporary folder (0700)",
    "training/tensorboard.py": "TensorBoard's own event writer, into the run folder the lock protects",
}


# Files allowed to rename (never to write) inside a locked run folder, and why.
RENAMES_ALLOWED = {
    "training/resume.py": "metrics kept aside on restart",
    "store/manifest.py": "recovery sets unusable files aside",
}


def _writes(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in ("write_text", "write_bytes", "savefig", "save_file", "replace") and isinstance(f, ast.Attribute):
            if name == "replace" and not (isinstance(f.value, ast.Name) and f.value.id == "os"):
                continue  # str.replace
            if name == "savefig" and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "buf":
                continue  # into memory, then atomic_write_bytes
            found.append((node.lineno, name))
        elif name == "open" and len(node.args) >= 2:
            mode = node.args[1]
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+"):
                found.append((node.lineno, f"open(..., {mode.value!r})"))
    return found


def test_every_file_trainlab_writes_goes_through_the_atomic_writer():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in WRITERS_ALLOWED:
            continue
        for line, what in _writes(ast.parse(path.read_text())):
            if what == "replace" and rel in RENAMES_ALLOWED:
                continue
            offenders.append(f"{rel}:{line} {what}")
    assert not offenders, "writes that bypass trainlab.store.atomic: " + ", ".join(offenders)
