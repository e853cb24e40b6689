"""notebooks/CONCEPTS.md (linked from notebooks/README.md) maps the course module's 27 concepts, its analogies and its checks to notebook
cells (issue 16): every cell id named there exists and holds the phrase of its row. The cells named as
exercising a concept are check cells of a learner-written exercise or questions (markdown with the answer
folded in <details>), and each concept has at least one such check whose exercise has wrong solutions
(mutants) in tests/test_notebook_checks.py that it must fail (issue 30: a demo cell that asserts on code
the notebook gives exercises nothing)."""

from __future__ import annotations

import re

import nbformat
import pytest
from notebook_runner import NOTEBOOK_DIR, exercise_of, notebooks, tags
from test_notebook_checks import MUTANTS

README = NOTEBOOK_DIR / "CONCEPTS.md"  # linked from notebooks/README.md
CELL_ID = re.compile(r"`(s23[123]-[0-9a-z]+)`")


def cells_by_id():
    out = {}
    for path in notebooks():
        for cell in nbformat.read(path, as_version=4).cells:
            assert cell.id not in out, f"cell id {cell.id} is used twice"
            out[cell.id] = cell
    return out


def table_rows(first_column: re.Pattern):
    rows = []
    for line in README.read_text(encoding="utf-8").splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cols and first_column.fullmatch(cols[0]):
            rows.append(cols)
    return rows


def phrase_of(col: str) -> str:
    assert col.startswith("`") and col.endswith("`"), col
    return col[1:-1]


CONCEPTS = table_rows(re.compile(r"\d+"))
DEVICES = table_rows(re.compile(r"analogy|negative example|question"))


def exercises(cell) -> bool:
    """A check cell of an exercise (the learner's code is what it checks), or a question answered in words."""
    if cell.cell_type == "code":
        return "check" in tags(cell) and exercise_of(cell) is not None
    return "<details>" in cell.source


def checks_with_mutants() -> set[str]:
    """Ids of the check cells whose exercise has wrong solutions in tests/test_notebook_checks.py."""
    out = set()
    for path in notebooks():
        for cell in nbformat.read(path, as_version=4).cells:
            if "check" in tags(cell) and MUTANTS.get(path.name, {}).get(exercise_of(cell)):
                out.add(cell.id)
    return out


def test_all_27_concepts_are_mapped():
    assert [int(r[0]) for r in CONCEPTS] == list(range(1, 28))


@pytest.mark.parametrize("row", CONCEPTS, ids=lambda r: r[0])
def test_concept_row(row):
    cells = cells_by_id()
    _, concept, taught, phrase, exercised = row
    taught_ids, exercised_ids = CELL_ID.findall(taught), CELL_ID.findall(exercised)
    assert taught_ids and exercised_ids, f"concept {concept}: name cells in both columns"
    missing = [i for i in taught_ids + exercised_ids if i not in cells]
    assert not missing, f"concept {concept}: no such cells {missing}"
    text = " ".join(" ".join(cells[i].source.split()) for i in taught_ids).lower()
    assert phrase_of(phrase).lower() in text, f"concept {concept}: {phrase} is not in {taught_ids}"
    not_checks = [i for i in exercised_ids if not exercises(cells[i])]
    assert not not_checks, f"concept {concept}: {not_checks} are neither exercise checks nor questions"
    assert set(exercised_ids) & checks_with_mutants(), \
        f"concept {concept}: none of {exercised_ids} is the check of an exercise with wrong solutions (mutants)"


@pytest.mark.parametrize("row", DEVICES, ids=lambda r: phrase_of(r[2]))
def test_analogy_and_question_rows(row):
    cells = cells_by_id()
    kind, where, phrase = row
    ids = CELL_ID.findall(where)
    assert ids and all(i in cells for i in ids), f"{phrase}: cells {ids}"
    for i in ids:
        assert phrase_of(phrase).lower() in " ".join(cells[i].source.split()).lower(), f"{phrase} is not in cell {i}"
        if kind == "question":
            assert "<details>" in cells[i].source, f"the question in {i} has no folded answer"


def test_the_module_devices_are_all_listed():
    listed = {phrase_of(r[2]).lower() for r in DEVICES}
    for phrase in ["snapshot of all the knobs", "architecture in code, values in file",
                   "giving an experienced pilot amnesia", "same heartbeat, new instruments",
                   "assembly line with four stations", "micrometer -> ruler -> tape measure",
                   "not magic -- automation", "the scissors pattern", "the 5% gap", "baseline, then improve"]:
        assert phrase in listed, phrase
