"""TensorBoard logging, read back with TensorBoard's own event reader."""

from __future__ import annotations

import sys

import pytest
from conftest import train_tiny

# part of the test set-up (the `test` extra): in CI this must import, not skip
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from trainlab.errors import TrainlabError
from trainlab.store import runs


def read_events(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


EPOCH_TAGS = {"loss/train": "train_loss", "loss/val": "val_loss", "acc/train": "train_acc", "acc/val": "val_acc",
              "lr": "lr", "time/train_seconds": "train_seconds"}
# only with test_every_epoch, and tagged for what they are
TEST_TAGS = {"loss/test_not_for_selection": "test_loss", "acc/test_not_for_selection": "test_acc"}


@pytest.mark.parametrize("every_epoch", [False, True])
def test_a_tensorboard_run_writes_every_epoch_scalar_and_the_confusion_image(tiny_data, tmp_path, every_epoch):
    """`tensorboard = true` in a real run: the events in the run folder, read back with
    TensorBoard's own reader, hold one value per epoch of each metric, the one final test
    accuracy and the final matrix; per-epoch test scalars only when asked, tagged not for selection."""
    # float32: the last epoch's test accuracy is then exactly the final model's (below)
    result = train_tiny(tmp_path, tiny_data, epochs=3, precision="32", tensorboard=True,
                        **({"test_every_epoch": True} if every_epoch else {}))
    events = list(result.run_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1, events  # in the run folder itself: `tensorboard --logdir runs` lists it
    acc = read_events(result.run_dir)
    tags = {**EPOCH_TAGS, **(TEST_TAGS if every_epoch else {})}
    assert set(acc.Tags()["scalars"]) == set(tags) | {"acc/test_final"}
    history = result.history
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for tag, key in tags.items():
        scalars = acc.Scalars(tag)
        assert [e.step for e in scalars] == [1, 2, 3], tag
        assert [e.value for e in scalars] == pytest.approx([r[key] for r in history], rel=1e-6), tag
    final = acc.Scalars("acc/test_final")
    assert [e.step for e in final] == [3] and final[0].value == pytest.approx(result.test_accuracy, abs=1e-6)
    if every_epoch:
        assert acc.Scalars("acc/test_not_for_selection")[-1].value == pytest.approx(result.test_accuracy, abs=1e-6)
    images = acc.Images("confusion_matrix")
    assert [i.step for i in images] == [3]  # logged once, at the end, with the final epoch as step
    assert images[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and images[0].width > 100


def test_without_tensorboard_a_run_writes_no_events(tiny_data, tmp_path):
    result = train_tiny(tmp_path, tiny_data, epochs=1)
    assert not list(result.run_dir.rglob("events.out.tfevents.*"))


def test_epoch_scalars_and_confusion_image(tiny_data, tmp_path):
    from trainlab.training.tensorboard import TensorBoardLogger

    result = train_tiny(tmp_path, tiny_data, test_every_epoch=True)
    rows = runs.read_metrics(result.run_dir)
    rows.insert(1, {"event": "resume", "from": "last.pt", "epoch": 1, "step": 0})  # a marker: skipped
    with TensorBoardLogger(result.run_dir) as tb:
        for row in rows:
            tb.log_epoch(row)
        tb.log_confusion(result.test["confusion_matrix"], tiny_data.classes, step=2)

    acc = read_events(result.run_dir)
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "loss/test_not_for_selection", "acc/train", "acc/val",
            "acc/test_not_for_selection", "lr"} <= tags
    history = result.history
    for tag, key in (("loss/train", "train_loss"), ("acc/test_not_for_selection", "test_acc"), ("loss/val", "val_loss"),
                     ("lr", "lr")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([r[key] for r in history], rel=1e-6)
    assert acc.Tags()["images"] == ["confusion_matrix"]
    image = acc.Images("confusion_matrix")[0]
    assert image.step == 2 and image.width > 100 and image.height > 100
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_from_a_figure(tmp_path):
    from trainlab.plots import confusion_figure
    from trainlab.training.tensorboard import TensorBoardLogger

    fig = confusion_figure([[3, 1], [0, 4]], ["a", "b"])
    with TensorBoardLogger(tmp_path) as tb:
        tb.log_confusion(fig, step=5, tag="cm/test")
    assert read_events(tmp_path).Images("cm/test")[0].step == 5


def test_missing_tensorboard_says_how_to_install(monkeypatch, tmp_path):
    from trainlab.training.tensorboard import TensorBoardLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(TrainlabError, match=r"pip install trainlab\[tensorboard\]"):
        TensorBoardLogger(tmp_path)


def test_per_step_loss_and_the_hparams_view(tiny_data, tmp_path):
    """log_every = 4: the train loss every 4 optimizer steps (the mean of each window: the
    windows of an epoch average to its train loss), and the config in the HParams view."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    result = train_tiny(tmp_path, tiny_data, tensorboard=True, log_every=4, lr=0.003)
    acc = read_events(result.run_dir)
    steps = acc.Scalars("loss/train_step")
    rows = result.history
    assert [e.step for e in steps] == list(range(4, rows[-1]["global_step"] + 1, 4))
    per_epoch = rows[0]["global_step"] // 4
    for i, row in enumerate(rows):
        window = [e.value for e in steps[i * per_epoch:(i + 1) * per_epoch]]
        assert sum(window) / len(window) == pytest.approx(row["train_loss"], rel=1e-5)
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["lr"].number_value == pytest.approx(0.003) and hp["model"].string_value == "mlp"
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in exp.metric_infos} == {"loss/val", "acc/val", "loss/train", "acc/train"}
