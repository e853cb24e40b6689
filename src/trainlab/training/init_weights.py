"""Weights in: start a run from another run's (or file's) weights.

`init_from` (a run folder, a trainlab checkpoint, a plain state_dict .pt/.pth, a .safetensors
file, a Lightning .ckpt, a Hugging Face folder's model.safetensors or pytorch_model.bin):
tensors are matched by name, under the key mapping that matches most of them
(training.init_keys: prefixes such as `model.`, `module.`, `_orig_mod.` stripped or added;
`init_map` renames first), and loaded where the shapes agree. What was loaded, skipped for a
shape mismatch (a head of another class count keeps this run's own fresh, seeded
initialization), missing or unexpected is logged as a table and recorded in meta.json and in
every checkpoint (with the file's path and sha256). `init_strict` makes any mismatch an error.
Loading is safe loading (weights_only=True, pickled modules refused, no code imported or run);
the file's model spec is never built. It happens on a fresh run only: a resume takes the
weights from its checkpoint and never reads the init file again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from trainlab import models
from trainlab.errors import ConfigError
from trainlab.inference import checkpoint_path, kept_weights
from trainlab.store.checkpoint import sha256_file, strip_prefixes, unwrap
from trainlab.store.safeload import CheckpointError, safe_load
from trainlab.store.schema import FORMAT
from trainlab.text import printable
from trainlab.training.init_keys import best_mapping, no_match_hint, parse_init_map, rename

log = logging.getLogger("trainlab")

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


