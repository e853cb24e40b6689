"""Weights in: start a run from another run's (or file's) weights, freeze part of the model,
give the body its own learning rate, and train on a seeded per-class subset.

- `init_from` (a run folder, a trainlab checkpoint, a plain state_dict .pt/.pth, a
  .safetensors file, a Lightning .ckpt, a Hugging Face folder's model.safetensors or
  pytorch_model.bin): tensors are matched by name, under the key mapping that matches most of
  them (training.init_keys: prefixes such as `model.`, `module.`, `_orig_mod.` stripped or
  added; `init_map` renames first), and loaded where the shapes agree. What was
  loaded, skipped for a shape mismatch (a head of another class count keeps this run's own
  fresh, seeded initialization), missing or unexpected is logged as a table and recorded in
  meta.json and in every checkpoint (with the file's path and sha256). `init_strict` makes any
  mismatch an error. Loading is safe loading (weights_only=True, pickled modules refused, no
  code imported or run); the file's model spec is never built. It happens on a fresh run
  only: a resume takes the weights from its checkpoint and never reads the init file again.
- `freeze` ("body" = every parameter but the head's, the head being the model's last
  nn.Linear; or parameter-name prefixes): frozen parameters get no gradient, and BatchNorm
  layers whose parameters are all frozen stay in eval mode (their running statistics are
  kept as loaded). `unfreeze_at` = N: they train from epoch N (1-based, as metrics.jsonl
  counts) on. The optimizer holds every parameter from the start, in a fixed group layout
  (head / body x decay / no decay), so a resume restores its state group by group.
- `body_lr_mult`: the learning rate of the body (everything but the head) as a multiple.
- `train_per_class` = N: at most N training images per class (after the validation split is
  carved), drawn with a seed; the indices' sha256 is recorded.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from trainlab import models
from trainlab.text import printable
from trainlab.data.loader import derive_seed
from trainlab.errors import ConfigError
from trainlab.inference import checkpoint_path, kept_weights
from trainlab.store import runs
from trainlab.store.checkpoint import sha256_file, strip_prefixes, unwrap
from trainlab.store.safeload import CheckpointError, safe_load
from trainlab.store.schema import FORMAT
from trainlab.training.callbacks import Callback
from trainlab.training.init_keys import best_mapping, no_match_hint, parse_init_map, rename

log = logging.getLogger("trainlab")

STATE_KEY = "finetune"
_SUBSET_SALT = 0x5EB5E7
# the largest model trainlab builds, in float64, plus room for a checkpoint's other fields
MAX_INIT_BYTES = models.MAX_PARAMETERS * 8 + (64 << 20)
_STATUS = ("loaded", "new head", "shape mismatch", "missing", "unexpected")
# where other tools keep the weights: Lightning's "state_dict", the usual hand-made wrappers
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


# ---------------------------------------------------------------- what is the head, the body

def head_prefix(model: nn.Module) -> str | None:
    """The head of a model: its last nn.Linear (for trainlab's models the classifier:
    the final layer of mlp, mlp-reg, cnn, cnn-fast; `fc` of resnet)."""
    last = None
    for name, module in unwrap(model).named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def _under(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def head_names(model: nn.Module) -> set[str]:
    head = head_prefix(model)
    return {n for n, _ in unwrap(model).named_parameters() if head is not None and _under(n, head)}


def frozen_names(model: nn.Module, freeze: str) -> list[str]:
    """The parameter names `freeze` selects ("body", or comma-separated prefixes)."""
    names = [n for n, _ in unwrap(model).named_parameters()]
    if freeze.strip() == "body":
        head = head_prefix(model)
        if head is None:
            raise ConfigError("freeze = 'body' needs a head, and this model has no nn.Linear layer to call "
                              "its head: name the parameters to freeze by prefix instead")
        return [n for n in names if not _under(n, head)]
    chosen = []
    for prefix in (p.strip() for p in freeze.split(",")):
        hit = [n for n in names if _under(n, prefix)]
        if not hit:
            tops = sorted({n.split(".")[0] for n in names}, key=lambda t: (len(t), t))
            raise ConfigError(f"freeze prefix {prefix!r} matches no parameter of this model; its top-level "
                              f"names are {', '.join(tops[:20])} (or use freeze = \"body\")")
        chosen += [n for n in hit if n not in chosen]
    if len(chosen) == len(names):
        raise ConfigError(f"freeze = {freeze!r} freezes every parameter, so nothing would train: "
                          "leave the head out (freeze = \"body\" does)")
    return chosen


def optimizer_layout(s) -> dict:
    """build_optimizer's keywords: the body/head split when freeze or body_lr_mult asks for it
    (a fixed layout, the same on resume); {} keeps the plain decay / no-decay layout."""
    cfg = s.cfg
    if cfg.freeze is None and cfg.body_lr_mult == 1.0:
        return {}
    head = head_names(s.model)
    if not head and cfg.body_lr_mult != 1.0:
        raise ConfigError("body_lr_mult needs a head (the model's last nn.Linear), and this model has none")
    body = {n for n, _ in unwrap(s.model).named_parameters() if n not in head}
    return {"body": body, "body_lr_mult": cfg.body_lr_mult}


# ---------------------------------------------------------------- reading the init weights

def _tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and torch.is_tensor(v)
                                                       for k, v in obj.items())


def read_init(where: str | Path) -> tuple[dict, dict]:
    """(state_dict, description) of a run folder or weights file; safe loading only."""
    given = Path(where)
    if not given.exists():
        raise ConfigError(f"init_from = {str(where)!r}: no such file or folder; name a run folder, a trainlab "
                          "checkpoint, a state_dict .pt/.pth or a .safetensors file")
    path = checkpoint_path(given)
    if path.is_dir():  # a Hugging Face style folder holds its weights under these names
        path = next((path / n for n in HF_WEIGHTS if (path / n).is_file()), path)
    if path.is_dir():
        raise ConfigError(f"init_from = {str(where)!r} is a folder without model.pt or checkpoints/best.pt "
                          "or last.pt: name a run folder or a weights file")
    if not path.is_file():
        raise ConfigError(f"init_from = {str(path)!r} is not a regular file: name a weights file")
    size = path.stat().st_size
    if size > MAX_INIT_BYTES:
        raise CheckpointError(f"{path} is {size / 2**30:.1f} GiB, more than any model trainlab builds holds: "
                              "refused unread")
    desc = {"path": str(path.resolve()), "sha256": sha256_file(path), "bytes": size}
    if path.suffix == ".safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError("init_from a .safetensors file needs safetensors: pip install 'trainlab[export]'"
                              ) from None
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:200]}); "
                                  "it was not used") from None
        desc["kind"] = "safetensors"
    else:
        obj = safe_load(path, map_location="cpu")  # weights_only=True; pickled code refused unread
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            try:
                state = kept_weights(obj)  # the EMA average when the run used EMA, as it evaluates
            except (KeyError, TypeError, AttributeError):
                state = None
            desc["kind"] = "trainlab checkpoint"
            spec = obj.get("model_spec")
            if isinstance(spec, dict):
                desc["model_spec"] = {k: spec.get(k) for k in ("name", "kwargs", "input_shape", "num_classes")}
            if isinstance(obj.get("epoch"), int):
                desc["epoch"] = obj["epoch"]
        elif _tensor_dict(obj):
            state, desc["kind"] = obj, "state_dict"
        else:  # the usual hand-made wrappers: {"state_dict": ...}, {"model_state_dict": ...}
            key = next((k for k in CONTAINER_KEYS if isinstance(obj, dict) and _tensor_dict(obj.get(k))), None)
            state = obj[key] if key else None
            lightning = isinstance(obj, dict) and "pytorch-lightning_version" in obj
            desc["kind"] = "Lightning checkpoint" if lightning else f"state_dict (under {key!r})"
        if not _tensor_dict(state):
            raise CheckpointError(f"{path} holds no weights (not a state_dict: a dict of named tensors); "
                                  "it was not used")
    return strip_prefixes(state), desc


# ---------------------------------------------------------------- matching and loading

def match(model: nn.Module, state: dict) -> dict[str, list]:
    """Each name of the model and the file, sorted into loaded / new head / shape mismatch /
    missing / unexpected (shape entries as [name, file shape, model shape])."""
    own = unwrap(model).state_dict()
    head = head_prefix(model)
    table: dict[str, list] = {k: [] for k in _STATUS}
    for name, tensor in own.items():
        if name not in state:
            table["missing"].append(name)
        elif tuple(state[name].shape) != tuple(tensor.shape):
            kind = "new head" if head is not None and _under(name, head) else "shape mismatch"
            table[kind].append([name, list(state[name].shape), list(tensor.shape)])
        else:
            table["loaded"].append(name)
    table["unexpected"] = [k for k in state if k not in own]
    return table


def _input_problem(model: nn.Module, table: dict) -> str | None:
    """A clear sentence when the first layer does not fit: other channels or image size."""
    first = next((n for n, p in unwrap(model).named_parameters() if p.dim() > 1), None)
    for name, theirs, mine in table["shape mismatch"]:
        if name != first or len(theirs) != len(mine):
            continue
        if len(mine) == 4 and theirs[1] != mine[1]:
            return (f"the file's first layer ({name}) takes {theirs[1]} input channel(s) and this model "
                    f"{mine[1]}: the images differ (grayscale vs colour?)")
        if len(mine) == 2 and theirs[1] != mine[1]:
            return (f"the file's first layer ({name}) takes {theirs[1]} input features and this model "
                    f"{mine[1]}: the image size or channels differ")
    return None


def format_table(table: dict) -> str:
    rows = [["weights", "count", "names"]]
    for kind in _STATUS:
        items = table[kind]
        names = [i[0] if isinstance(i, list) else i for i in items]
        if kind in ("new head", "shape mismatch"):
            names = [f"{n} (file {'x'.join(map(str, a))}, model {'x'.join(map(str, b))})" for n, a, b in items]
        shown = ", ".join(map(printable, names[:4])) + (f", ... ({len(names) - 4} more)" if len(names) > 4 else "")
        rows.append([kind, str(len(items)), shown or "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}" for r in rows]
    lines.insert(1, f"{'-' * widths[0]}  {'-' * widths[1]}  -----")
    return "\n".join(lines)


def _tensor_problem(theirs: torch.Tensor, mine: torch.Tensor | None) -> str | None:
    """Why a file's tensor cannot be loaded (`mine`: the model's tensor of that name, when it
    would be), or None. copy_ would take most of these silently or fail half-way."""
    if theirs.is_meta:
        return "a meta tensor (a shape without values)"
    if theirs.is_quantized:
        return f"a quantized tensor ({str(theirs.dtype).replace('torch.', '')})"
    if theirs.layout != torch.strided or theirs.is_nested:
        return f"a {'nested' if theirs.is_nested else str(theirs.layout).replace('torch.', '')} tensor, not a dense one"
    if mine is None:
        return None
    dtype = str(theirs.dtype).replace("torch.", "")
    if mine.is_floating_point():
        if not theirs.is_floating_point():
            return f"{dtype}, where this model holds floating-point values"
        if not bool(torch.isfinite(theirs).all()):
            return "not finite (it holds NaN or infinite values)"
    elif theirs.dtype != mine.dtype:
        return f"{dtype}, where this model's {str(mine.dtype).replace('torch.', '')} buffer needs the same type"
    return None


def _check_tensors(model: nn.Module, state: dict, table: dict, path: str) -> None:
    """Every tensor of an init file dense and real, and each one that would load of the model's
    kind (floating point for floating weights, the same type for an integer buffer such as
    num_batches_tracked) and finite, before any is loaded: one sentence naming the first bad key."""
    own = unwrap(model).state_dict()
    loaded = set(table["loaded"])
    for name, tensor in state.items():
        problem = _tensor_problem(tensor, own[name] if name in loaded else None)
        if problem:
            raise CheckpointError(f"init_from: {printable(name)} in {path} is {problem}; nothing was loaded: "
                                  "give weights saved as dense, finite tensors of the model's types")


def init_weights(model: nn.Module, where: str | Path, strict: bool = False, init_map: str | None = None,
                 reinit_head: bool = False) -> dict:
    """Load what fits of `where` into `model` in place; returns the record (path, sha256,
    kind, the key mapping chosen, the table). `strict`: any mismatch is an error and nothing is
    loaded. `init_map`: OLD=NEW prefix renames first; `reinit_head`: the head keeps its fresh
    initialization even when its shape fits."""
    state, desc = read_init(where)
    own = unwrap(model).state_dict()
    state, desc["key_mapping"], _ = best_mapping(own, rename(state, parse_init_map(init_map)))
    if desc["key_mapping"] != "names as they are":
        log.info("init: %s, keys matched with %s", desc["path"], desc["key_mapping"])
    head = head_names(model) if reinit_head else set()
    if reinit_head and not head:
        raise ConfigError("reinit_head needs a head (the model's last nn.Linear), and this model has none")
    table = match(model, {k: v for k, v in state.items() if k not in head})
    if head:  # shown as the new head: re-initialized by choice
        table["missing"] = [n for n in table["missing"] if n not in head]
        table["new head"] += [[n, list(own[n].shape), list(own[n].shape)] for n in sorted(head)]
    _check_tensors(model, state, table, desc["path"])
    problem = _input_problem(model, table)
    mismatched = sum(len(table[k]) for k in _STATUS if k != "loaded")
    if strict and mismatched:
        raise ConfigError(f"init_strict: {desc['path']} does not fit this model exactly ("
                          + "; ".join(f"{len(table[k])} {k}" for k in _STATUS[1:] if table[k])
                          + (f"; {problem}" if problem else "")
                          + "); nothing was loaded. Drop --init-strict to load the tensors that fit "
                          "(a head of another class count is then re-initialized)")
    if not table["loaded"]:
        names = any(k in own for k in state)
        raise ConfigError(f"init_from: no tensor of {desc['path']} fits this model by name and shape "
                          f"({problem or ('another architecture?' if names else no_match_hint(own, state))}); "
                          "nothing was loaded")
    own = unwrap(model).state_dict()
    with torch.no_grad():
        for name in table["loaded"]:
            own[name].copy_(state[name])  # in place: the parameters (and their layout) stay the model's
    log.info("init: %s (%s, sha256 %s...)", desc["path"], desc["kind"], desc["sha256"][:12])
    for line in format_table(table).splitlines():  # one log line each: the names in it are escaped
        log.info("%s", line)
    if problem:
        log.warning("init: %s; that layer keeps its fresh initialization", problem)
    if table["shape mismatch"]:
        log.warning("init: %d tensor(s) of the body did not fit and keep their fresh initialization",
                    len(table["shape mismatch"]))
    return {**desc, "loaded": table["loaded"], "new_head": table["new head"],
            "shape_mismatch": table["shape mismatch"], "missing": table["missing"],
            "unexpected": table["unexpected"]}


# ---------------------------------------------------------------- the per-class subset

def per_class_subset(labels: torch.Tensor, idx: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """At most `per_class` of the indices `idx` for each class, drawn with `seed`, sorted."""
    g = torch.Generator().manual_seed(derive_seed(seed, _SUBSET_SALT))
    sub = labels[idx]
    parts = []
    for c in torch.unique(sub).tolist():
        mine = idx[sub == c]
        parts.append(mine[torch.randperm(len(mine), generator=g)[:per_class]])
    return torch.cat(parts).sort().values


def subset_record(labels: torch.Tensor, idx: torch.Tensor, per_class: int) -> dict:
    counts = torch.bincount(labels[idx]).tolist()
    digest = hashlib.sha256(idx.to(torch.int64).numpy().tobytes()).hexdigest()
    return {"per_class": per_class, "samples": len(idx), "counts": counts, "indices_sha256": digest}


# ---------------------------------------------------------------- the callback and the session seam

class Finetune(Callback):
    """Freezes and unfreezes on schedule, and carries the run's provenance (the parent
    weights, the training subset) in every checkpoint and in meta.json."""
    order = 5
    state_key = STATE_KEY

    def __init__(self, frozen: list[str], unfreeze_at: int, record: dict):
        self.frozen_names, self.unfreeze_at = frozen, unfreeze_at
        self.record = record  # {"parent": ..., "train_subset": ...}
        self.frozen = bool(frozen)
        self._hooks: list = []

    def _frozen_at(self, epochs_done: int) -> bool:
        """Frozen while training epoch epochs_done + 1 (1-based)?"""
        return bool(self.frozen_names) and (self.unfreeze_at == 0 or epochs_done + 1 < self.unfreeze_at)

    def apply(self, model: nn.Module, frozen: bool) -> None:
        model = unwrap(model)
        chosen = set(self.frozen_names)
        for name, p in model.named_parameters():
            if name in chosen:
                p.requires_grad_(not frozen)
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if frozen:  # BatchNorm whose parameters are all frozen: eval mode (statistics kept)
            for name, m in model.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    own = [f"{name}.{n}" if name else n for n, _ in m.named_parameters()]
                    if own and all(n in chosen for n in own):
                        self._hooks.append(m.register_forward_pre_hook(_eval_mode))
        self.frozen = frozen

    def on_fit_start(self, run) -> None:
        if self.frozen_names:
            self.apply(run.model, self._frozen_at(run.state.epoch))
        if run.state.global_step == 0 and getattr(run, "run_dir", None) is not None and run.dist.is_main:
            meta_path = Path(run.run_dir) / runs.META_FILE
            try:
                meta = runs.read_json(meta_path)
            except Exception:  # noqa: BLE001 -- a missing or damaged meta.json: start it again
                meta = {}
            if meta.get(STATE_KEY) != self.record:
                runs.write_json(meta_path, {**meta, STATE_KEY: self.record})

    def on_epoch_end(self, run, row):
        if self.frozen and not self._frozen_at(row["epoch"]):
            self.apply(run.model, False)
            log.info("unfreeze: after epoch %d, the %d frozen parameter tensor(s) train from epoch %d on",
                     row["epoch"], len(self.frozen_names), row["epoch"] + 1)

    def on_fit_end(self, run) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def state_dict(self) -> dict:
        return {**self.record, "frozen": self.frozen, "frozen_names": list(self.frozen_names),
                "unfreeze_at": self.unfreeze_at}

    def load_state_dict(self, d: dict) -> None:
        # the provenance is the run's first one: a resume never reads the init file again
        self.record = {k: d[k] for k in ("parent", "train_subset") if k in d}
        self.frozen = bool(d.get("frozen", self.frozen))


def _eval_mode(module, _inputs):
    module.eval()


def needed(cfg) -> bool:
    return bool(cfg.init_from or cfg.freeze or cfg.train_per_class)


def setup(s, callbacks, fresh: bool) -> list:
    """The session seam (called right after the model is built, before its optimizer): load
    `init_from` on a fresh run, freeze what `freeze` names, and return the callbacks with the
    Finetune callback added when a fine-tuning key is set."""
    cfg = s.cfg
    callbacks = list(callbacks)
    if not needed(cfg):
        return callbacks
    if cfg.freeze and s.dist.enabled:
        raise ConfigError("freeze is not supported with several processes (DDP tracks the trainable "
                          "parameters when it starts); train frozen in one process")
    record: dict = {}
    if cfg.init_from and fresh:
        record["parent"] = init_weights(s.model, cfg.init_from, cfg.init_strict, cfg.init_map, bool(cfg.reinit_head))
    if cfg.train_per_class:
        record["train_subset"] = subset_record(s.data.train_y, train_indices(s.data, cfg), cfg.train_per_class)
    frozen = frozen_names(s.model, cfg.freeze) if cfg.freeze else []
    cb = Finetune(frozen, cfg.unfreeze_at, record)
    if frozen:  # before the optimizer and EMA are built: the first step is already frozen
        cb.apply(s.model, cb._frozen_at(0))
    s.finetune = cb
    return [*callbacks, cb]


def train_indices(data, cfg) -> torch.Tensor:
    """The training indices a run uses: the split left after validation, subset per class."""
    idx, _ = data.train_val_indices(cfg.val_size, cfg.seed)
    if cfg.train_per_class:
        idx = per_class_subset(data.train_y, idx, cfg.train_per_class, cfg.seed)
    return idx
