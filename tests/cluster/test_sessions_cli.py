"""`pgjit sessions` against the real API server, as alice with a person's RBAC."""

from __future__ import annotations

import json

import yaml

from operatorkit import make_env
from clikit import grant_cli_access, run_cli


def test_sessions_table_json_yaml_and_scope(control_plane, kube_api, namespace, postgres16,
                                            operator):
    env = make_env(kube_api, namespace, postgres16, operator)
    env.role("analysts", "best_effort_drop")
    grant_cli_access(kube_api, namespace)
    user = "carol-sessions-cli"  # server-wide PostgreSQL name: unique to this test
    env.open_session("active-one", user)
    env.create("DatabaseSession", "refused-one", env.session_spec("dave", groups=()))
    env.wait_phase("refused-one", "Failed")
    try:
        table = run_cli(control_plane, "sessions", "-n", namespace)
        assert table.returncode == 0, table.stderr
        header, *rows = table.stdout.splitlines()
        assert header.split()[:5] == ["NAME", "PHASE", "USER", "DATABASE", "DBNAME"]
        by_name = {row.split()[0]: row for row in rows}
        assert by_name.keys() == {"active-one", "refused-one"}
        assert by_name["active-one"].split()[1:6] == ["Active", user, "db", "app", user]
        assert "(in 59m" in by_name["active-one"] or "(in 1h" in by_name["active-one"]
        assert by_name["refused-one"].split()[1:3] == ["Failed:", "AccessDenied"]

        records = json.loads(run_cli(control_plane, "sessions", "-n", namespace, "-o",
                                     "json").stdout)
        active = next(r for r in records if r["name"] == "active-one")
        status = env.get("DatabaseSession", "active-one")["status"]
        assert (active["phase"], active["user"], active["databaseRoles"], active["expiresAt"]) \
            == ("Active", user, ["reader"], status["expiresAt"])
        as_yaml = run_cli(control_plane, "sessions", "-n", namespace, "-o", "yaml")
        assert yaml.safe_load(as_yaml.stdout) == records

        # alice has none of her own here; and she may not list other namespaces.
        mine = run_cli(control_plane, "sessions", "-n", namespace, "--mine", "-o", "json")
        assert json.loads(mine.stdout) == []
        everywhere = run_cli(control_plane, "sessions", "-A")
        assert everywhere.returncode == 1 and "403" in everywhere.stderr

        admin = run_cli(control_plane, "sessions", "-A", identity="admin")
        assert admin.returncode == 0, admin.stderr
        assert admin.stdout.startswith("NAMESPACE")
        assert any(line.split()[:2] == [namespace, "active-one"]
                   for line in admin.stdout.splitlines())
    finally:
        env.delete("DatabaseSession", "active-one")
        env.wait_gone("DatabaseSession", "active-one")
