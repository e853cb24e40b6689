"""Reading a run's records back: metrics.jsonl and the JSON files, bounded and type-checked.

Every reader of a run folder goes through here, so a hostile or damaged file (400,000 rows,
a string epoch, NaN, a 1 GB line, bytes that are not UTF-8) ends in one sentence naming the
file, never in an internal error, minutes of parsing or gigabytes of memory. The bounds are
what a real run can hold: one row per epoch its config.toml allows, plus marker rows.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from trainlab.config import load_toml
from trainlab.errors import ConfigError, TrainlabError

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"

MAX_EPOCHS = 100_000  # the config's own limit on `epochs`
MARKER_ROWS = 1_000  # resume / fork / restart / override markers a long-lived run may gather
MAX_LINE_BYTES = 16 << 10  # a row is a few hundred bytes; an override marker a few more
MEAN_ROW_BYTES = 2 << 10  # the file-size bound per allowed row (real rows are ~300 bytes)
MAX_JSON_BYTES = 32 << 20
MAX_VALIDATIONS_PER_EPOCH = 1_000  # mid-epoch validation rows (val_every): training.build refuses more  # meta.json / results.json: a confusion matrix of ~1,000 classes fits

# metrics a row written by trainlab holds: a finite number or null, nothing else
ROW_NUMBERS = ("step", "global_step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
               "test_acc", "seconds", "train_seconds")


class _NonFinite(ValueError):
    pass


def _no_constant(name: str):
    raise _NonFinite(name)  # NaN / Infinity / -Infinity: trainlab writes null instead


def config_epochs(run_dir: Path) -> int:
    """The epochs the run's config.toml allows (the upper bound when it is unreadable)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():  # absent, or a FIFO that would block the read
        return MAX_EPOCHS
    try:
        epochs = load_toml(path).get("epochs")
    except ConfigError:
        return MAX_EPOCHS
    if isinstance(epochs, int) and not isinstance(epochs, bool) and 1 <= epochs <= MAX_EPOCHS:
        return epochs
    return MAX_EPOCHS


def _validates_mid_epoch(run_dir: Path) -> bool:
    """Whether the run's config.toml asks for mid-epoch validation rows (unreadable: assume so)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return True
    try:
        every = load_toml(path).get("val_every", 0)
    except ConfigError:
        return True
    return every != 0


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _row_problem(row) -> str | None:
    """Why `row` is not a metrics row trainlab writes, or None."""
    if not isinstance(row, dict):
        return "not a JSON object"
    epoch = row.get("epoch")
    if "event" in row:
        if not isinstance(row["event"], str):
            return "its event is not a name"
        if "epoch" in row and not (_is_number(epoch) and isinstance(epoch, int) and 0 <= epoch <= MAX_EPOCHS):
            return f"epoch {_show(epoch)} is not a whole number from 0 to {MAX_EPOCHS}"
        return None
    if not (_is_number(epoch) and isinstance(epoch, int) and 0 <= epoch <= MAX_EPOCHS):
        return f"epoch {_show(epoch)} is not a whole number from 0 to {MAX_EPOCHS}"
    for key in ROW_NUMBERS:
        if row.get(key) is not None and not _is_number(row[key]):
            return f"{key} {_show(row[key])} is not a number"
    return None


def _open_regular(path: Path):
    """`path` opened for reading, or None when absent; a FIFO or device (which could block or
    never end) is refused by name, without blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise TrainlabError(f"{path} is a folder, not a file: the run folder is damaged; move it aside") from None
    except OSError as e:
        raise TrainlabError(f"{path} cannot be read ({e.strerror}); check its permissions") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TrainlabError(f"{path} is not a regular file: the run folder is damaged; move it aside")
    return os.fdopen(fd, "rb")


def _show(x) -> str:
    text = json.dumps(x) if not isinstance(x, float) else repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def read_metrics(run_dir: str | Path, max_epochs: int | None = None) -> list[dict]:
    """The rows of runs/<name>/metrics.jsonl ([] when absent), or one sentence when the file is
    not what trainlab writes. A torn last line (a process killed mid-write) is left out."""
    path = Path(run_dir) / METRICS_FILE
    epochs = max_epochs if max_epochs is not None else config_epochs(Path(run_dir))
    per_epoch = 1 + MAX_VALIDATIONS_PER_EPOCH if max_epochs is None and _validates_mid_epoch(Path(run_dir)) else 1
    max_rows = epochs * per_epoch + MARKER_ROWS
    max_bytes = max_rows * MEAN_ROW_BYTES

    def bad(why: str, line: int | None = None):
        where = f" (line {line}: {why})" if line else f" ({why})"
        return TrainlabError(f"{path} is not a metrics log trainlab writes{where}: the file is damaged "
                             "or not this run's; move it aside (the checkpoints and results stay usable) "
                             "or leave the run out")

    f = _open_regular(path)
    if f is None:
        return []
    rows: list[dict] = []
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise bad(f"{size:,} bytes, more than {epochs:,} epochs and their markers can fill")
        n = 0
        read = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            n += 1
            read += len(raw)
            if read > max_bytes:  # a file that grows (or is not a regular file) while read
                raise bad(f"over {max_bytes:,} bytes, more than {epochs:,} epochs and their markers can fill")
            if len(raw) > MAX_LINE_BYTES:
                raise bad(f"a line over {MAX_LINE_BYTES:,} bytes", n)
            torn = not raw.endswith(b"\n")
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
            except UnicodeDecodeError:
                if torn:
                    continue
                raise bad("bytes that are not UTF-8 text", n) from None
            except _NonFinite as e:
                raise bad(f"{e} where a number or null belongs", n) from None
            except (json.JSONDecodeError, RecursionError, ValueError):
                if torn:
                    continue  # the last line of a killed process: the rows before it stand
                raise bad("not JSON", n) from None
            problem = _row_problem(row)
            if problem:
                raise bad(problem, n)
            rows.append(row)
            if len(rows) > max_rows:
                raise bad(f"over {max_rows:,} rows, more than {epochs:,} epochs and their markers")
    return rows


def read_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES):
    """A run's JSON file (meta.json, results.json, ...), bounded in size; non-finite numbers
    (which trainlab never writes) are refused by name."""
    path = Path(path)
    f = _open_regular(path)
    if f is None:
        raise TrainlabError(f"{path} not found: is {path.parent} a trainlab run folder?")
    try:
        with f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise TrainlabError(f"{path} cannot be read ({e.strerror})") from None
    if len(raw) > max_bytes:
        raise TrainlabError(f"{path} is over {max_bytes:,} bytes, more than trainlab writes there: the "
                            "file is damaged or not this run's; move it aside or leave the run out")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise TrainlabError(f"{path} is not valid JSON (not UTF-8 text at byte {e.start})") from None
    except _NonFinite as e:
        raise TrainlabError(f"{path} is not valid JSON ({e} is not a JSON number)") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise TrainlabError(f"{path} is not valid JSON ({e if isinstance(e, ValueError) else 'nested too deeply'})") from None


def read_results(path: str | Path) -> dict:
    """A run's results.json: a JSON object whose `epochs` is a whole number and `stopped` a name
    (what decides whether a run is finished), or one sentence naming the file."""
    obj = read_json(path)
    why = None
    if not isinstance(obj, dict):
        why = "not a JSON object"
    elif obj.get("epochs") is not None and not (_is_number(obj["epochs"]) and isinstance(obj["epochs"], int)
                                                 and 0 <= obj["epochs"] <= MAX_EPOCHS):
        why = f"epochs {_show(obj['epochs'])} is not a whole number from 0 to {MAX_EPOCHS}"
    elif obj.get("stopped") is not None and not isinstance(obj["stopped"], str):
        why = f"stopped {_show(obj['stopped'])} is not a name"
    if why:
        raise TrainlabError(f"{path} is not what trainlab writes ({why}): the run folder is damaged; move "
                            "the file aside (the checkpoints stay usable) or leave the run out")
    return obj
