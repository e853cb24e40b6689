"""Fine-tuning (training.finetune): init_from from each kind of file, the mismatch table and
its record, prefix stripping, --init-strict, hostile init files, freeze / unfreeze exact
across a kill -9 and resume, body_lr_mult's groups, and train_per_class."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import SRC, TINY_RUN, cli_env, make_images, run_cli, tiny_dataset, train_tiny, write_idx_folder

import trainlab
from trainlab.data import from_arrays
from trainlab.errors import ConfigError
from trainlab.store.schema import load_checkpoint
from trainlab.training.finetune import frozen_names
from trainlab.training.init_weights import head_prefix


def _error_line(r) -> str:
    """The one error sentence of a CLI run (info lines before it are fine; no traceback)."""
    errors = [line for line in r.stderr.splitlines() if line.startswith("trainlab: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


def five_classes(seed: int = 3):
    tx, ty = make_images(600, num_classes=5, seed=seed)
    sx, sy = make_images(200, num_classes=5, seed=seed + 1)
    return from_arrays(tx, ty, sx, sy, name="five", classes=list("abcde"))


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A 10-class mlp-reg run (BatchNorm: buffers too) to start from."""
    runs = tmp_path_factory.mktemp("parent")
    return train_tiny(runs, data=tiny_dataset(), model="mlp-reg", name="parent").run_dir


def child(tmp_path, data=None, **values):
    return train_tiny(tmp_path, data=data if data is not None else five_classes(),
                      **{"model": "mlp-reg", "name": "child", **values})


def final_weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


# ---------------------------------------------------------------- each kind of file

def _check_partial(run_dir, source_state, epochs_frozen_body=False):
    meta = json.loads((run_dir / "meta.json").read_text())["finetune"]["parent"]
    assert meta["loaded"] and [n for n, *_ in meta["new_head"]] == ["9.weight", "9.bias"]
    assert meta["new_head"][0][1:] == [[10, 256], [5, 256]]
    ckpt = final_weights(run_dir)
    assert ckpt["callbacks"]["finetune"]["parent"] == meta  # the checkpoint records it too
    return meta


@pytest.mark.parametrize("kind", ["run", "checkpoint", "state_dict", "module_prefix", "compiled_prefix",
                                  "wrapped", "safetensors"])
def test_init_from_each_kind_loads_the_body_and_reinitializes_a_new_head(parent, tmp_path, kind):
    ckpt = load_checkpoint(parent / "model.pt")
    state = ckpt["model"]
    path = {"run": parent, "checkpoint": parent / "checkpoints" / "best.pt"}.get(kind, tmp_path / "w.pt")
    if kind == "state_dict":
        torch.save(state, path)
    elif kind == "module_prefix":  # as DDP saves
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif kind == "compiled_prefix":  # as torch.compile saves
        torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, path)
    elif kind == "wrapped":
        torch.save({"epoch": 3, "state_dict": state}, path)
    elif kind == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    # freeze the body so the loaded weights can be compared after training
    run = child(tmp_path, init_from=str(path), freeze="body").run_dir
    meta = _check_partial(run, state)
    assert meta["kind"] == {"run": "trainlab checkpoint", "checkpoint": "trainlab checkpoint",
                            "safetensors": "safetensors", "wrapped": "state_dict (under 'state_dict')"}.get(kind, "state_dict")
    source = load_checkpoint(parent / "checkpoints" / "best.pt")["model"] if kind == "checkpoint" else state
    trained = final_weights(run)["model"]
    for name in meta["loaded"]:  # frozen body, BatchNorm in eval mode: exactly the parent's values
        assert torch.equal(trained[name], source[name]), name
    assert meta["unexpected"] == [] and meta["missing"] == []


def test_the_table_names_missing_unexpected_and_mismatched(parent, tmp_path, caplog):
    state = dict(load_checkpoint(parent / "model.pt")["model"])
    state.pop("1.weight")
    state["extra.weight"] = torch.zeros(3)
    state["5.weight"] = torch.zeros(7, 7)  # a body tensor of another shape
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    caplog.set_level("INFO", logger="trainlab")
    meta = json.loads((child(tmp_path, init_from=str(path)).run_dir / "meta.json").read_text())["finetune"]["parent"]
    assert meta["missing"] == ["1.weight"] and meta["unexpected"] == ["extra.weight"]
    assert meta["shape_mismatch"] == [["5.weight", [7, 7], [256, 512]]]
    text = "\n".join(r.getMessage() for r in caplog.records)
    for word in ("loaded", "new head", "shape mismatch", "missing", "unexpected", "extra.weight"):
        assert word in text
    assert "keep their fresh initialization" in text


def test_init_strict_refuses_any_mismatch_in_one_sentence(parent, tmp_path):
    data = write_idx_folder(tmp_path / "five", num_classes=5)
    r = run_cli("train", "--dataset", f"idx:{data}", "--model", "mlp-reg", "--epochs", "1", "--batch-size", "32",
                "--val-size", "100", "--runs-dir", tmp_path / "runs", "--init-from", parent, "--init-strict")
    assert r.returncode == 2, r.stderr
    assert _error_line(r).startswith("trainlab: error: init_strict:") and "2 new head" in r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    same = run_cli("train", "--dataset", f"idx:{write_idx_folder(tmp_path / 'ten')}", "--model", "mlp-reg",
                   "--epochs", "1", "--batch-size", "32", "--val-size", "100", "--runs-dir", tmp_path / "runs",
                   "--init-from", parent, "--init-strict", "--quiet")
    assert same.returncode == 0, same.stderr


def test_other_input_channels_get_a_clear_message(tmp_path):
    rgb = train_tiny(tmp_path, data=from_arrays(*make_images(200, channels=3), *make_images(100, channels=3, seed=2)),
                     model="cnn-fast", name="rgb", val_size=50).run_dir
    with pytest.raises(ConfigError) as e:
        train_tiny(tmp_path, data=tiny_dataset(), model="cnn-fast", name="gray", init_from=str(rgb),
                   init_strict=True)
    assert "takes 3 input channel(s) and this model 1" in str(e.value)
    run = train_tiny(tmp_path, data=tiny_dataset(), model="cnn-fast", name="gray2", init_from=str(rgb)).run_dir
    parent = json.loads((run / "meta.json").read_text())["finetune"]["parent"]
    assert parent["shape_mismatch"][0][0] == "0.weight" and parent["loaded"]


def test_no_tensor_that_fits_and_a_missing_file_are_one_sentence(tmp_path):
    torch.save({"a.weight": torch.zeros(2, 2)}, tmp_path / "foreign.pt")
    with pytest.raises(ConfigError, match="no tensor of .* fits this model"):
        child(tmp_path, init_from=str(tmp_path / "foreign.pt"))
    with pytest.raises(ConfigError, match="no such file or folder"):
        child(tmp_path, init_from=str(tmp_path / "nothing.pt"))


# ---------------------------------------------------------------- hostile init files

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["module", "reduce", "plain_pickle"])
def test_hostile_init_files_are_refused_and_run_nothing(tmp_path, kind):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    if kind == "module":
        torch.save(torch.nn.Sequential(torch.nn.Linear(784, 10)), path)
    elif kind == "reduce":
        torch.save({"0.weight": torch.zeros(1), "x": _Payload(str(marker))}, path)
    else:
        path.write_bytes(pickle.dumps({"x": _Payload(str(marker))}))
    data = write_idx_folder(tmp_path / "d")
    r = run_cli("train", "--dataset", f"idx:{data}", "--epochs", "1", "--batch-size", "32", "--val-size", "100",
                "--runs-dir", tmp_path / "runs", "--init-from", path)
    assert r.returncode == 1, r.stderr
    _error_line(r)
    assert ("pickled model object" if kind == "module" else "nothing in it was run") in r.stderr
    assert not marker.exists()


# ---------------------------------------------------------------- resume never re-reads the init file

def test_resume_takes_the_weights_from_the_checkpoint_not_the_init_file(parent, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(load_checkpoint(parent / "model.pt")["model"], path)
    run = child(tmp_path, init_from=str(path)).run_dir
    recorded = final_weights(run)["callbacks"]["finetune"]["parent"]
    path.unlink()  # a resume that read it again would fail
    trainlab.resume(run, epochs=3, data=five_classes(), progress=False)
    after = final_weights(run)
    assert after["epoch"] == 3 and after["callbacks"]["finetune"]["parent"] == recorded


# ---------------------------------------------------------------- freeze, unfreeze, groups

def test_head_and_body_of_the_builtin_models():
    for name, head in (("mlp", "5"), ("mlp-reg", "9"), ("cnn", "12"), ("cnn-fast", "15"), ("resnet", "fc")):
        model = trainlab.build_model(name, (1, 28, 28), 10)
        assert head_prefix(model) == head, name
        body = frozen_names(model, "body")
        assert body and not any(n.startswith(head + ".") for n in body)
    model = trainlab.build_model("mlp", (1, 28, 28), 10)
    assert frozen_names(model, "1, 3.weight") == ["1.weight", "1.bias", "3.weight"]
    with pytest.raises(ConfigError, match="matches no parameter of this model; its top-level names are 1, 3, 5"):
        frozen_names(model, "blocks")
    with pytest.raises(ConfigError, match="freezes every parameter"):
        frozen_names(model, "1,3,5")


def test_frozen_parameters_and_batchnorm_statistics_do_not_move(parent, tmp_path):
    start = load_checkpoint(parent / "model.pt")["model"]
    run = child(tmp_path, data=tiny_dataset(), init_from=str(parent), freeze="1,2", epochs=2).run_dir
    end = final_weights(run)["model"]
    for k in ("1.weight", "1.bias", "2.weight", "2.bias", "2.running_mean", "2.running_var"):
        assert torch.equal(start[k], end[k]), k  # the first Linear + its BatchNorm (eval mode)
    assert not torch.equal(start["5.weight"], end["5.weight"]) and not torch.equal(start["6.running_mean"],
                                                                                   end["6.running_mean"])


def test_body_lr_mult_groups_keep_the_decay_split(tmp_path):
    run = child(tmp_path, body_lr_mult=0.1, weight_decay=0.01).run_dir
    groups = final_weights(run)["optimizer"]["param_groups"]
    assert [len(g["params"]) for g in groups] == [1, 1, 2, 6]  # head w, head b, body w, body b + BN
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0, 0.01, 0.0]
    assert groups[2]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)
    trainlab.resume(run, epochs=3, overrides={"weight_decay": 0.02}, allow_changes=True, data=five_classes(),
                    progress=False)
    groups = final_weights(run)["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.02, 0.0, 0.02, 0.0]


def test_finetune_keys_are_checked_alone(tmp_path):
    with pytest.raises(ConfigError, match="unfreeze_at = 2 needs freeze"):
        trainlab.train({"unfreeze_at": 2})
    with pytest.raises(ConfigError, match="freeze = 'a b' is invalid"):
        trainlab.train({"freeze": "a b"})
    with pytest.raises(ConfigError, match="init_strict is on but init_from is not set"):
        trainlab.train({"init_strict": True})
    with pytest.raises(ConfigError, match="train_per_class = -1 is invalid"):
        trainlab.train({"train_per_class": -1})


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import trainlab
    sys.path.insert(0, {tests!r})
    from conftest import tiny_dataset

    class KillMidEpoch(trainlab.Callback):
        def on_step_end(self, run):
            if run.state.epoch == {kill_epoch} and run.state.step == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    config = {config!r}
    if sys.argv[1] == "train":
        trainlab.train(config, data=tiny_dataset(), progress=False, callbacks=[KillMidEpoch()])
    elif sys.argv[1] == "straight":
        trainlab.train(config, data=tiny_dataset(), progress=False)
    else:
        trainlab.resume(sys.argv[2], data=tiny_dataset(), progress=False)
""")


@pytest.mark.parametrize("kill_epoch", [1, 2])  # killed in epoch 2 (before the unfreeze) or 3 (after)
def test_freeze_unfreeze_survives_kill_9_bitwise(parent, tmp_path, kill_epoch):
    config = {**TINY_RUN, "model": "mlp-reg", "epochs": 4, "init_from": str(parent), "freeze": "body",
              "unfreeze_at": 3, "body_lr_mult": 0.5, "ema": 0.9, "translate": 2}
    env = cli_env()

    def go(*args, runs):
        script = tmp_path / f"script-{runs.name}.py"
        script.write_text(KILL_SCRIPT.format(tests=str(SRC.parent / "tests"), kill_epoch=kill_epoch,
                                             config={**config, "name": "run", "runs_dir": str(runs)}))
        return subprocess.run([sys.executable, script, *args], env=env, timeout=300)

    assert go("straight", runs=tmp_path / "straight").returncode == 0
    killed = go("train", runs=tmp_path / "killed")
    assert killed.returncode == -signal.SIGKILL
    run = tmp_path / "killed" / "run"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == kill_epoch
    assert go("resume", str(run), runs=tmp_path / "killed").returncode == 0
    a = load_checkpoint(tmp_path / "straight" / "run" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert b["epoch"] == 4 and a["callbacks"]["finetune"] == b["callbacks"]["finetune"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    rows = [[json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]
            for p in (tmp_path / "straight" / "run", run)]
    assert [r["val_loss"] for r in rows[0]] == [r["val_loss"] for r in rows[1]]


# ---------------------------------------------------------------- train_per_class

def test_train_per_class_is_a_seeded_stratified_subset_and_recorded(tmp_path):
    a = child(tmp_path / "a", train_per_class=7, val_size=50)
    b = child(tmp_path / "b", train_per_class=7, val_size=50)
    sub = [json.loads((r.run_dir / "meta.json").read_text())["finetune"]["train_subset"] for r in (a, b)]
    assert sub[0] == sub[1] and sub[0]["counts"] == [7] * 5 and sub[0]["samples"] == 35
    assert final_weights(a.run_dir)["callbacks"]["finetune"]["train_subset"] == sub[0]
    assert a.history[0]["global_step"] == 2  # 35 images, batch 32: two steps an epoch
    other = child(tmp_path / "c", train_per_class=7, val_size=50, seed=1)
    assert json.loads((other.run_dir / "meta.json").read_text())["finetune"]["train_subset"] != sub[0]
    with pytest.raises(ConfigError, match="larger than the 35 training samples .train_per_class = 7."):
        child(tmp_path / "d", train_per_class=7, val_size=50, batch_size=64)


def test_inspect_shows_the_parent(parent, tmp_path):
    run = child(tmp_path, init_from=str(parent), freeze="body", unfreeze_at=2, train_per_class=10).run_dir
    r = run_cli("inspect", run)
    assert r.returncode == 0, r.stderr
    assert f"parent    {(parent / 'model.pt').resolve()} (trainlab checkpoint" in r.stdout
    assert "2 new head" in r.stdout and "at most 10 training images per class" in r.stdout
    assert "unfreeze at epoch 2" in r.stdout


# ---------------------------------------------------------------- tensors that cannot be loaded

def _first_weight(state: dict) -> str:
    return next(k for k, v in state.items() if v.dim() == 2)


HOSTILE_TENSORS = {
    "meta": (lambda t: torch.empty(t.shape, device="meta"), "is a meta tensor (a shape without values)"),
    "sparse": (lambda t: t.to_sparse(), "is a sparse_coo tensor, not a dense one"),
    "sparse-csr": (lambda t: t.to_sparse_csr(), "is a sparse_csr tensor, not a dense one"),
    "quantized": (lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8), "is a quantized tensor (qint8)"),
    "complex": (lambda t: t.to(torch.cfloat), "is complex64, where this model holds floating-point values"),
    "bool": (lambda t: t > 0, "is bool, where this model holds floating-point values"),
    "int": (lambda t: (t * 100).to(torch.int32), "is int32, where this model holds floating-point values"),
    "nan": (lambda t: t.clone().index_fill_(0, torch.tensor([0]), float("nan")), "is not finite"),
    "inf": (lambda t: t.clone().index_fill_(0, torch.tensor([1]), -float("inf")), "is not finite"),
}


@pytest.fixture(scope="module")
def init_idx(tmp_path_factory):
    return write_idx_folder(tmp_path_factory.mktemp("init-idx"), n_train=300, n_test=100)


@pytest.mark.parametrize("kind", sorted(HOSTILE_TENSORS) + ["buffer-dtype"])
def test_an_init_file_with_a_tensor_that_cannot_load_is_refused_by_its_key(parent, init_idx, tmp_path, cli, kind):
    """Names and shapes fit, the tensor does not: one sentence naming the key, exit 1, nothing
    loaded and no run folder (was: internal errors, or complex/bool/int values cast silently into
    the float weights, NaN loaded without a word and the divergence blamed on the rate)."""
    state = load_checkpoint(parent / "model.pt")["model"]
    if kind == "buffer-dtype":
        key = next(k for k in state if k.endswith("num_batches_tracked"))
        state[key], expected = state[key].float(), "is float32, where this model's int64 buffer needs the same type"
    else:
        key = _first_weight(state)
        make, expected = HOSTILE_TENSORS[kind]
        state[key] = make(state[key])
    path = tmp_path / f"{kind}.pt"
    torch.save(state, path)
    r = cli("train", "--dataset", f"idx:{init_idx}", "--model", "mlp-reg", "--epochs", "1", "--batch-size", "32",
            "--val-size", "100", "--runs-dir", tmp_path / "runs", "--name", "child", "--init-from", path, "--quiet")
    assert r.returncode == 1, r.stderr
    line = _error_line(r)
    assert line.startswith(f"trainlab: error: init_from: {key} in {path} {expected}"), line
    assert "nothing was loaded" in line and "internal error" not in r.stderr
    assert not (tmp_path / "runs" / "child").exists()


def test_an_init_file_with_a_safe_dtype_still_loads(parent, init_idx, tmp_path, cli):
    """float64 and float16 weights into float32 parameters are fine (copied, not refused)."""
    state = load_checkpoint(parent / "model.pt")["model"]
    key = _first_weight(state)
    state[key] = state[key].double()
    path = tmp_path / "f64.pt"
    torch.save(state, path)
    r = cli("train", "--dataset", f"idx:{init_idx}", "--model", "mlp-reg", "--epochs", "1", "--batch-size", "32",
            "--val-size", "100", "--runs-dir", tmp_path / "runs", "--name", "child", "--init-from", path, "--quiet")
    assert r.returncode == 0, r.stderr
