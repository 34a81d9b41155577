"""Imports point one way (DESIGN.md, "Layers"; the contracts: [tool.importlinter] in
pyproject.toml): the tree keeps the contracts, and they have teeth: an upward import, even one
inside a function, an import of a folder installed under another name (bench/ is mini_llm.bench),
a cycle inside one package, or the model importing a backend past the ops seam breaks them. CI runs the same check as `python .ci/lint_imports.py`.
"""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "lint_imports", Path(__file__).resolve().parent.parent / ".ci" / "lint_imports.py")
lint_imports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lint_imports)


def test_the_tree_keeps_the_contracts(tmp_path):
    lint_imports.lay_out(tmp_path)
    status, report = lint_imports.lint(tmp_path)
    assert status == 0, report


@pytest.mark.parametrize("module, added, broken", [
    ("mini_llm/model.py", "def f():\n    from .train import train",
     "mini_llm.model is not allowed to import mini_llm.train"),
    ("mini_llm/ops/validation.py", "from mini_llm.bench.run import DTYPES",
     "mini_llm.ops is not allowed to import mini_llm.bench"),
    ("mini_llm/tokenizer/pretokenize.py", "from . import train",
     "No cycles are allowed in mini_llm.tokenizer"),
    ("mini_llm/model.py", "from .ops.reference import widen",
     "Illegal imports of protected package mini_llm.ops.reference"),
], ids=["upward-in-a-function", "upward-into-bench", "cycle-in-a-package", "past-the-seam"])
def test_the_contracts_catch_a_wrong_import(tmp_path, module, added, broken):
    lint_imports.lay_out(tmp_path)  # a copy: the tree itself is left alone
    with open(tmp_path / module, "a") as f:
        f.write(f"\n\n{added}\n")
    status, report = lint_imports.lint(tmp_path)
    assert status != 0 and broken in report, report
