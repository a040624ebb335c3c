"""The operator's settings: read once from the environment, validated, never written back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pgjit import settings as settings_module
from pgjit.settings import Settings, SettingsError

SOURCE = Path(settings_module.__file__).resolve().parent


def test_defaults_without_any_variable():
    settings = Settings.load({})
    assert settings == Settings()
    assert (settings.health_seconds, settings.revalidate_seconds, settings.expiry_tick_seconds,
            settings.threads, settings.secret_access) == (60.0, 30.0, 1.0, 16, True)
    assert settings.traits_configmap_ref is None
    assert settings.metrics_port is None and not settings.namespaced


def test_variables_are_parsed_into_typed_fields():
    settings = Settings.load({"PGJIT_HEALTH_SECONDS": "5", "PGJIT_THREADS": "4",
                              "PGJIT_SECRET_ACCESS": "False", "PGJIT_TRAITS_CONFIGMAP": "traits",
                              "PGJIT_NAMESPACE": "pgjit-system", "PGJIT_METRICS_PORT": "9464",
                              "POD_NAME": "pgjit-0"})
    assert settings.health_seconds == 5.0 and settings.threads == 4
    assert settings.secret_access is False
    assert settings.traits_configmap_ref == ("pgjit-system", "traits")
    assert settings.metrics_port == 9464 and settings.pod_name == "pgjit-0"


@pytest.mark.parametrize("variable, value", [
    ("PGJIT_HEALTH_SECONDS", "soon"), ("PGJIT_HEALTH_SECONDS", "0"),
    ("PGJIT_EXPIRY_TICK_SECONDS", "nan"), ("PGJIT_THREADS", "-1"),
    ("PGJIT_METRICS_PORT", "70000"), ("PGJIT_CONCURRENT_OPENINGS", "0"),
    ("PGJIT_CONCURRENT_ENDINGS", "many"), ("PGJIT_OPENING_QUEUE", "0"),
    ("PGJIT_STEWARD_ROLES", "-1"), ("PGJIT_STEWARD_ROLES", "101")])
def test_an_invalid_value_is_refused_naming_its_variable(variable, value):
    with pytest.raises(SettingsError, match=variable):
        Settings.load({variable: value})


def test_the_bounds_on_bursts_are_read_from_the_environment():
    settings = Settings.load({"PGJIT_CONCURRENT_OPENINGS": "8", "PGJIT_CONCURRENT_ENDINGS": "3",
                              "PGJIT_OPENING_QUEUE": "20"})
    assert (settings.concurrent_openings, settings.concurrent_endings,
            settings.opening_queue) == (8, 3, 20)


def test_command_line_flags_win_over_the_environment():
    settings = Settings.load({"PGJIT_METRICS_PORT": "9000"}, metrics_port=9464, namespaced=None)
    assert settings.metrics_port == 9464
    assert settings.namespaced is False  # a flag not given leaves the environment's value


def test_loading_leaves_the_environment_alone(monkeypatch):
    monkeypatch.delenv("PGJIT_METRICS_PORT", raising=False)
    import os
    before = dict(os.environ)
    Settings.load(os.environ, metrics_port=9464, namespaced=True)
    assert dict(os.environ) == before


def _environ_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Attribute)
                    and target.value.attr == "environ"):
                found.append(f"{path.relative_to(SOURCE)}:{node.lineno}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("putenv", "setdefault", "update")
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "environ"):
            found.append(f"{path.relative_to(SOURCE)}:{node.lineno}")
    return found


def test_no_operator_module_writes_the_environment():
    # The dev stack starts other processes with environments of their own; the operator does not.
    writes = [w for p in sorted(SOURCE.rglob("*.py")) if "devstack" not in p.parts
              for w in _environ_writes(p)]
    assert not writes


def _environ_reads(path: Path) -> list[str]:
    """``environ.get("PGJIT_…")``, ``environ["PGJIT_…"]`` and ``getenv("PGJIT_…")``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        key = None
        if isinstance(node, ast.Call) and node.args and (
                (isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv")
                 and (node.func.attr == "getenv" or (isinstance(node.func.value, ast.Attribute)
                                                     and node.func.value.attr == "environ")))):
            key = node.args[0]
        elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
              and node.value.attr == "environ"):
            key = node.slice
        if isinstance(key, ast.Constant) and str(key.value).startswith("PGJIT_"):
            found.append(f"{path.relative_to(SOURCE)}:{node.lineno}: {key.value}")
    return found


def test_only_the_settings_module_reads_operator_variables():
    reads = [r for p in sorted(SOURCE.rglob("*.py")) if "devstack" not in p.parts
             for r in _environ_reads(p)]
    assert not reads


def test_leader_election_defaults_are_controller_runtimes():
    settings = Settings.load({"PGJIT_LEADER_ELECTION_LEASE": "pgjit", "PGJIT_NAMESPACE": "ops"})
    assert (settings.lease_duration_seconds, settings.renew_deadline_seconds,
            settings.retry_period_seconds, settings.leader_probe) == (15.0, 10.0, 2.0, True)


def test_leader_election_durations_read_as_the_chart_writes_them():
    settings = Settings.load({"PGJIT_LEADER_ELECTION_LEASE": "pgjit", "PGJIT_NAMESPACE": "ops",
                              "PGJIT_LEADER_ELECTION_LEASE_DURATION": "1m",
                              "PGJIT_LEADER_ELECTION_RENEW_DEADLINE": "20s",
                              "PGJIT_LEADER_ELECTION_RETRY_PERIOD": "1500ms"})
    assert (settings.lease_duration_seconds, settings.renew_deadline_seconds,
            settings.retry_period_seconds) == (60.0, 20.0, 1.5)


@pytest.mark.parametrize("environ, variable", [
    # The leader must give up before a standby may take over, and retry before giving up.
    ({"PGJIT_LEADER_ELECTION_LEASE_DURATION": "10"}, "PGJIT_LEADER_ELECTION_LEASE_DURATION"),
    ({"PGJIT_LEADER_ELECTION_RETRY_PERIOD": "9"}, "PGJIT_LEADER_ELECTION_RENEW_DEADLINE"),
    ({"PGJIT_NAMESPACE": ""}, "PGJIT_NAMESPACE"),
    ({"PGJIT_LEADER_ELECTION_RETRY_PERIOD": "2h"}, "PGJIT_LEADER_ELECTION_RETRY_PERIOD"),
])
def test_inconsistent_leader_election_settings_are_refused(environ, variable):
    with pytest.raises(SettingsError, match=variable):
        Settings.load({"PGJIT_LEADER_ELECTION_LEASE": "pgjit", "PGJIT_NAMESPACE": "ops",
                       **environ})


def test_sharding_needs_leader_election():
    with pytest.raises(SettingsError, match="PGJIT_LEADER_ELECTION_LEASE"):
        Settings.load({"PGJIT_SHARD_DATABASE_SELECTOR": "shard=a"})
    assert Settings.load({"PGJIT_SHARD_DATABASE_SELECTOR": "shard=a", "PGJIT_NAMESPACE": "ops",
                          "PGJIT_LEADER_ELECTION_LEASE": "pgjit"}).shard_database_selector
