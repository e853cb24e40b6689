"""The package's layers: every import inside trainlab points down (or within its own
folder), never up. The table is the one drawn in the README's design section."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "trainlab"

# module (or folder) -> layer; a module may import only from lower layers or its own folder
LAYERS = {
    "trainlab._version": 1, "trainlab.errors": 1, "trainlab.text": 1,
    "trainlab.recipes": 2, "trainlab.metrics": 2, "trainlab.devices": 2,
    "trainlab.catalog": 2,  # the known data sets and what names one: constants, no I/O
    "trainlab.models": 3,
    "trainlab.config": 4,
    "trainlab.store": 5,
    "trainlab.data": 6, "trainlab.plots": 6,
    "trainlab.inference": 7,
    "trainlab.training": 8,
    "trainlab.export": 8,  # a trained model out (uses inference, data, store); analysis' predict and inspect read it
    "trainlab.tune": 8.5,  # sweeps train (training) and analysis' report reads them: between the two
    "trainlab.analysis": 9,
    "trainlab.api": 10, "trainlab.serve": 10,
    "trainlab.tune.experiment": 10,  # trains the ladder, then writes analysis' report
    "trainlab.cli": 11, "trainlab": 11,
    "trainlab.__main__": 12,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> tuple[int, str]:
    """(layer, the LAYERS key that placed it): the longest matching prefix."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key], key
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the README)")


def imports(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """Every trainlab module a file imports, at module level or inside a function."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "trainlab"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "trainlab":
                continue
            for a in node.names:  # `from trainlab.store import runs` imports trainlab.store.runs
                sub = f"{target}.{a.name}"
                is_module = (SRC.parent / sub.replace(".", "/")).with_suffix(".py").exists() or \
                    (SRC.parent / sub.replace(".", "/")).is_dir()
                found.append((node.lineno, sub if is_module else target))
    return sorted(set(found))


def test_every_import_points_down_or_within_its_folder():
    backward = []
    for path in sorted(SRC.rglob("*.py")):
        me = module_name(path)
        my_layer, my_key = layer_of(me)
        for line, target in imports(path):
            their_layer, their_key = layer_of(target)
            if their_layer < my_layer or their_key == my_key:
                continue
            backward.append(f"{path.relative_to(SRC)}:{line} imports {target} "
                            f"(layer {their_layer}, from layer {my_layer})")
    assert not backward, "imports that point up or sideways:\n" + "\n".join(backward)


def test_every_module_is_in_a_layer():
    for path in SRC.rglob("*.py"):
        layer_of(module_name(path))


def test_the_checker_sees_a_backward_arrow():
    # the walker itself: a lower module importing a higher one is found, also inside a
    # function, and in both spellings
    where = SRC / "store" / "probe.py"
    code = "def f():\n    from trainlab.training import session\n    from ..analysis.report import write_report\n"
    found = [t for _, t in imports(where, code)]
    assert found == ["trainlab.training.session", "trainlab.analysis.report"]
    assert all(layer_of(t)[0] > layer_of(module_name(where))[0] for t in found)
