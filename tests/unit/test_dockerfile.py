"""The operator image's Dockerfile follows the rules the chart relies on: a builder stage makes
the wheel, the final python:3.11-slim stage carries only the virtualenv, runs as the numeric
non-root user the chart's securityContext names, and starts ``pgjit run``. These checks read the
file; the node layer (tests/node) builds it and runs the image on a kubelet."""

from __future__ import annotations

import fnmatch
import json
import pathlib
import re
import shlex
from dataclasses import dataclass, field

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "libpq-dev", "python3-dev", "cc ")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in filter(None, (raw.strip() for raw in logical.splitlines())):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 else None))
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse((REPO / "Dockerfile").read_text())[1]


def test_two_stages_on_python_311_slim(stages) -> None:
    assert len(stages) == 2
    builder, final = stages
    assert builder.name == "builder"
    assert builder.base == final.base == "python:3.11-slim"


def test_builder_builds_a_wheel_into_a_virtualenv(stages) -> None:
    runs = " ".join(stages[0].all("RUN"))
    assert "pip wheel" in runs or "-m build" in runs
    assert "python -m venv /opt/pgjit" in runs
    assert "/opt/pgjit/bin/pip install" in runs and "/wheels/" in runs


def test_builder_installs_the_hash_pinned_lock(stages) -> None:
    runs = " ".join(stages[0].all("RUN"))
    assert "--require-hashes" in runs and "-r requirements/runtime.txt" in runs
    # The operator's own wheel must not pull in anything the lock does not pin.
    assert "--no-deps /wheels/" in runs


def test_final_stage_has_no_build_tools(stages) -> None:
    final = stages[-1]
    runs = " ".join(final.all("RUN"))
    assert not any(word in runs for word in ("apt", "pip", "curl", "wget")), (
        "the final stage installs nothing; the builder does"
    )
    copies = final.all("COPY")
    assert copies == ["--from=builder /opt/pgjit /opt/pgjit"], copies
    text = " ".join(arg for _, arg in final.instructions).lower()
    assert not [tool for tool in BUILD_TOOLS if tool in text]


def test_final_stage_runs_pgjit_as_a_numeric_non_root_user(stages) -> None:
    final = stages[-1]
    [user] = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or (gid.isdigit() and int(gid) > 0))
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["pgjit"]
    assert json.loads(final.all("CMD")[-1]) == ["run"]
    assert "/opt/pgjit/bin" in " ".join(final.all("ENV"))
    # The chart's restricted securityContext names the same user.
    deployment = (REPO / "charts/pgjit/templates/deployment.yaml").read_text()
    assert f"runAsUser: {uid}" in deployment
    assert f"runAsGroup: {gid or uid}" in deployment


def test_final_stage_names_its_user_in_passwd_and_group(stages) -> None:
    # Without an entry getpass.getuser() raises KeyError (Kopf calls it when POD_ID is unset).
    final = stages[-1]
    [user] = final.all("USER")
    uid, _, gid = user.partition(":")
    runs = " ".join(final.all("RUN"))
    passwd = re.search(r"'([^':]+):x:(\d+):(\d+):[^']*' *>>/etc/passwd", runs)
    group = re.search(r"'([^':]+):x:(\d+):[^']*' *>>/etc/group", runs)
    assert passwd and group, runs
    assert (passwd.group(2), passwd.group(3)) == (uid, gid or uid)
    assert group.group(2) == (gid or uid)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatch(candidate, glob) for candidate in candidates):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_build_context_holds_what_the_builder_copies(stages, ignore_patterns) -> None:
    sources = []
    for copy in stages[0].all("COPY"):
        words = [w for w in shlex.split(copy) if not w.startswith("--")]
        sources += words[:-1]
    assert sources, "the builder copies the source"
    for source in sources:
        assert (REPO / source).exists(), source
        files = [source] if (REPO / source).is_file() else [
            str(p.relative_to(REPO)) for p in (REPO / source).rglob("*.py")
            if "__pycache__" not in p.parts]
        assert files
        kept = [f for f in files if not dockerignored(f, ignore_patterns)]
        assert kept == files, f"{source}: .dockerignore drops {set(files) - set(kept)}"
    # pyproject.toml names README.md as the package's readme: the wheel build needs it.
    assert "README.md" in sources


@pytest.mark.parametrize("path", [".git/config", ".venv/bin/python", ".cache/bin/helm",
                                  "tests/unit/test_models.py", "charts/pgjit/Chart.yaml",
                                  "requirements/test.txt",
                                  "operator/pgjit/__pycache__/cli.cpython-311.pyc",
                                  ".hypothesis/examples/x"])
def test_build_context_leaves_out_the_rest(ignore_patterns, path) -> None:
    assert dockerignored(path, ignore_patterns)
