"""The notebooks' checks fail on wrong solutions, not only on the empty stubs (issue 16).

Each mutant below is a plausible learner mistake, written as text replacements applied to an
exercise's solution cell. For each notebook, one quick-mode kernel runs the cells in order up to
the last check of the last exercise that has mutants; just before an exercise's solution cell it
runs every mutant of that exercise in its place (then the cells up to the exercise's last check)
and records whether a check cell raised; then the real solution and its checks run as usual and
must pass. Most of these mistakes are invisible on a CPU-only machine (a missing .to(device) or
.cpu() changes nothing there); the checks of 2-3-2 use stand-ins (faked CUDA/MPS availability,
`Elsewhere` tensors that must be moved, spies on torch.save/torch.load/GradScaler and a forward
hook that sees the autocast state) so that CI on a CPU catches them.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from notebook_runner import NOTEBOOK_DIR, _block_end, _run_quietly, exercise_of, tags

# notebook -> exercise -> [(what the learner got wrong, [(old, new), ...] applied to the solution cell)]
MUTANTS: dict[str, dict[str, list[tuple[str, list[tuple[str, str]]]]]] = {
    "2-3-1-saving-and-loading.ipynb": {
        "1": [
            ("the whole model pickled, not its state_dict", [("torch.save(model.state_dict(), path)", "torch.save(model, path)"),
                                                             ("torch.load(path, weights_only=True)",
                                                              "torch.load(path, weights_only=False).state_dict()")]),
            ("fresh is the trained model itself", [("fresh = MLP(hidden)\n", "fresh = model\n")]),
            ("the weights are never loaded", [("    fresh.load_state_dict(torch.load(path, weights_only=True))\n", "")]),
            ("the file is never read: the in-memory model's weights are copied",
             [("fresh.load_state_dict(torch.load(path, weights_only=True))", "fresh.load_state_dict(model.state_dict())")]),
            ("load_fresh reads the notebook's weights_path, not its argument",
             [("torch.load(path, weights_only=True)", "torch.load(weights_path, weights_only=True)")]),
            ("save_state saves the notebook's model, not its argument",
             [("def save_state(model, path):\n    torch.save(model.state_dict(), path)",
               "def save_state(m, path):\n    torch.save(model.state_dict(), path)")]),
            ("load_fresh ignores hidden", [("fresh = MLP(hidden)\n", "fresh = MLP()\n")]),
        ],
        "1b": [
            ("model.eval() forgotten after loading", [("    return model.eval()", "    return model")]),
            ("model.train() instead of model.eval()", [("    return model.eval()", "    return model.train()")]),
            ("the weights are never loaded", [("    model.load_state_dict(torch.load(path, weights_only=True))\n", "")]),
            ("the trained model itself returned", [("    model = DropoutMLP()\n", "    model = dropout_model\n")]),
            ("the file is never read: the in-memory dropout_model's weights are copied",
             [("torch.load(path, weights_only=True)", "dropout_model.state_dict()")]),
            ("the notebook's dropout_path, not the argument",
             [("torch.load(path, weights_only=True)", "torch.load(dropout_path, weights_only=True)")]),
            ("eval() called on the wrong model", [("    return model.eval()", "    dropout_model.eval()\n    return model")]),
        ],
        "2": [
            ("best.pt overwritten every epoch", [("if val_loss < best_val:", "if True:")]),
            ("no optimizer state in the checkpoint", [('"optimizer": optimizer.state_dict(),', "")]),
            ("periodic checkpoints off by one", [("if epoch % every == 0:", "if epoch % every == 1:")]),
            ("best chosen by validation accuracy, not loss",
             [("if val_loss < best_val:\n            best_val = val_loss", "if -val_acc < best_val:\n            best_val = -val_acc")]),
            ("every ignored (5 hard-coded)", [("if epoch % every == 0:", "if epoch % 5 == 0:")]),
            ("best_val never updated", [("            best_val = val_loss\n", "")]),
            ("ckpt_dir ignored: always the notebook's CKPT_DIR", [("ckpt_dir = Path(ckpt_dir)", "ckpt_dir = CKPT_DIR")]),
            ("validation loss computed on the training data",
             [("evaluate(model, x_val, y_val)", "evaluate(model, x_train, y_train)")]),
        ],
        "3": [
            ("the optimizer state is not loaded", [("if load_optimizer:", "if False:")]),
            ("the epoch numbers restart at 1", [('range(ckpt["epoch"] + 1, ckpt["epoch"] + more_epochs + 1)',
                                                 "range(1, more_epochs + 1)")]),
            ("the model state is not loaded", [('    model.load_state_dict(ckpt["model"])\n', "")]),
            ("resumes the old model object, not a fresh one", [("    model = MLP()\n", "    model = ckpt_model\n")]),
            ("load_optimizer ignored: the optimizer state always loaded", [("if load_optimizer:", "if True:")]),
            ("the model's weights loaded only together with the optimizer state",
             [('    model.load_state_dict(ckpt["model"])\n    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)\n'
               '    if load_optimizer:\n',
               '    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)\n    if load_optimizer:\n'
               '        model.load_state_dict(ckpt["model"])\n')]),
            ("reads the notebook's ckpt_path, not its argument",
             [("def resume_training(ckpt_path, more_epochs", "def resume_training(path, more_epochs")]),
            ("the optimizer over the old model's parameters",
             [("torch.optim.Adam(model.parameters(), lr=1e-3)", "torch.optim.Adam(ckpt_model.parameters(), lr=1e-3)")]),
        ],
        "4": [
            ("the best state is not a copy", [("copy.deepcopy(model.state_dict())", "model.state_dict()")]),
            ("the best weights are not restored", [("    model.load_state_dict(best_state)\n", "")]),
            ("patience off by one", [("if waited >= patience:", "if waited > patience:")]),
            ("the patience counter not reset on an improvement",
             [("best_val, best_epoch, waited = val_loss, epoch, 0", "best_val, best_epoch = val_loss, epoch")]),
            ("the best weights restored only when stopping early",
             [("                break\n    model.load_state_dict(best_state)\n",
               "                model.load_state_dict(best_state)\n                break\n")]),
            ("a tie counts as an improvement", [("if val_loss < best_val:", "if val_loss <= best_val:")]),
            ("one epoch short of max_epochs", [("range(1, max_epochs + 1)", "range(1, max_epochs)")]),
            ("stopping on the training loss",
             [("if val_loss < best_val:\n            best_val, best_epoch, waited = val_loss,",
               "if sum(losses) / len(losses) < best_val:\n            best_val, best_epoch, waited = sum(losses) / len(losses),")]),
            ("the accuracy taken for the loss", [("val_loss, _ = evaluate(", "_, val_loss = evaluate(")]),
        ],
    },
    "2-3-2-gpu-training.ipynb": {
        "1": [
            ("get_device() hard-codes the CPU",
             [(('if torch.cuda.is_available():\n        return torch.device("cuda")\n'
               '    if torch.backends.mps.is_available():\n        return torch.device("mps")\n    '), "")]),
            ("get_device() hard-codes CUDA", [('return torch.device("cpu")', 'return torch.device("cuda")')]),
            ("MPS asked before CUDA",
             [(('if torch.cuda.is_available():\n        return torch.device("cuda")\n'
               '    if torch.backends.mps.is_available():\n        return torch.device("mps")'),
               ('if torch.backends.mps.is_available():\n        return torch.device("mps")\n'
               '    if torch.cuda.is_available():\n        return torch.device("cuda")'))]),
            ("MPS forgotten", [('    if torch.backends.mps.is_available():\n        return torch.device("mps")\n', "")]),
            ("returns a string, not a torch.device",
             [('return torch.device("cuda")', 'return "cuda"'), ('return torch.device("mps")', 'return "mps"'),
              ('return torch.device("cpu")', 'return "cpu"')]),
            ("device_count() instead of is_available()", [("if torch.cuda.is_available():", "if torch.cuda.device_count() > 0:")]),
            ("mps.is_built() instead of is_available()",
             [("torch.backends.mps.is_available()", "torch.backends.mps.is_built()")]),
            ("the choice frozen when the function is defined",
             [("def get_device():\n    if torch.cuda.is_available():",
               "_CUDA = torch.cuda.is_available()\n\n\ndef get_device():\n    if _CUDA:")]),
        ],
        "2": [
            ("labels never moved", [("xb, yb = xb.to(device), yb.to(device)", "xb = xb.to(device)")]),
            ("inputs never moved", [("xb, yb = xb.to(device), yb.to(device)", "yb = yb.to(device)")]),
            ("loss.item() every step (the GPU waits every step)", [("total += loss.detach()", "total += loss.item()")]),
            ("no zero_grad: the gradients add up", [("        optimizer.zero_grad(set_to_none=True)\n", "")]),
            ("optimizer.step() twice per batch",
             [("        optimizer.step()\n", "        optimizer.step()\n        optimizer.step()\n")]),
            ("model.train() forgotten", [("    model.train()\n", "")]),
            ("the sum, not the mean", [("return total.item() / len(loader)", "return total.item()")]),
        ],
        "2b": [
            ("the threshold reversed", [("if cpu_seconds < 30:", "if cpu_seconds >= 30:")]),
            ("the GPU is always worth it", [("return False, cpu_seconds, cpu_seconds", "return True, cpu_seconds / 10, cpu_seconds / 3")]),
            ("the speed-up applied the wrong way", [("cpu_seconds / 10, cpu_seconds / 3", "cpu_seconds * 3, cpu_seconds * 10")]),
            ("decided by one epoch's time, not the job's", [("if cpu_seconds < 30:", "if seconds_per_epoch < 30:")]),
            ("low and high swapped", [("cpu_seconds / 10, cpu_seconds / 3", "cpu_seconds / 3, cpu_seconds / 10")]),
            ("a speed-up promised where the GPU does not help",
             [("return False, cpu_seconds, cpu_seconds", "return False, cpu_seconds / 10, cpu_seconds / 3")]),
            ("per-epoch times returned", [("return True, cpu_seconds / 10, cpu_seconds / 3",
                                          "return True, seconds_per_epoch / 10, seconds_per_epoch / 3")]),
        ],
        "3": [
            ("the model's tensors not moved to the CPU on save",
             [('"model": to_cpu(model.state_dict())', '"model": model.state_dict()')]),
            ("the optimizer state not moved to the CPU on save",
             [('"optimizer": to_cpu(optimizer.state_dict())', '"optimizer": optimizer.state_dict()')]),
            ("model.cpu() on save moves the caller's model",
             [('"model": to_cpu(model.state_dict())', '"model": model.cpu().state_dict()')]),
            ("no map_location on load", [("torch.load(path, map_location=device, weights_only=True)",
                                          "torch.load(path, weights_only=True)")]),
            ("the model is not moved to the device", [("model = MLP().to(device)", "model = MLP()")]),
            ("map_location='cpu' and the model left on the CPU",
             [("model = MLP().to(device)", "model = MLP()"), ("map_location=device", 'map_location="cpu"')]),
            ("the weights are never loaded", [('    model.load_state_dict(ckpt["model"])\n', "")]),
            ("the optimizer state is never loaded", [('    optimizer.load_state_dict(ckpt["optimizer"])\n', "")]),
            ("the optimizer over another model's parameters",
             [("torch.optim.Adam(model.parameters(), lr=1e-3)", "torch.optim.Adam(MLP().to(device).parameters(), lr=1e-3)")]),
        ],
        "4": [
            ("the scale is never applied", [("(g * scale).to(torch.float16).float() / scale",
                                             "g.to(torch.float16).float()")]),
            ("the result stays float16", [("(g * scale).to(torch.float16).float() / scale",
                                           "(g * scale).to(torch.float16) / scale")]),
            ("no float16 round trip", [("(g * scale).to(torch.float16).float() / scale", "(g * scale) / scale")]),
            ("divided in float16", [("(g * scale).to(torch.float16).float() / scale",
                                     "((g * scale).to(torch.float16) / scale).float()")]),
            ("bfloat16 instead of float16", [("(g * scale).to(torch.float16).float() / scale",
                                              "(g * scale).to(torch.bfloat16).float() / scale")]),
            ("overflow clamped away", [("(g * scale).to(torch.float16).float() / scale",
                                        "(g * scale).clamp(max=65504).to(torch.float16).float() / scale")]),
        ],
        "4b": [
            ("torch.cuda.is_bf16_supported() instead of the capability (True on a T4 too)",
             [("major, _minor = torch.cuda.get_device_capability(device)\n        if major >= 8:",
               "if torch.cuda.is_bf16_supported():")]),
            ("bfloat16 autocast on the CPU", [("    return None, False", "    return (torch.bfloat16, False) if device.type == \"cpu\" else (None, False)")]),
            ("no GradScaler for float16", [("return torch.float16, True", "return torch.float16, False")]),
            ("bfloat16 from capability 7", [("if major >= 8:", "if major >= 7:")]),
            ("the minor version compared", [("major, _minor = torch.cuda.get_device_capability(device)",
                                             "_minor, major = torch.cuda.get_device_capability(device)")]),
            ("a GradScaler for bfloat16 too", [("return torch.bfloat16, False", "return torch.bfloat16, True")]),
        ],
        "5": [
            ("batches never moved", [("xb, yb = xb.to(device), yb.to(device)\n            with", "with")]),
            ("labels not moved", [("xb, yb = xb.to(device), yb.to(device)\n            with", "xb = xb.to(device)\n            with")]),
            ("no autocast", [("enabled=amp_dtype is not None):", "enabled=False):")]),
            ("autocast on even for amp_dtype=None", [("dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)",
                                                       "dtype=amp_dtype or torch.bfloat16)")]),
            ("no GradScaler", [(("            scaler.scale(loss).backward()\n            scaler.step(optimizer)\n"
                                "            scaler.update()\n"),
                                "            loss.backward()\n            optimizer.step()\n")]),
            ("GradScaler enabled for bfloat16 too", [("enabled=amp_dtype == torch.float16)", "enabled=True)")]),
            ("scaled backward but optimizer.step() bypasses the scaler",
             [("scaler.step(optimizer)", "optimizer.step()")]),
            ("the model cast to bfloat16 instead of autocast",
             [("model = MLP().to(device)\n", "model = MLP().to(device, dtype=torch.bfloat16)\n"),
              ("loss = loss_fn(model(xb), yb)", "loss = loss_fn(model(xb.to(torch.bfloat16)).float(), yb)")]),
            ("the optimizer stepped twice per batch",
             [("            scaler.update()\n", "            scaler.update()\n            optimizer.step()\n")]),
            ("the loss computed outside autocast",
             [("                loss = loss_fn(model(xb), yb)\n", "                out = model(xb)\n            loss = loss_fn(out, yb)\n")]),
            ("the checkpoint keeps device tensors (no .cpu())",
             [("{k: v.detach().cpu() for k, v in model.state_dict().items()}", "model.state_dict()")]),
            ("model.cpu() on save moves the live model",
             [("{k: v.detach().cpu() for k, v in model.state_dict().items()}", "model.cpu().state_dict()")]),
            ("the optimizer over another model's parameters",
             [("torch.optim.Adam(model.parameters(), lr=1e-3)", "torch.optim.Adam(MLP().to(device).parameters(), lr=1e-3)")]),
            ("no zero_grad", [("            optimizer.zero_grad(set_to_none=True)\n", "")]),
        ],
    },
    "2-3-3-fashion-mnist-project.ipynb": {
        "1": [
            ("pixels not scaled to [0, 1]", [("ds.train_x[:, 0].float() / 255", "ds.train_x[:, 0].float()")]),
            ("a class is its own nearest neighbour", [('dist.fill_diagonal_(float("inf"))\n', "")]),
            ("the farthest pair", [("divmod(int(dist.argmin()), 10)",
                                    "divmod(int(dist.masked_fill(dist.isinf(), 0).argmax()), 10)")]),
        ],
        "2": [
            ("the gap's sign flipped", [('h["train_acc"] - h["val_acc"]', 'h["val_acc"] - h["train_acc"]')]),
            ("best epoch as a 0-based index", [('min(history, key=lambda h: h["val_loss"])["epoch"]',
                                                'min(range(len(history)), key=lambda i: history[i]["val_loss"])')]),
            ("best epoch by the highest validation loss", [('min(history, key=lambda h: h["val_loss"])',
                                                            'max(history, key=lambda h: h["val_loss"])')]),
            ("best epoch by the highest validation accuracy", [('min(history, key=lambda h: h["val_loss"])',
                                                                'max(history, key=lambda h: h["val_acc"])')]),
            ("the last epoch taken as the best", [('min(history, key=lambda h: h["val_loss"])["epoch"]',
                                                   'history[-1]["epoch"]')]),
        ],
        "3": [
            ("no BatchNorm", [("nn.BatchNorm1d(h), ", "")]),
            ("Dropout before ReLU", [("nn.ReLU(), nn.Dropout(dropout)", "nn.Dropout(dropout), nn.ReLU()")]),
            ("no weight decay", [(", weight_decay=1e-4)", ")")]),
            ("Dropout hard-coded to 0.5", [("nn.Dropout(dropout)", "nn.Dropout(0.5)")]),
            ("the dropout argument ignored (0.3 hard-coded)", [("nn.Dropout(dropout)", "nn.Dropout(0.3)")]),
            ("the widths hard-coded (hidden ignored)", [("for h in hidden:", "for h in (256, 128):")]),
            ("reg_model at the default widths, not the baseline's", [("RegularizedMLP(hidden=(256, 128))",
                                                                      "RegularizedMLP()")]),
            ("the optimizer over the baseline's parameters", [("torch.optim.Adam(reg_model.parameters()",
                                                               "torch.optim.Adam(baseline.parameters()")]),
        ],
        "4": [
            ("over the parameter budget", [("RegularizedMLP(hidden=(160, 96), dropout=0.2)",
                                            "RegularizedMLP(hidden=(512, 256), dropout=0.2)")]),
            ("the optimizer over another model's parameters", [("torch.optim.Adam(my_model.parameters()",
                                                                "torch.optim.Adam(reg_model.parameters()")]),
            ("a convolution in the design", [("return RegularizedMLP(hidden=(160, 96), dropout=0.2)",
                                              ("return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), "
                                               "nn.Linear(4 * 26 * 26, 10))"))]),
            ("the optimizer never moves the weights (lr=0)", [("lr=1e-3, weight_decay=1e-4)", "lr=0.0, weight_decay=1e-4)")]),
            ("design_model() returns the same model every call",
             [("def design_model():\n    return RegularizedMLP(hidden=(160, 96), dropout=0.2)",
               "_one = RegularizedMLP(hidden=(160, 96), dropout=0.2)\n\n\ndef design_model():\n    return _one")]),
            ("a one-line justification", [('my_reasons = """', 'my_reasons = "Small and regularized."\n_unused = """')]),
        ],
        "5": [
            ("chosen by test accuracy", [('experiments[name]["history"][-1]["val_acc"]', 'experiments[name]["test_acc"]')]),
            ("chosen by the best epoch, not the weights held", [('experiments[name]["history"][-1]["val_acc"]',
                                                                 'max(h["val_acc"] for h in experiments[name]["history"])')]),
            ("chosen by the lowest validation loss", [('max(experiments, key=lambda name: experiments[name]["history"][-1]["val_acc"])',
                                                       'min(experiments, key=lambda name: experiments[name]["history"][-1]["val_loss"])')]),
            ("chosen by training accuracy", [('["history"][-1]["val_acc"]', '["history"][-1]["train_acc"]')]),
        ],
        "6": [
            ("a one-line answer", [('my_interpretation = """', 'my_interpretation = "Some classes are harder."\n_unused = """')]),
            ("no class named", [('my_interpretation = """',
                                 ('my_interpretation = """The model does well overall, but a few categories are harder '
                                  'than others because their images look alike at this small size; more data, more epochs '
                                  'or a different architecture could help it tell them apart better."""\n_unused = """'))]),
            ("only the easiest classes named", [('my_interpretation = """',
                                                 ('my_interpretation = """Trouser and Bag are the easiest classes: their '
                                                  'shapes are unlike every other class, a pair of legs or a box with a '
                                                  'handle, so the model almost never confuses them and nearly every test '
                                                  'image of them is right."""\n_unused = """'))]),
        ],
        "7": [
            ("best weights restored from memory, not read from best.pt",
             [('save_checkpoint(ckpt_dir / "best.pt", model, optimizer, epoch)\n',
               'save_checkpoint(ckpt_dir / "best.pt", model, optimizer, epoch)\n'
               '            best_state = copy.deepcopy(model.state_dict())\n'),
              ('model.load_state_dict(best["model"])', "model.load_state_dict(best_state)")]),
            ("the patience counter not reset at a new best", [("best_loss, waited = val_loss, 0", "best_loss = val_loss")]),
            ("best weights restored on the early stop only",
             [("        if waited >= patience:\n            break\n",
               ('        if waited >= patience:\n            model.load_state_dict(torch.load(ckpt_dir / "best.pt", '
                'map_location=device, weights_only=True)["model"])\n            break\n')),
              ('    model.load_state_dict(best["model"])\n', "")]),
            ("device tensors in the checkpoints (no .cpu())", [('"model": to_cpu(model.state_dict())',
                                                                '"model": model.state_dict()')]),
            ("the save moves the caller's model to the CPU", [('"model": to_cpu(model.state_dict())',
                                                               '"model": to_cpu(model.cpu().state_dict())')]),
            ("two optimizer steps per batch", [("            scaler.step(optimizer)\n",
                                                "            scaler.step(optimizer)\n            optimizer.step()\n")]),
            ("batches never moved", [("xb, yb = x[idx].to(device), y[idx].to(device)", "xb, yb = x[idx], y[idx]")]),
            ("periodic checkpoints off by one", [("if epoch % save_every == 0:", "if epoch % save_every == 1:")]),
            ("amp ignored", [("amp_dtype = amp_dtype_for(device) if amp else None", "amp_dtype = None")]),
            ("autocast even with amp=False", [("amp_dtype = amp_dtype_for(device) if amp else None",
                                               "amp_dtype = amp_dtype_for(device)")]),
            ("the loss computed outside autocast", [("                loss = loss_fn(model(xb), yb)\n",
                                                     "                out = model(xb)\n            loss = loss_fn(out, yb)\n")]),
            ("GradScaler on for every dtype", [("enabled=amp_dtype == torch.float16)", "enabled=True)")]),
            ("resume without the optimizer state", [('        optimizer.load_state_dict(ckpt["optimizer"])\n', "")]),
            ("resume forgets the early-stopping state",
             [('start, best_loss, waited, history = ckpt["epoch"] + 1, ckpt["best_loss"], ckpt["waited"], ckpt["history"]',
               'start, history = ckpt["epoch"] + 1, ckpt["history"]')]),
            ("resume starts again at epoch 1", [('history = ckpt["epoch"] + 1, ckpt', 'history = 1, ckpt')]),
        ],
    },
}


def mutant_source(source: str, replacements) -> str:
    for old, new in replacements:
        assert source.count(old) == 1, f"the mutant's text {old!r} is not (exactly once) in the solution"
        source = source.replace(old, new)
    return source


def solution_cells(nb, ex):
    return [i for i, c in enumerate(nb.cells) if "solution" in tags(c) and exercise_of(c) == ex]


def run_mutants(path: Path, cwd: Path, mutants, timeout: int = 240):
    """{mutant name: first failing check ("ename: evalue") or None}, and the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    ref = copy.deepcopy(nb)  # nbclient puts each executed cell into nb.cells: read the sources from a copy
    last = max(_block_end(nb, solution_cells(nb, ex)[0], ex) for ex in mutants)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    results, t0 = {}, time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells[:last + 1]):
            if cell.cell_type != "code":
                continue
            ex = exercise_of(cell)
            if "solution" in tags(cell) and ex in mutants and solution_cells(nb, ex)[0] == index:
                end = _block_end(nb, index, ex)
                for name, replacements in mutants[ex]:
                    failure = None
                    for j in range(index, end + 1):
                        c = ref.cells[j]
                        if c.cell_type != "code":
                            continue
                        src = mutant_source(c.source, replacements) if j == index else c.source
                        error = _run_quietly(client, src, j)
                        if error is not None and failure is None and "check" in tags(c) and exercise_of(c) == ex:
                            failure = f"{error.ename}: {str(error.evalue).splitlines()[0] if error.evalue else ''}"
                    results[f"ex {ex}: {name}"] = failure
            client.execute_cell(ref.cells[index], index)  # the real cell: raises if the real solution's checks fail
    return results, time.perf_counter() - t0


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutants_apply_to_the_solutions(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    for ex, mutants in MUTANTS[name].items():
        cells = solution_cells(nb, ex)
        assert cells, f"{name} has no exercise {ex}"
        for what, replacements in mutants:
            assert mutant_source(nb.cells[cells[0]].source, replacements) != nb.cells[cells[0]].source, what


@pytest.mark.parametrize("name", list(MUTANTS))
def test_checks_fail_on_wrong_solutions(name, real_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINLAB_QUICK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    results, seconds = run_mutants(NOTEBOOK_DIR / name, tmp_path, MUTANTS[name])
    passed = [m for m, failure in results.items() if failure is None]
    assert not passed, f"{name}: the checks pass on these wrong solutions: {passed}"
    assert len(results) == sum(len(v) for v in MUTANTS[name].values())
    print(f"{name}: {len(results)} mutants, each fails its check ({seconds:.0f}s)")
    for m, failure in results.items():
        print(f"  {m}: {failure[:150]}")
