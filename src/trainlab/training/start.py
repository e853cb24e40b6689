"""train(): one call starts a run, or, when its named folder already holds this run, continues
it or reports it finished (training.rerun decides, training.resume continues)."""

from __future__ import annotations

import logging

from torch.utils.data import DataLoader

from trainlab import models
from trainlab.config import Config, resolve
from trainlab.data import Dataset
from trainlab.errors import ConfigError
from trainlab.training import distributed, memory, rerun, runtime
from trainlab.training.callbacks import Callback
from trainlab.training.result import TrainResult
from trainlab.training.resume import resume
from trainlab.training.session import Session

log = logging.getLogger("trainlab")


def train(config: Config | dict | None = None, *, data: Dataset | None = None, progress: bool | None = None,
          callbacks: list[Callback] = (), restart: bool = False, model=None, transforms=()) -> TrainResult:
    """Train one run as configured; returns the history and the final test summary.

    `callbacks` (trainlab.Callback subclasses) run around the loop and keep their state in
    every checkpoint. progress=None shows a progress bar and one line per epoch (unless the
    config says quiet); False shows nothing. A named run whose folder already holds this run
    is continued (or reported finished) instead: see training.rerun; `restart` starts it over,
    keeping the old folder aside.

    `model`: your own nn.Module, or a class or function that returns one (called with what
    trainlab knows: num_classes, in_chans / in_channels / input_shape when it takes them). An
    importable class or function is recorded as module:function, so every later command rebuilds
    it; an instance (or a local function) is recorded as instance:NAME, and evaluate_run /
    load_model / resume then take it again as model=.

    `transforms`: callables t(x, y, generator) -> (x, y) on each training batch, on its device, after
    the recipe's own (trainlab.data.batch_transforms); pass the same ones to resume()."""
    if data is not None and not isinstance(data, Dataset):
        what = "a torch DataLoader" if isinstance(data, DataLoader) else type(data).__name__
        raise ConfigError(f"train(data=...) takes a trainlab Dataset, not {what}: make one with "
                          "trainlab.from_arrays(train_x, train_y, test_x, test_y), or train your DataLoader with "
                          "trainlab.fit(model, optimizer, loader, ...), which takes it as it is")
    values = config.to_dict() if isinstance(config, Config) else dict(config or {})
    given = None
    if model is not None:
        values["model"], given = models.given_model(model)
    cfg = resolve(values)  # validated either way
    if data is not None:  # the run records what reloads its data ("arrays:" = only data= can)
        cfg = cfg.with_changes(dataset=data.spec or f"arrays:{data.name or 'arrays'}")
    try:
        return _train(cfg, data, progress, callbacks, restart, given, transforms)
    except (RuntimeError, MemoryError) as e:
        if not memory.is_out_of_memory(e):
            raise
        raise memory.out_of_memory_error(cfg.model, cfg.train.batch_size, "training", "earlier files and checkpoints are intact") from None


def _train(cfg: Config, data, progress, callbacks, restart, given=None, transforms=()) -> TrainResult:
    with runtime.library_output(progress, cfg.quiet):
        cfg = rerun.elastic_name(cfg)
        decision = rerun.decide(cfg, restart)
        if decision["action"] == "finished":
            return rerun.finished_result(cfg, decision)
        if decision["action"] == "resume":
            if distributed.context().is_main:
                log.info("re-run: %s already holds this run: continuing it from its newest checkpoint "
                         "(rerun = refuse, or --restart, to do otherwise)", decision["path"])
            own = (cfg.model.partition(":")[0],) if ":" in cfg.model else ()  # named on this command
            return resume(decision["path"], epochs=cfg.train.epochs, data=data, progress=progress,
                          callbacks=callbacks, allow_import=own, reason="rerun", model=given, transforms=transforms)
        session = Session(cfg, data, progress=progress, callbacks=callbacks, model=given, transforms=transforms)
        session.start_run_dir()
        try:
            return session.run()
        except (RuntimeError, MemoryError) as e:
            if not memory.is_out_of_memory(e):
                raise
            session.release()  # the lock first: the folder may go with it
            if session.dist.is_main and memory.discard_unstarted(session.run_dir):  # else it blocks a re-run
                kept = "it had saved no checkpoint, so its run folder was removed"
            else:
                kept = f"the checkpoints in {session.run_dir} are intact"
            raise memory.out_of_memory_error(cfg.model, cfg.train.batch_size, "training", kept) from None
        finally:
            session.release()
