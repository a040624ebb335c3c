"""Every phase and reason is spelled once, in pgjit/vocabulary.py.

A word spelled in several places drifts: a phase renamed in one module and not another is a
session the lease loop never ends. So no module but the vocabulary may hold a phase or a reason
as a string literal (docstrings, which are prose, aside); code names the enum member instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pgjit import api, vocabulary
from pgjit.vocabulary import Reason, SessionPhase, TeardownAction

SOURCE = Path(vocabulary.__file__).resolve().parent
WORDS = {m.value for enum in (SessionPhase, Reason, TeardownAction) for m in enum}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


#: Where a reason goes, per callee: (positional index, keyword). A string constant there is a
#: reason spelled outside the vocabulary, even one the vocabulary does not know yet.
REASON_ARGUMENT = {
    "Outcome": (1, "reason"),         # handlers.decisions.Outcome(phase, reason, message)
    "report": (1, "reason"),          # handlers.databases report(ready, reason, message)
    "set_conditions": (3, "reason"),  # handlers.status.set_conditions(body, status, ready, reason)
    "_set_conditions": (3, "reason"),
    "ready": (2, "reason"),           # core.conditions.ready/stalled/in_progress/not_ready
    "stalled": (2, "reason"),
    "in_progress": (2, "reason"),
    "not_ready": (2, "reason"),
    "EngineError": (0, "reason"),
    "_Refusal": (0, "reason"),
    "event": (None, "reason"),        # kopf.event / kopf.warn
    "warn": (None, "reason"),
}


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _reason_arguments(tree: ast.AST) -> list[ast.expr]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) in REASON_ARGUMENT:
            position, keyword = REASON_ARGUMENT[_callee(node)]
            if position is not None and len(node.args) > position:
                found.append(node.args[position])
            found += [k.value for k in node.keywords if k.arg == keyword]
    return found


def literal_words(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    literals = [node for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.value in WORDS and id(node) not in skip]
    literals += [node for argument in _reason_arguments(tree) for node in ast.walk(argument)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)
                 and node not in literals]
    return [f"{path.relative_to(SOURCE)}:{node.lineno}: {node.value!r}" for node in literals]


@pytest.mark.parametrize("path", sorted(p for p in SOURCE.rglob("*.py")
                                        if p.name != "vocabulary.py"),
                         ids=lambda p: str(p.relative_to(SOURCE)))
def test_no_phase_or_reason_literal_outside_the_vocabulary(path: Path):
    assert not literal_words(path)


def test_the_checker_sees_a_literal(tmp_path: Path):
    # Guards the check itself: a scan that saw nothing would pass vacuously.
    sample = SOURCE / "_vocabulary_probe.py"
    try:
        sample.write_text('"""Active is fine here."""\nPHASE = "Active"\n'
                          'kopf.warn(body, reason="SomethingNew", message="m")\n',
                          encoding="utf-8")
        assert literal_words(sample) == ["_vocabulary_probe.py:2: 'Active'",
                                         "_vocabulary_probe.py:3: 'SomethingNew'"]
    finally:
        sample.unlink()


def test_the_api_exports_the_vocabulary_itself():
    # One class, not a copy: comparisons and isinstance checks hold across layers.
    assert api.SessionPhase is vocabulary.SessionPhase
    assert api.TeardownAction is vocabulary.TeardownAction
    assert api.UserProvisioning is vocabulary.UserProvisioning
    assert api.CredentialsType is vocabulary.CredentialsType
    assert api.SSLMode is vocabulary.SSLMode
