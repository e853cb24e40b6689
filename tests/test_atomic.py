"""The one atomic writer: a planted link or file never redirects a write, a failure leaves
the old file, stale temporaries are cleaned, and every writer in trainlab goes through it."""

from __future__ import annotations

import ast
import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import refuse_writes_under

import trainlab.store.atomic as atomic
from trainlab.errors import StoreError
from trainlab.store.atomic import append_line, atomic_write_bytes, install_folder, remove_stale_temps

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
    "data/sources.py": "downloads stream into a staged folder, installed whole by atomic.install_folder",
    "data/folder/cache.py": "the decode cache is written into a staged folder, installed by install_folder",
    "data/folder/decode.py": "decodes into that fresh temporary folder (the cache's), renamed whole",
    "data/folder/cache_locks.py": "a damaged or superseded cache folder renamed aside whole before it is removed",
    "data/folder/mapped_splits.py": "the mapped splits are written into a staged folder, installed by install_folder",
    "cli/launch.py": "a rank's error line, into the launcher's private temporary folder (0700)",
}


# Files allowed to rename (never to write) inside a locked run folder, and why.
RENAMES_ALLOWED = {
    "training/resume.py": "metrics kept aside on restart",
    "store/manifest.py": "recovery sets unusable files aside",
    "training/rerun.py": "the old run folder set aside beside itself, under its lock",
}


def _writes(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in ("write_text", "write_bytes", "savefig", "save_file", "replace", "rename") and \
                isinstance(f, ast.Attribute):
            if name in ("replace", "rename") and not (isinstance(f.value, ast.Name) and f.value.id == "os"):
                continue  # str.replace, or a Path's (none in src)
            name = "replace" if name == "rename" else name  # a hand-written folder install is one
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


def test_every_allowance_is_still_needed():
    # an entry that allows nothing (the writer moved, or now uses store.atomic) is dropped
    for rel in [*WRITERS_ALLOWED, *RENAMES_ALLOWED]:
        path = SRC / rel
        assert path.is_file(), f"{rel} is allow-listed but gone"
        assert _writes(ast.parse(path.read_text())), f"{rel} is allow-listed but writes nothing"


def test_the_checker_sees_hand_written_folder_renames():
    found = _writes(ast.parse("import os\nos.rename(tmp, final)\nos.replace(tmp, final)\n'a'.replace('a', 'b')\n"))
    assert found == [(2, "replace"), (3, "replace")]


# ---------------------------------------------------------------- install_folder


def _staged(parent: Path, text: str) -> Path:
    staged = parent / f".staged-{text}"
    staged.mkdir()
    (staged / "data.txt").write_text(text)
    return staged


def test_a_staged_folder_is_installed_whole(tmp_path):
    staged = _staged(tmp_path, "ours")
    assert install_folder(staged, tmp_path / "final") is True
    assert (tmp_path / "final" / "data.txt").read_text() == "ours" and not staged.exists()


def test_the_loser_keeps_the_winners_folder(tmp_path):
    assert install_folder(_staged(tmp_path, "winner"), tmp_path / "final")
    loser = _staged(tmp_path, "loser")
    assert install_folder(loser, tmp_path / "final") is False
    assert (tmp_path / "final" / "data.txt").read_text() == "winner"
    assert (loser / "data.txt").read_text() == "loser"  # left for its owner to remove


def test_an_incomplete_folder_is_replaced_and_nothing_is_left_aside(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "half.txt").write_text("interrupted")
    complete = lambda folder: (folder / "data.txt").is_file()  # noqa: E731
    assert install_folder(_staged(tmp_path, "ours"), final, complete) is True
    assert sorted(p.name for p in final.iterdir()) == ["data.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_a_file_or_dangling_link_at_the_place_is_replaced(tmp_path):
    (tmp_path / "a").write_text("not a folder")
    (tmp_path / "b").symlink_to(tmp_path / "nowhere")
    for name in ("a", "b"):
        assert install_folder(_staged(tmp_path, name), tmp_path / name) is True
        assert (tmp_path / name / "data.txt").read_text() == name and not (tmp_path / name).is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_many_installers_at_once_leave_one_whole_copy(tmp_path):
    final = tmp_path / "final"
    staged = [_staged(tmp_path, str(i)) for i in range(8)]
    start = threading.Barrier(len(staged))

    def install(folder):
        start.wait()
        return install_folder(folder, final)

    with ThreadPoolExecutor(len(staged)) as pool:
        won = list(pool.map(install, staged))
    assert won.count(True) == 1
    assert (final / "data.txt").read_text() == str(won.index(True))


def test_a_failed_install_with_nothing_in_place_raises(tmp_path):
    with pytest.raises(OSError):
        install_folder(tmp_path / "never-staged", tmp_path / "final")
    assert not (tmp_path / "final").exists()
