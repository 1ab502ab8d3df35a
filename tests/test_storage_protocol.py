"""Every storage backend has every verb of `litedur.storage.Storage`, with the same parameters.

Checked by inspection, without opening a database, so a backend that lacks a verb or takes other
arguments fails here rather than deep inside the engine.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest

from litedur.storage import SQLiteStorage, Storage


def protocol_members() -> dict[str, str]:
    """Every member of `Storage` and its kind, "property" or "method"."""
    members = {}
    for name, value in vars(Storage).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            members[name] = "property"
        elif inspect.isfunction(value):
            members[name] = "method"
    return members


def instance_attributes(cls: type) -> set[str]:
    """Names a class (or a base of it) assigns as ``self.<name>`` in any of its methods."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    names.add(target.attr)
    return names


def _parameters(function: object) -> list[inspect.Parameter]:
    return list(inspect.signature(function).parameters.values())


def signature_problems(name: str, expected: object, found: object) -> list[str]:
    """How ``found`` fails to take the parameters of ``expected``: the same names, kinds and defaults
    in the same order; extra parameters only if a caller may leave them out."""
    wanted, given = _parameters(expected), _parameters(found)
    problems = []
    for index, parameter in enumerate(wanted):
        if index >= len(given):
            problems.append(f"{name}: missing parameter {parameter.name!r}")
            continue
        other = given[index]
        if other.name != parameter.name:
            problems.append(f"{name}: parameter {index} is {other.name!r}, not {parameter.name!r}")
        elif other.kind != parameter.kind:
            problems.append(f"{name}: {parameter.name!r} is {other.kind.description}, not {parameter.kind.description}")
        elif other.default != parameter.default:
            problems.append(f"{name}: {parameter.name!r} defaults to {other.default!r}, not {parameter.default!r}")
    for extra in given[len(wanted) :]:
        optional = extra.default is not inspect.Parameter.empty or extra.kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        )
        if not optional:
            problems.append(f"{name}: extra required parameter {extra.name!r}")
    return problems


_MISSING = object()


def backend_problems(backend: type) -> list[str]:
    """Everything ``backend`` lacks or takes differently from `Storage`."""
    problems = []
    assigned = instance_attributes(backend)
    for name, kind in protocol_members().items():
        found = inspect.getattr_static(backend, name, _MISSING)
        if kind == "property":
            if found is _MISSING and name not in assigned:
                problems.append(f"{name}: missing (a property or an attribute)")
            elif inspect.isfunction(found):
                problems.append(f"{name}: a method, not a property or an attribute")
            continue
        if found is _MISSING:
            problems.append(f"{name}: missing")
        elif isinstance(found, (staticmethod, classmethod, property)) or not inspect.isfunction(found):
            problems.append(f"{name}: not a plain method ({type(found).__name__})")
        else:
            problems.extend(signature_problems(name, vars(Storage)[name], found))
    return problems


def test_protocol_lists_the_verbs_the_library_calls():
    members = protocol_members()
    assert len(members) >= 70
    for verb in ("create_workflow", "record_step", "append_stream", "read_values", "finish_workflow",
                 "changes_since", "executor_lock", "executor_alive", "wake_source", "location"):  # fmt: skip
        assert verb in members
    assert members["location"] == "property"
    assert members["executor_lock"] == "method"


def test_sqlite_storage_has_every_verb_with_the_same_parameters():
    assert backend_problems(SQLiteStorage) == []


def test_every_public_method_of_sqlite_storage_is_in_the_protocol():
    # A verb added to SQLiteStorage is added to Storage too (with its guarantee), so that other
    # backends learn they need it.
    members = protocol_members()
    public = {
        name
        for name, value in vars(SQLiteStorage).items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))
    }
    assert sorted(public - set(members)) == []


def test_postgres_storage_has_every_verb_with_the_same_parameters():
    try:
        from litedur.storage.postgres import PostgresStorage
    except ImportError as exc:
        pytest.skip(f"the PostgreSQL backend does not import here: {exc}")
    assert backend_problems(PostgresStorage) == []


def test_a_backend_missing_a_verb_or_renaming_a_parameter_is_reported():
    class Partial(SQLiteStorage):
        append_one = None  # type: ignore[assignment]

        def record_step(self, step, executor_id):  # type: ignore[override]
            raise NotImplementedError

        def read_values(self, stream_id, offset, limit, first_read=True, workflow_id="?", *, extra):  # type: ignore[override]
            raise NotImplementedError

    problems = backend_problems(Partial)
    assert "append_one: not a plain method (NoneType)" in problems
    assert "record_step: parameter 1 is 'step', not 'row'" in problems
    assert "read_values: 'first_read' defaults to True, not False" in problems
    assert "read_values: extra required parameter 'extra'" in problems

    class Bare:
        pass

    missing = backend_problems(Bare)
    assert "location: missing (a property or an attribute)" in missing
    assert "create_workflow: missing" in missing
