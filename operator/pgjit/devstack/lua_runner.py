"""Build and run tests/argocd-health: pgjit's GitOps health rules evaluated by the real engines.

Argo CD runs custom health checks in gopher-lua, a Lua 5.1 written in Go, and Flux judges
custom resources with kstatus from sigs.k8s.io/cli-utils. A Lua interpreter from PyPI (Lua 5.4,
with the string library always open) or a Python port of kstatus would let the checks pass here
and fail in a cluster, so tests run both through a small Go program linked with the same
libraries, built from the Go module proxy like the control-plane binaries
(tests/controlplane/NOTES.md).

The binary lands in ``.cache/bin/argocd-health-lua-<gopher-lua version>-<source hash>``: the hash
covers go.mod, go.sum and main.go, so an edit to any of them builds a new binary and a warm cache
costs one ``stat``. Building it took 29 s from an empty Go build cache on the 2-core machine,
13 s with the standard library already compiled, and 0.5 s to relink.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kube_binaries import exclusive_lock, go_executable, find_repo_root

MODULE_DIR = Path("tests") / "argocd-health"
SOURCES = ("go.mod", "go.sum", "main.go")
#: Seconds a run may take; the program itself stops a script after one second, as Argo CD does.
RUN_TIMEOUT = 30


class LuaRunnerError(RuntimeError):
    """The runner could not be built or failed to evaluate an object."""


@dataclass(frozen=True)
class Verdict:
    """What a GitOps tool concludes about one object."""

    status: str
    message: str
    #: Why an Argo CD check came out Unknown (a script error); empty otherwise.
    error: str = ""


def binary_path(repo_root: Path | None = None) -> Path:
    """Where the runner for the current sources lives (built or not)."""
    root = repo_root or find_repo_root()
    module = root / MODULE_DIR
    go_mod = (module / "go.mod").read_text()
    match = re.search(r"^\s*github\.com/yuin/gopher-lua\s+(v\S+)", go_mod, re.MULTILINE)
    if match is None:
        raise LuaRunnerError(f"{module / 'go.mod'} does not require github.com/yuin/gopher-lua")
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (module / name).read_bytes() + b"\0")
    return root / ".cache" / "bin" / f"argocd-health-lua-{match[1]}-{digest.hexdigest()[:10]}"


def ensure_lua_runner(repo_root: Path | None = None) -> Path:
    """The runner binary, built first if missing (a few seconds with a warm Go build cache)."""
    root = repo_root or find_repo_root()
    target = binary_path(root)
    if os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.parent / ".argocd-health.lock"):
        if os.access(target, os.X_OK):  # built by another process while this one waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent)) / target.name
        # -mod=mod lets a fresh checkout resolve go.sum entries through the module proxy.
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
        command = [go_executable(), "build", "-trimpath", "-buildvcs=false",
                   "-ldflags=-s -w", "-o", str(staging), "."]
        built = subprocess.run(command, cwd=root / MODULE_DIR, env=env, capture_output=True,
                               text=True, stdin=subprocess.DEVNULL)
        if built.returncode != 0:
            raise LuaRunnerError(f"go build in {MODULE_DIR} failed (exit {built.returncode}):\n"
                                 f"{built.stdout}{built.stderr}")
        # Renamed into place only once complete, so a crash never leaves half a binary.
        os.replace(staging, target)
        staging.parent.rmdir()
    return target


def _run(args: list[str], obj: dict[str, Any], binary: Path | None) -> Verdict:
    runner = binary or ensure_lua_runner()
    done = subprocess.run([str(runner), *args], input=json.dumps(obj), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)
    if done.returncode != 0:
        raise LuaRunnerError(f"{runner.name} {' '.join(args)} failed: {done.stderr.strip()}")
    out = json.loads(done.stdout)
    return Verdict(out["status"], out.get("message", ""), out.get("error", ""))


def argocd_health(script: Path, obj: dict[str, Any], *, binary: Path | None = None) -> Verdict:
    """Argo CD's health of ``obj`` under the custom Lua check ``script``."""
    return _run(["lua", str(script)], obj, binary)


def kstatus(obj: dict[str, Any], *, binary: Path | None = None) -> Verdict:
    """kstatus's status of ``obj`` (Current, InProgress, Failed, Terminating), as Flux reads it."""
    return _run(["kstatus"], obj, binary)


def main() -> int:
    """Build the runner if needed and print its path (for the Makefile)."""
    print(ensure_lua_runner())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
