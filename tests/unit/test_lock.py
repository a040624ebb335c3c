"""The lock files pin what pyproject.toml asks for, and the image's lock (runtime.txt) is the
test environment's (test.txt) for every package they share: the image runs what the tests ran.
`make lock` regenerates both; these checks fail when someone edits one and not the other."""

from __future__ import annotations

import pathlib
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[2]


def pins(path: pathlib.Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of a hash-pinned requirements file."""
    text = re.sub(r"\\\n", " ", path.read_text())
    result = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("--hash") else line
        match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)\s*(.*)$", line.strip())
        if match:
            name, version, rest = match.groups()
            result[canonicalize_name(name)] = (version, frozenset(re.findall(r"--hash=(\S+)", rest)))
    return result


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_every_pin_carries_hashes() -> None:
    for name in ("runtime.txt", "test.txt"):
        locked = pins(REPO / "requirements" / name)
        assert locked, name
        assert not [pkg for pkg, (_, hashes) in locked.items() if not hashes], name


def test_runtime_lock_satisfies_the_dependencies() -> None:
    runtime = pins(REPO / "requirements/runtime.txt")
    for spec in project()["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in runtime, f"{name} is not in requirements/runtime.txt: run `make lock`"
        assert requirement.specifier.contains(runtime[name][0], prereleases=True), (
            f"{name}=={runtime[name][0]} does not satisfy {requirement}: run `make lock`")


def test_test_lock_satisfies_the_test_extra() -> None:
    locked = pins(REPO / "requirements/test.txt")
    for spec in project()["optional-dependencies"]["test"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements/test.txt: run `make lock`"
        assert requirement.specifier.contains(locked[name][0], prereleases=True)


def test_the_image_runs_the_versions_the_tests_ran() -> None:
    runtime = pins(REPO / "requirements/runtime.txt")
    tested = pins(REPO / "requirements/test.txt")
    differ = {name: (version, tested.get(name, ("missing",))[0])
              for name, (version, _) in runtime.items()
              if tested.get(name, ("",))[0] != version}
    assert differ == {}, f"runtime vs test lock: {differ}; run `make lock`"
