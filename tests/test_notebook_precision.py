"""The precision choice of notebooks/2-3-2-gpu-training.ipynb (exercise 4b, issue 30): bfloat16 only
where the GPU has it in hardware (compute capability >= 8), float16 with a GradScaler on older
CUDA GPUs (where torch.cuda.is_bf16_supported() says True too, emulated), float32 on the CPU.
The notebook's own solution function is run here, on faked CUDA devices: no kernel, no GPU."""

from __future__ import annotations

import ast

import nbformat
import pytest
import torch
from notebook_runner import NOTEBOOK_DIR, exercise_of, tags

NOTEBOOK = NOTEBOOK_DIR / "2-3-2-gpu-training.ipynb"


def choose_precision():
    """`choose_precision` as the notebook's solution cell defines it (only the function, not the cell)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if "solution" in tags(c) and exercise_of(c) == "4b"]
    assert len(cells) == 1, "2-3-2 has one solution cell for exercise 4b"
    tree = ast.parse(cells[0].source)
    fns = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "choose_precision"]
    assert fns, "exercise 4b's solution defines choose_precision"
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=fns, type_ignores=[]), str(NOTEBOOK), "exec"), namespace)
    return namespace["choose_precision"]


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), (torch.float16, True)), ((7, 0), (torch.float16, True)),
                                                      ((8, 0), (torch.bfloat16, False)), ((9, 0), (torch.bfloat16, False))])
def test_faked_cuda_devices(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what torch says on a T4 as well
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    dtype, use_scaler = choose_precision()(torch.device("cuda"))
    assert (dtype, bool(use_scaler)) == expected


def test_float32_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dtype, use_scaler = choose_precision()(torch.device("cpu"))
    assert dtype is None and not use_scaler
