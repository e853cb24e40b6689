"""checkpoint.CheckpointDir at its edges: hostile names, manifests of every wrong shape,
a kill between any two steps of a save, a lost manifest, zip bombs, forged fields."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from torch import nn

import trainlab.store.manifest as mfmod
from trainlab.errors import StoreError, TrainlabError
from trainlab.store.checkpoint import make_checkpoint, sha256_file
from trainlab.store.manifest import CheckpointDir
from trainlab.store.safeload import CheckpointError, safe_load
from trainlab.store.schema import check_checkpoint, load_checkpoint

SPEC = {"name": "mlp", "kwargs": {"hidden": [4]}, "input_shape": [1, 2, 2], "num_classes": 2}


def ckpt(epoch: int = 1) -> dict:
    return make_checkpoint(nn.Linear(3, 2), model_spec=json.loads(json.dumps(SPEC)), epoch=epoch, global_step=10 * epoch,
                           history=[{"epoch": epoch}])


def training_ckpt(epoch: int = 1) -> dict:
    """A checkpoint with every field resume needs (made by a real Session in other tests)."""
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return make_checkpoint(net, model_spec=json.loads(json.dumps(SPEC)), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                           epoch=epoch, global_step=10 * epoch, history=[{"epoch": epoch}],
                           early_stopping={"best": 0.1, "best_epoch": epoch, "counter": 0},
                           rng={"torch": torch.get_rng_state(), "numpy": {}, "python": [3, [0], None]},
                           config={"model": "mlp", "dataset": "fashion-mnist"}, schedule={"epochs": 3}, mean=0.5, std=0.25)


# ---------------------------------------------------------------- names stay inside checkpoints/

@pytest.mark.parametrize("name", ["../../x.pt", "../x.pt", "/abs/x.pt", "sub/x.pt", ".hidden.pt",
                                  "x.pt/..", "", "last.pt\x00", "x" * 200 + ".pt", 7, "a\\b.pt"])
def test_manifest_names_outside_checkpoints_are_never_verified_or_loaded(tmp_path, name):
    outside = tmp_path / "x.pt"
    torch.save(ckpt(epoch=99), outside)
    folder = CheckpointDir(tmp_path / "run" / "checkpoints")
    folder.save("last.pt", ckpt(epoch=1), epoch=1, global_step=10)
    data = json.loads(folder.manifest_path.read_text())
    data["files"][str(name) if not isinstance(name, str) else name] = {
        "sha256": sha256_file(outside), "epoch": 99, "global_step": 990}
    folder.manifest_path.write_text(json.dumps(data))
    assert folder.newest_good()[0] == "last.pt"  # the outside file, though "newer", is never used
    assert name not in folder.manifest()["files"]


# ---------------------------------------------------------------- manifests of every wrong shape

BAD_MANIFESTS = {
    "a list": b"[]", "null": b"null", "a number": b"3", "files is a list": b'{"files": []}',
    "entry without sha256": b'{"files": {"last.pt": {"epoch": 1}}}',
    "string step": b'{"files": {"last.pt": {"sha256": "' + b"0" * 64 + b'", "global_step": "ten"}}}',
    "sha not hex": b'{"files": {"last.pt": {"sha256": "zz"}}}',
    "entry a string": b'{"files": {"last.pt": "abc"}}',
    "not UTF-8": b'{"files": {"\xff\xfe.pt": {}}}',
    "not JSON": b"{files",
    "empty": b"",
    "bad replaces": b'{"files": {"last.pt": {"sha256": "' + b"0" * 64 + b'", "replaces": 5}}}',
}


@pytest.mark.parametrize("what", sorted(BAD_MANIFESTS))
def test_a_manifest_of_the_wrong_shape_never_raises(tmp_path, what):
    folder = CheckpointDir(tmp_path)
    folder.manifest_path.write_bytes(BAD_MANIFESTS[what])
    (tmp_path / "last.pt").write_bytes(b"not checked yet")
    assert folder.newest_good() is None
    assert folder.verify("last.pt") == "not in the manifest"
    assert isinstance(folder.manifest()["files"], dict)


def test_a_folder_named_manifest_json_never_raises(tmp_path):
    folder = CheckpointDir(tmp_path)
    folder.manifest_path.mkdir()
    assert folder.newest_good() is None and folder.read_manifest()[1].startswith("unreadable")


# ---------------------------------------------------------------- a lost manifest costs nothing

@pytest.mark.parametrize("damage", ["deleted", "garbage", "wrong shape", "a folder"])
def test_a_lost_or_broken_manifest_is_rebuilt_from_the_files_that_load(tmp_path, damage):
    folder = CheckpointDir(tmp_path)
    folder.save("best.pt", training_ckpt(epoch=2), epoch=2, global_step=20)
    folder.save("last.pt", training_ckpt(epoch=3), epoch=3, global_step=30)
    (tmp_path / "epoch-0001.pt").write_bytes(b"PK\x03\x04 torn")  # does not load: left alone
    before = {n: (tmp_path / n).read_bytes() for n in ("best.pt", "last.pt", "epoch-0001.pt")}
    if damage == "deleted":
        folder.manifest_path.unlink()
    elif damage == "garbage":
        folder.manifest_path.write_bytes(b"\x00\xff garbage")
    elif damage == "wrong shape":
        folder.manifest_path.write_text("[]")
    else:
        folder.manifest_path.unlink()
        folder.manifest_path.mkdir()
    assert sorted(folder.recover()) == ["best.pt", "last.pt"]
    name, entry = folder.newest_good()
    assert (name, entry["epoch"], entry["global_step"]) == ("last.pt", 3, 30)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before  # nothing overwritten
    if damage != "deleted":  # the unusable manifest is kept aside, not deleted
        assert len(list(tmp_path.glob("manifest.json.unusable-*"))) == 1


def test_recover_leaves_a_good_manifest_alone(tmp_path):
    folder = CheckpointDir(tmp_path)
    folder.save("last.pt", training_ckpt(), epoch=1, global_step=10)
    before = folder.manifest_path.read_bytes()
    assert folder.recover() == []
    assert folder.manifest_path.read_bytes() == before


def test_files_that_do_not_verify_are_set_aside_never_deleted(tmp_path):
    folder = CheckpointDir(tmp_path)
    folder.save("last.pt", ckpt(), epoch=1, global_step=10)
    (tmp_path / "last.pt").write_bytes(b"altered")
    aside = folder.set_aside_unusable()
    assert (aside / "last.pt").read_bytes() == b"altered" and not (tmp_path / "last.pt").exists()


# ---------------------------------------------------------------- a kill between any two steps

class Killed(BaseException):
    pass


def test_a_kill_after_the_manifest_records_both_hashes_keeps_the_old_file_verified(tmp_path, monkeypatch):
    folder = CheckpointDir(tmp_path)
    folder.save("last.pt", ckpt(epoch=1), epoch=1, global_step=10)

    def killed(tmp, path):
        raise Killed

    monkeypatch.setattr(mfmod, "commit", killed)
    with pytest.raises(Killed):
        folder.save("last.pt", ckpt(epoch=2), epoch=2, global_step=20)
    name, entry = folder.newest_good()
    assert (name, entry["global_step"]) == ("last.pt", 10)
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_a_kill_after_the_rename_before_the_manifest_update_keeps_the_new_file(tmp_path, monkeypatch):
    """The fault of the first wave: the new last.pt was unverified and resume fell back to
    an older best.pt. Now the new file verifies: nothing since the previous save is lost."""
    folder = CheckpointDir(tmp_path)
    folder.save("best.pt", ckpt(epoch=1), epoch=1, global_step=10)
    folder.save("last.pt", ckpt(epoch=1), epoch=1, global_step=10)
    real = CheckpointDir._write_manifest
    calls = []

    def second_write_killed(self, files):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        real(self, files)

    monkeypatch.setattr(CheckpointDir, "_write_manifest", second_write_killed)
    with pytest.raises(Killed):
        folder.save("last.pt", ckpt(epoch=5), epoch=5, global_step=50)
    name, entry = folder.newest_good()
    assert (name, entry["global_step"]) == ("last.pt", 50)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 5


def test_an_altered_file_matching_neither_hash_is_unverified(tmp_path):
    folder = CheckpointDir(tmp_path)
    folder.save("last.pt", ckpt(epoch=1), epoch=1, global_step=10)
    (tmp_path / "last.pt").write_bytes(b"x" * 100)
    assert "does not match" in folder.verify("last.pt")


def test_a_symlink_in_checkpoints_is_never_verified(tmp_path):
    folder = CheckpointDir(tmp_path / "c")
    folder.save("last.pt", ckpt(epoch=1), epoch=1, global_step=10)
    outside = tmp_path / "outside.pt"
    (tmp_path / "c" / "last.pt").rename(outside)
    (tmp_path / "c" / "last.pt").symlink_to(outside)  # same bytes, same hash, but a link
    assert folder.verify("last.pt") == "a symbolic link, not a checkpoint file"


# ---------------------------------------------------------------- bounded loading

def test_a_compressed_record_zip_bomb_is_refused_before_inflating(tmp_path):
    buf = io.BytesIO()
    torch.save(ckpt(), buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w") as z:
        for info in src.infolist():
            z.writestr(info, src.read(info))
        z.writestr(zipfile.ZipInfo("archive/data/9"), b"\0" * (64 << 20), compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="compressed record"):
        safe_load(bomb)


def test_a_record_declared_larger_than_the_file_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    torch.save(ckpt(), path)
    data = bytearray(path.read_bytes())
    # the central directory's uncompressed size of the first record: offset 24 in its header
    first = data.find(b"PK\x01\x02")
    assert first > 0 and int.from_bytes(data[first + 24:first + 28], "little") < len(data)
    data[first + 24:first + 28] = (1 << 31).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="declares a record larger than the file"):
        safe_load(path)


# ---------------------------------------------------------------- one schema check at load

FORGED = {
    "no model_spec": lambda c: c.pop("model_spec"),
    "spec a string": lambda c: c.update(model_spec="mlp"),
    "spec name missing": lambda c: c["model_spec"].pop("name"),
    "shape of two dims": lambda c: c["model_spec"].update(input_shape=[28, 28]),
    "shape huge": lambda c: c["model_spec"].update(input_shape=[3, 1 << 20, 1 << 20]),
    "shape of bools": lambda c: c["model_spec"].update(input_shape=[True, 2, 2]),
    "zero classes": lambda c: c["model_spec"].update(num_classes=0),
    "kwargs a list": lambda c: c["model_spec"].update(kwargs=[1]),
    "model a list": lambda c: c.update(model=[1, 2]),
    "model of strings": lambda c: c.update(model={"w": "x"}),
    "mean a string": lambda c: c.update(mean="a"),
    "classes of ints": lambda c: c.update(classes=[1, 2]),
    "classes too few": lambda c: c.update(classes=["a"]),
    "no epoch": lambda c: c.pop("epoch"),
    "epoch a string": lambda c: c.update(epoch="3"),
    "no rng": lambda c: c.pop("rng"),
    "no config": lambda c: c.pop("config"),
    "config without dataset": lambda c: c["config"].pop("dataset"),
    "rng without torch": lambda c: c["rng"].pop("torch"),
    "optimizer a list": lambda c: c.update(optimizer=[]),
    "history a dict": lambda c: c.update(history={}),
    "schedule of zero epochs": lambda c: c.update(schedule={"epochs": 0}),
}


@pytest.mark.parametrize("what", sorted(FORGED))
def test_forged_fields_end_in_one_sentence(what):
    c = training_ckpt()
    c["classes"] = ["a", "b"]
    FORGED[what](c)
    with pytest.raises(TrainlabError) as e:
        check_checkpoint(c, "x.pt", training=True)
    assert "\n" not in str(e.value) and "x.pt" in str(e.value)


def test_a_complete_checkpoint_passes_the_schema_check():
    c = training_ckpt()
    assert check_checkpoint(c, "x.pt", training=True) is c


# ---------------------------------------------------------------- property-based (hypothesis)

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
                    max_leaves=20)
NAMES = st.sampled_from(["last.pt", "best.pt", "epoch-0001.pt", "../x.pt", "/x.pt", ".h.pt", "a/b.pt", "x"]) | st.text(max_size=12)
ENTRY = st.fixed_dictionaries({}, optional={"sha256": st.sampled_from(["0" * 64, "zz", 3]) | st.text(max_size=70),
                                            "global_step": JSON, "epoch": JSON, "replaces": JSON})


@pytest.fixture(scope="module")
def prop_dir(tmp_path_factory):
    folder = CheckpointDir(tmp_path_factory.mktemp("prop"))
    folder.save("last.pt", ckpt(epoch=1), epoch=1, global_step=10)
    return folder


@pytest.mark.fuzz
@given(doc=JSON | st.fixed_dictionaries({"files": st.dictionaries(NAMES, ENTRY | JSON, max_size=5)}))
def test_prop_any_manifest_parses_to_valid_entries_or_nothing(prop_dir, doc):
    good = prop_dir.manifest_path.read_bytes()
    try:
        prop_dir.manifest_path.write_text(json.dumps(doc, allow_nan=True))
        files, problem, dropped = prop_dir.read_manifest()
        assert all(mfmod.valid_name(n) and mfmod._valid_entry(e) for n, e in files.items())
        found = prop_dir.newest_good()
        assert found is None or (mfmod.valid_name(found[0]) and found[0] == "last.pt")
    finally:
        prop_dir.manifest_path.write_bytes(good)


@pytest.mark.fuzz
@given(raw=st.binary(max_size=300))
def test_prop_any_manifest_bytes_never_raise(prop_dir, raw):
    good = prop_dir.manifest_path.read_bytes()
    try:
        prop_dir.manifest_path.write_bytes(raw)
        prop_dir.read_manifest()
        prop_dir.newest_good()
    finally:
        prop_dir.manifest_path.write_bytes(good)


@pytest.fixture(scope="module")
def valid_bytes():
    buf = io.BytesIO()
    torch.save(training_ckpt(), buf)
    return buf.getvalue()


@pytest.mark.fuzz
@given(data=st.data())
def test_prop_mutated_checkpoints_load_or_raise_one_sentence(tmp_path_factory, valid_bytes, data):
    raw = bytearray(valid_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "zero-run"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del raw[at:]
            if not raw:
                break
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            raw[at:at + 64] = bytes(min(64, len(raw) - at))
    path = tmp_path_factory.mktemp("mut") / "c.pt"
    path.write_bytes(bytes(raw))
    try:
        obj = load_checkpoint(path)
    except TrainlabError as e:
        assert "\n" not in str(e)
        return
    try:  # it loaded: the schema check accepts it or says why in one sentence
        check_checkpoint(obj, path, training=True)
    except TrainlabError as e:
        assert "\n" not in str(e)


def test_two_kills_in_the_same_window_still_leave_a_verified_file(tmp_path, monkeypatch):
    """After a kill between steps 1 and 2 the entry is {new, replaces old} while the file is
    old; the next save must take the hash the file matches, or a second kill loses it."""
    folder = CheckpointDir(tmp_path)
    folder.save("last.pt", ckpt(epoch=1), epoch=1, global_step=10)

    def killed(tmp, path):
        raise Killed

    monkeypatch.setattr(mfmod, "commit", killed)
    for epoch in (2, 3):
        with pytest.raises(Killed):
            folder.save("last.pt", ckpt(epoch=epoch), epoch=epoch, global_step=10 * epoch)
        name, entry = folder.newest_good()
        assert (name, entry["global_step"]) == ("last.pt", 10)


@pytest.mark.parametrize("damage", ["uppercase sha", "empty files table", "entry dropped"])
def test_a_malformed_or_missing_entry_is_repaired_from_the_file(tmp_path, damage):
    folder = CheckpointDir(tmp_path)
    folder.save("last.pt", training_ckpt(epoch=3), epoch=3, global_step=30)
    data = json.loads(folder.manifest_path.read_text())
    if damage == "uppercase sha":
        data["files"]["last.pt"]["sha256"] = data["files"]["last.pt"]["sha256"].upper()
    elif damage == "empty files table":
        data["files"] = {}
    else:
        data["files"].pop("last.pt")
    folder.manifest_path.write_text(json.dumps(data))
    assert folder.newest_good() is None
    assert folder.recover() == ["last.pt"]
    assert folder.newest_good()[1]["global_step"] == 30


def test_a_hash_that_contradicts_its_file_is_not_repaired(tmp_path):
    folder = CheckpointDir(tmp_path)
    folder.save("last.pt", training_ckpt(epoch=3), epoch=3, global_step=30)
    data = bytearray((tmp_path / "last.pt").read_bytes())
    data[-200] ^= 1  # the file changed after its hash was recorded: that is what the hash is for
    (tmp_path / "last.pt").write_bytes(bytes(data))
    assert folder.recover() == [] and folder.newest_good() is None


def test_a_linked_checkpoints_folder_is_refused(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    (tmp_path / "checkpoints").symlink_to(real)
    with pytest.raises(StoreError, match="symbolic link"):
        CheckpointDir(tmp_path / "checkpoints").save("last.pt", ckpt(), epoch=1, global_step=10)
    assert not list(real.iterdir())
