"""Foreign checkpoints in (training.init_keys, finetune.read_init): Lightning's .ckpt, prefixed
state_dicts, Hugging Face folders, --init-map and --reinit-head."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch
from conftest import make_images, run_cli, train_tiny, write_idx_folder

from trainlab import models
from trainlab.errors import ConfigError
from trainlab.store.safeload import CheckpointError
from trainlab.training.init_weights import init_weights
from trainlab.training.init_keys import best_mapping, parse_init_map


def _mlp(seed=0):
    torch.manual_seed(seed)
    return models.build("mlp", (1, 28, 28), 10)


def _same(model, state, names):
    own = model.state_dict()
    return all(torch.equal(own[n], state[n]) for n in names)


def test_a_real_lightning_checkpoint_loads_every_tensor_and_names_the_prefix(tmp_path, caplog):
    lightning = pytest.importorskip("lightning", reason="the optional lightning package is not installed")
    from torch.utils.data import DataLoader, TensorDataset

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _mlp(1)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = make_images(64, seed=2)
    loader = DataLoader(TensorDataset(torch.as_tensor(x).float() / 255, torch.as_tensor(y).long()), batch_size=16)
    trainer = lightning.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    module = Module()
    trainer.fit(module, loader)
    ckpt = tmp_path / "lightning.ckpt"
    trainer.save_checkpoint(ckpt)
    fresh = _mlp(5)
    with caplog.at_level(logging.INFO, logger="trainlab"):
        record = init_weights(fresh, ckpt)
    theirs = {k.removeprefix("model."): v for k, v in module.state_dict().items()}
    assert record["kind"] == "Lightning checkpoint" and record["key_mapping"] == "the prefix 'model.' stripped"
    assert len(record["loaded"]) == len(theirs) == 6 and not record["missing"] and not record["unexpected"]
    assert _same(fresh, theirs, theirs)
    assert "keys matched with the prefix 'model.' stripped" in caplog.text


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "net.", "backbone.", "model.module.", "model.net."])
def test_the_usual_prefixes_are_found(tmp_path, prefix):
    source = _mlp(1).state_dict()
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {prefix + k: v for k, v in source.items()}}, path)
    fresh = _mlp(2)
    record = init_weights(fresh, path)
    assert len(record["loaded"]) == 6 and _same(fresh, source, source)


def test_a_prefix_the_model_has_and_the_file_lacks_is_added():
    own = {"net.0.weight": torch.zeros(3, 2)}
    mapped, what, n = best_mapping(own, {"0.weight": torch.ones(3, 2)})
    assert n == 1 and what == "the prefix 'net.' added" and set(mapped) == {"net.0.weight"}


def test_names_no_rule_finds_are_said_and_init_map_maps_them(tmp_path):
    source = _mlp(1).state_dict()
    path = tmp_path / "w.pt"
    torch.save({f"layers.{k}": v for k, v in source.items()}, path)  # "layers.1.weight" vs "1.weight": found
    assert len(init_weights(_mlp(), path)["loaded"]) == 6
    torch.save({k.replace(".", "_w.", 1): v for k, v in source.items()}, path)  # "1_w.weight": no prefix rule
    with pytest.raises(ConfigError, match="no tensor matched by name: the file's keys look like '1_w.weight'.*"
                                          "--init-map OLD=NEW"):
        init_weights(_mlp(), path)
    mapping = ",".join(f"{i}_w.={i}." for i in (1, 3, 5))
    fresh = _mlp(3)
    assert len(init_weights(fresh, path, init_map=mapping)["loaded"]) == 6 and _same(fresh, source, source)


def test_reinit_head_keeps_a_fresh_head_of_the_same_class_count(tmp_path):
    source = _mlp(1).state_dict()
    path = tmp_path / "w.pt"
    torch.save(source, path)
    fresh = _mlp(7)
    own_head = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("5.")}
    record = init_weights(fresh, path, reinit_head=True)
    assert sorted(r[0] for r in record["new_head"]) == ["5.bias", "5.weight"] and len(record["loaded"]) == 4
    assert _same(fresh, own_head, own_head) and _same(fresh, source, ["1.weight", "3.weight"])


def test_a_hugging_face_folder_gives_its_model_safetensors(tmp_path):
    from safetensors.torch import save_file

    source = _mlp(1).state_dict()
    (tmp_path / "hf").mkdir()
    save_file({f"model.{k}": v.contiguous() for k, v in source.items()}, tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "config.json").write_text("{}")
    fresh = _mlp(2)
    record = init_weights(fresh, tmp_path / "hf")
    assert record["kind"] == "safetensors" and len(record["loaded"]) == 6 and _same(fresh, source, source)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_hostile_lightning_container_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _mlp().state_dict(), "pytorch-lightning_version": "2.5",
                     "hyper_parameters": _Evil(str(marker))}, f)
    with pytest.raises(CheckpointError):
        init_weights(_mlp(), path)
    torch.save({"state_dict": _mlp().state_dict(), "hyper_parameters": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError):
        init_weights(_mlp(), path)
    assert not marker.exists()


@pytest.mark.parametrize("text, ok", [("a.=b.", True), ("a.=", True), ("a.=b.,c.=d.", True), ("=b.", False),
                                      ("nothing", False), ("a.=b.,", False)])
def test_init_map_values(text, ok):
    if ok:
        assert parse_init_map(text)
    else:
        with pytest.raises(ConfigError, match="init_map"):
            parse_init_map(text)


def test_the_cli_takes_init_map_and_reinit_head_and_refuses_them_without_init_from(tmp_path, tiny_data):
    parent = train_tiny(tmp_path / "runs", tiny_data, epochs=1)
    idx = write_idx_folder(tmp_path / "idx", n_train=200, n_test=50)
    common = ("train", "--dataset", f"idx:{idx}", "--val-size", "50", "--epochs", "1", "--threads", "1",
              "--batch-size", "32",
              "--runs-dir", tmp_path / "runs", "--quiet")
    alone = run_cli(*common, "--reinit-head")
    assert alone.returncode == 2 and "init_from is not set" in alone.stderr
    done = run_cli(*common, "--name", "child", "--init-from", parent.run_dir, "--reinit-head", "--init-map", "x.=y.")
    assert done.returncode == 0, done.stderr
    assert "new head" in done.stderr


def _many_keys(n: int) -> tuple[dict, dict]:
    """`n` tensors under 200+ distinct prefixes on each side, the file's under 'model.backbone.'."""
    t = torch.zeros(1)
    own = {f"layer{i % 300}.block{i}.weight": t for i in range(n)}
    return own, {f"model.backbone.layer{i % 300}.block{i}.weight": t for i in range(n)}


def test_best_mapping_builds_only_the_chosen_candidate():
    """Memory grows with the keys, not keys x candidates: 5,000 keys under 300 prefixes (400
    candidate mappings) once held every candidate's dict at the same time (about 300 MB)."""
    import tracemalloc

    own, state = _many_keys(5000)
    tracemalloc.start()
    try:
        chosen, what, n = best_mapping(own, state)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (what, n) == ("the prefix 'model.backbone.' stripped", 5000) and set(chosen) == set(own)
    assert peak < 20 << 20, peak


@pytest.mark.parametrize("file_prefix,own_prefix,want", [
    ("", "", "names as they are"), ("model.", "", "the prefix 'model.' stripped"),
    ("", "encoder.", "the prefix 'encoder.' added"), ("a.b.c.", "", "the prefix 'a.b.c.' stripped")])
def test_best_mapping_scores_as_building_every_candidate_would(file_prefix, own_prefix, want):
    t, u = torch.zeros(2), torch.zeros(3)
    names = ["fc.weight", "fc.bias", "conv.0.weight", "conv.1.bias", "x"]
    own = {own_prefix + k: (u if k == "x" else t) for k in names}
    state = {file_prefix + k: t for k in names}  # "x" is there under its name but of another shape
    chosen, what, n = best_mapping(own, state)
    assert (what, n) == (want, 4)
    assert {k for k in chosen if k in own and chosen[k].shape == own[k].shape} == {own_prefix + k for k in names[:4]}


def test_an_init_map_of_thousands_of_renames_is_refused():
    """Each rename passes over every key: 5,000 renames on 20,000 keys took 19 s."""
    with pytest.raises(ConfigError, match="more than 64"):
        parse_init_map(",".join(f"x{i}.=y{i}." for i in range(5000)))
    assert len(parse_init_map(",".join(f"x{i}.=y{i}." for i in range(64)))) == 64
