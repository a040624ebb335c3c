"""`pgjit dev` as a newcomer uses it: start it in a terminal, run exactly the commands it prints,
get a psql prompt as the provisioned user, then Ctrl-C and find nothing left running.

The stack brings its own control plane, PostgreSQL 16 and operator, so this test needs none of
the shared fixtures (and does not disturb them).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pexpect

from clikit import descendant_pids, finish, is_alive
from operatorkit import wait_for

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 180  # a cold start builds nothing, but a busy 2-core machine is slow
TIMEOUT = 60


def _printed_command(text: str, program: str, subcommand: str) -> list[str]:
    line = next(line for line in text.splitlines()
                if line.strip().startswith(program) and f" {subcommand} " in line)
    return shlex.split(line.split("#", 1)[0])


def readme_terminal_two(state_dir: Path) -> str:
    """The README's commands after ``make dev`` (terminal 2), as a shell script.

    Only the kubeconfig directory is moved to this test's own (``$PWD/.cache/dev`` would collide
    with a developer's running ``make dev``); every other word is the README's.
    """
    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S)
                 if b.lstrip().startswith("make dev ") and "pgjit connect" in b)
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()[1:]]
    script = "\n".join(line for line in lines if line)
    assert "$PWD/.cache/dev/" in script and ".venv/bin/pgjit connect" in script, script
    return script.replace("$PWD/.cache/dev/", f"{state_dir}/")


def test_clone_to_psql_prompt_and_ctrl_c_leaves_nothing(tmp_path):
    state_dir = tmp_path / "dev"
    stack = pexpect.spawn(sys.executable, ["-m", "pgjit.cli", "dev", "--state-dir",
                                           str(state_dir)],
                          encoding="utf-8", timeout=START_TIMEOUT, dimensions=(50, 200))
    try:
        stack.expect("pgjit local stack is up")
        stack.expect(r"Look around as the cluster admin:\r?\n(.*)\r?\n")
        printed = stack.before + stack.after
        processes = descendant_pids(stack.pid)
        assert len(processes) >= 4, processes  # etcd, kube-apiserver, postgres, the operator

        kubeconfig = re.search(r"export KUBECONFIG=(\S+)", printed).group(1)
        assert Path(kubeconfig).parent == state_dir
        assert oct(Path(kubeconfig).stat().st_mode & 0o777) == "0o600"
        pgjit = str(Path(sys.executable).parent / "pgjit")
        env = dict(os.environ, KUBECONFIG=kubeconfig, PSQLRC="/dev/null", PAGER="cat")
        for name in ("PGPASSWORD", "PGHOST", "PGUSER", "PGSERVICE", "PGSERVICEFILE"):
            env.pop(name, None)

        explain = subprocess.run(_printed_command(printed, pgjit, "explain"), env=env,
                                 capture_output=True, text=True, timeout=TIMEOUT)
        assert explain.returncode == 0, explain.stderr
        assert "reader" in explain.stdout and "developers" in explain.stdout, explain.stdout

        # Terminal 2, exactly as the README shows it, from the checkout.
        script = readme_terminal_two(state_dir)
        assert _printed_command(printed, pgjit, "connect")[1:] == \
            shlex.split(script.splitlines()[-1])[1:], "make dev and the README disagree"
        readme_env = {k: v for k, v in env.items() if k != "KUBECONFIG"}  # the README sets it
        psql = pexpect.spawn("bash", ["--norc", "--noprofile", "-c", script], cwd=str(REPO),
                             env=readme_env, encoding="utf-8", timeout=TIMEOUT,
                             dimensions=(40, 200))
        psql.expect("orders=> ")
        psql.sendline("SELECT current_user, string_agg(item, ',' ORDER BY id) FROM orders;")
        psql.expect(r"alice\s+\|\s+coffee,tea")
        psql.expect("orders=> ")
        psql.sendline("INSERT INTO orders (item) VALUES ('cake');")
        psql.expect("permission denied for table orders")
        psql.sendline(r"\q")
        assert finish(psql) == 0

        kubectl = next(line for line in printed.splitlines() if " get pgjit" in line)
        listed = subprocess.run(shlex.split(kubectl.split("#", 1)[0]), capture_output=True,
                                text=True, timeout=TIMEOUT)
        assert listed.returncode == 0, listed.stderr
        assert "database.pgjit.dev/orders" in listed.stdout
        assert "databasesession" not in listed.stdout  # connect ended (deleted) its session

        # Ctrl-C in the stack's terminal: the whole foreground group gets SIGINT, as for a user.
        stack.sendintr()
        stack.expect("stopping the local stack")
        assert finish(stack) == 0
        wait_for("every process of the stack to exit",
                 lambda: [p for p in processes if is_alive(p)] == [], TIMEOUT)
        assert not state_dir.exists()
        log_line = re.search(r"operator log\s*:\s*(\S+)", printed).group(1)
        assert not Path(log_line).parent.exists(), "the stack's working directory was left"
    finally:
        if stack.isalive():
            stack.kill(9)
