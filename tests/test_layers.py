"""The package's layers: every import inside trainlab points down (or within its own
folder), never up. The table is the one drawn in the README's design section."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "trainlab"

# module (or folder) -> layer; a module may import only from lower layers or its own folder
LAYERS = {
    "trainlab._version": 1, "trainlab.errors": 1, "trainlab.text": 1,
    "trainlab.recipes": 2, "trainlab.metrics": 2, "trainlab.devices": 2,
    "trainlab.catalog": 2,  # the known data sets and what names one: constants, no I/O
    "trainlab.models": 3,
    "trainlab.config_checks": 3.5,  # the values checked (it builds no Config)
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


# ---------------------------------------------------------------- inside a folder: no cycle

def import_graph() -> dict[str, set[str]]:
    """module -> the trainlab modules it imports (module level or in a function), as files."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for _, target in imports(path):
            while target and target not in modules:  # `from pkg import name`: the package itself
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _packages_face(name: str, path: Path) -> bool:
    return path.name == "__init__.py"


def test_no_import_cycle_anywhere_in_the_package():
    """Inside a folder too, the modules have an order: no two import each other, directly or
    round a circle (a package's __init__ re-exporting its modules is its face, not a cycle)."""
    graph = import_graph()
    faces = {module_name(p) for p in SRC.rglob("__init__.py")}
    graph = {m: {t for t in ts if t not in faces} for m, ts in graph.items() if m not in faces}
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def function_level_imports(path: Path, text: str | None = None) -> list[tuple[int, str, str]]:
    """(line, target, the comment that explains it) for each import of trainlab's own modules
    inside a function; the comment is on the import's line, or the line above it."""
    source = path.read_text() if text is None else text
    lines = source.splitlines()
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                target = node.module or ""
                own = node.level > 0 or target.split(".")[0] == "trainlab"
            elif isinstance(node, ast.Import):
                target = ",".join(a.name for a in node.names)
                own = any(a.name.split(".")[0] == "trainlab" for a in node.names)
            else:
                continue
            if own:
                here, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
                note = here.partition("#")[2] or (above.strip()[1:] if above.strip().startswith("#") else "")
                found.append((node.lineno, target, note.strip()))
    return found


# a module that explains once, in its docstring, why it imports inside functions (the CLI's
# handlers: the library imports torch, and every --help answers without it)
_SAYS_ONCE = re.compile(r"imported inside (the |its )?(handlers?|functions?)|imports? .{0,40}inside (the |its )?(handlers?|functions?)")


def says_once(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return bool(_SAYS_ONCE.search(" ".join(doc.split())))


def test_a_function_level_import_of_trainlab_says_why():
    """Module-level imports are the rule; an import inside a function is kept only with a comment
    naming the cycle or the cost (e.g. torch for --help) it avoids: on its line, the line above,
    or once in the module's docstring."""
    silent = [f"{path.relative_to(SRC)}:{line} imports {target} inside a function without a comment saying why"
              for path in sorted(SRC.rglob("*.py")) if not says_once(path)
              for line, target, note in function_level_imports(path) if not note]
    assert not silent, "\n".join(silent)


def test_the_import_reader_sees_a_silent_function_level_import():
    code = "def f():\n    from trainlab.store import runs\n\n\ndef g():\n    # (torch: not for --help)\n    import trainlab.data\n"
    assert function_level_imports(SRC / "probe.py", code) == [(2, "trainlab.store", ""),
                                                             (7, "trainlab.data", "(torch: not for --help)")]
