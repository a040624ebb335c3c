"""Running the ``pgjit`` command line in tests: as a control-plane identity, with or without a
terminal, and the RBAC a person running it gets in a namespace."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import kubernetes
import pexpect

USER = "alice"
PROMPT = "app=> "
#: Generous for a busy 2-core machine; every wait below ends as soon as its condition holds.
TIMEOUT = 60


def grant_cli_access(api: kubernetes.client.ApiClient, namespace: str, user: str = USER) -> None:
    """What a person running the CLI needs in a namespace, and nothing on Secrets."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "pgjit-cli-user"},
        "rules": [
            {"apiGroups": ["pgjit.dev"], "resources": ["databasesessions"],
             "verbs": ["create", "get", "list", "watch", "delete"]},
            {"apiGroups": ["pgjit.dev"], "resources": ["databases", "roles"],
             "verbs": ["get", "list"]},
        ]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": f"pgjit-cli-{user}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "pgjit-cli-user"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


def cli_env(control_plane, identity: str = USER) -> dict[str, str]:
    env = dict(os.environ, KUBECONFIG=str(control_plane.kubeconfig(identity)),
               PYTHONUNBUFFERED="1", PSQLRC="/dev/null", PAGER="cat", PSQL_PAGER="cat")
    for name in ("PGPASSWORD", "PGHOST", "PGUSER", "PGSERVICE", "PGSERVICEFILE", "PGPASSFILE"):
        env.pop(name, None)
    return env


def run_cli(control_plane, *args: str, identity: str = USER, timeout: float = TIMEOUT
            ) -> subprocess.CompletedProcess[str]:
    """``pgjit ARGS`` as a subprocess without a terminal."""
    return subprocess.run([sys.executable, "-m", "pgjit.cli", *args],
                          env=cli_env(control_plane, identity), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def spawn_connect(control_plane, namespace: str, *args: str, database: str = "db",
                  runtime_dir: Path | None = None) -> pexpect.spawn:
    """``pgjit connect`` in a pseudo-terminal, as a person would run it; ``.transcript`` holds
    everything it printed. ``runtime_dir``: its ``$XDG_RUNTIME_DIR``."""
    env = cli_env(control_plane)
    if runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    child = pexpect.spawn(sys.executable,
                          ["-m", "pgjit.cli", "connect", database, "--db-name", "app",
                           "-n", namespace, *args],
                          env=env, encoding="utf-8", timeout=TIMEOUT,
                          dimensions=(40, 200))
    child.transcript = io.StringIO()
    child.logfile_read = child.transcript
    return child


def finish(child: pexpect.spawn) -> int:
    """Wait for the process to exit; its exit status, or 128+N if a signal N killed it."""
    child.expect(pexpect.EOF)
    child.wait()
    return child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus


def _parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (after the parenthesised command, which may hold spaces) is the parent's pid.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def child_pids(pid: int) -> list[int]:
    """Direct child processes of ``pid``."""
    return [child for child, parent in _parent_pids().items() if parent == pid]


def descendant_pids(pid: int) -> set[int]:
    """Every process below ``pid``."""
    parents = _parent_pids()
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.add(child)
                todo.append(child)
    return found


def is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
