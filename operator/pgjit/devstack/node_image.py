"""Container images for the node test layer, built without a registry or a docker engine.

Three images, each a docker-archive tarball in a cache keyed by a hash of what goes into it:

- the base: a Debian bookworm rootfs made by ``mmdebstrap`` (bookworm's python3 is 3.11, as in
  ``python:3.11-slim``) and imported into podman;
- the operator: the repository's ``Dockerfile`` built by podman (with runc) on that base, with
  ``--build-arg PYTHON_IMAGE``: the same file users build with ``docker build``;
- the pause image the kubelet's sandboxes run: ``build/pause/linux/pause.c`` from the
  ``k8s.io/kubernetes`` module the node's binaries come from, linked statically, FROM scratch.

The tarballs live under ``$XDG_CACHE_HOME/pgjit`` (``~/.cache/pgjit``), outside the repository:
CI runs on a fresh clone on the same machine, and a content-addressed tarball is valid for any
clone. podman's own state (storage, run root, temporary files) is kept there too, never in
``/var/lib/containers``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pgjit.devstack.kube_binaries import (
    KubeBinariesError,
    exclusive_lock,
    find_repo_root,
    go_executable,
)

BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
# The host's bundle: pip inside the build must trust what the host trusts. Mounted read-only
# into the RUN steps, so it never becomes part of the image.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Root on these machines cannot raise rlimits above the current hard limits, and podman's
# defaults ask for more (the OCI runtime then fails to start the build container).
ULIMIT_NOFILE = 20000
ULIMIT_NPROC = 32768
# Content-addressed tarballs pile up as the source changes; the newest few are enough for a
# worktree or two and CI.
KEEP_IMAGES = 6
LOG_TAIL_LINES = 60

# What of the repository goes into the operator image: the Dockerfile's build context after
# .dockerignore, plus the files that decide how it is built.
IMAGE_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "requirements")
IMAGE_SOURCE_DIRS = ("operator",)


class ImageError(RuntimeError):
    """An image could not be built; the message carries the log tail."""


def cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pgjit"


@dataclass(frozen=True)
class Image:
    """A built image: its name as the kubelet sees it and the tarball containerd imports."""

    ref: str
    archive: Path


def _digest(parts: list[bytes]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()[:16]


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
    except FileNotFoundError:
        return ""


def _run_logged(command: list[str], log: Path, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> None:
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        began = time.monotonic()
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, check=False,
        )
        handle.write(f"# exit {result.returncode} after {time.monotonic() - began:.1f}s\n")
    if result.returncode != 0:
        raise ImageError(f"{command[0]} failed (exit {result.returncode}); log {log}:\n{_tail(log)}")


class Podman:
    """podman with all of its state under the cache directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log_dir = root / "logs"
        for sub in ("storage", "run", "tmp", "cni", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{root / "storage"}"\n'
            f'runroot = "{root / "run"}"\n'
        )
        (root / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={ULIMIT_NOFILE}:{ULIMIT_NOFILE}", '
            f'"nproc={ULIMIT_NPROC}:{ULIMIT_NPROC}"]\n'
            "[engine]\n"
            # crun refuses this host's hybrid cgroup layout; runc runs on it.
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{root / "logs" / "events.log"}"\n'
            f'tmp_dir = "{root / "tmp"}"\n'
            "[network]\n"
            # Never the system's /etc/cni/net.d (podman's package puts a bridge there); builds
            # use the host network only.
            f'network_config_dir = "{root / "cni"}"\n'
        )
        # No registry to ask about short names: only fully qualified local names are used.
        (root / "registries.conf").write_text("unqualified-search-registries = []\n")

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf"),
            "TMPDIR": str(self.root / "tmp"),
        }

    def run(self, args: list[str], log: Path, cwd: Path | None = None) -> None:
        _run_logged(["podman", *args], log, env=self.env(), cwd=cwd)

    def has(self, ref: str) -> bool:
        result = subprocess.run(
            ["podman", "image", "exists", ref], env=self.env(),
            stdin=subprocess.DEVNULL, capture_output=True, check=False,
        )
        return result.returncode == 0


class ImageBuilder:
    """Builds (or finds in the cache) the base, pause and operator images."""

    def __init__(self, repo_root: Path | None = None, cache: Path | None = None) -> None:
        self.repo_root = repo_root or find_repo_root()
        self.cache = cache or cache_home()
        self.images_dir = self.cache / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.podman = Podman(self.cache / "podman")
        self.log_dir = self.podman.log_dir
        self.timings: dict[str, float] = {}

    # -- base -----------------------------------------------------------------------------

    def _base_command(self, output: Path) -> list[str]:
        return [
            "mmdebstrap", "--variant=apt", "--quiet",
            f"--include={','.join(BASE_PACKAGES)}",
            BASE_SUITE, str(output),
        ]  # fmt: skip

    def base_ref(self) -> str:
        key = _digest([json.dumps(self._base_command(Path("OUT"))).encode()])
        return f"localhost/pgjit-base:{key}"

    def ensure_base(self) -> str:
        """Return the base image's name, making the rootfs and importing it when missing."""
        ref = self.base_ref()
        rootfs = self.cache / "base" / f"{ref.rpartition(':')[2]}.tar"
        with exclusive_lock(self.cache / ".images.lock"):
            if self.podman.has(ref):
                return ref
            began = time.monotonic()
            log = self.log_dir / "base.log"
            if not rootfs.is_file():
                rootfs.parent.mkdir(parents=True, exist_ok=True)
                partial = rootfs.with_suffix(".partial.tar")
                partial.unlink(missing_ok=True)
                _run_logged(self._base_command(partial), log)
                os.replace(partial, rootfs)
            self.podman.run(["import", str(rootfs), ref], log)
            self.timings["base"] = time.monotonic() - began
        return ref

    # -- pause ----------------------------------------------------------------------------

    def _pause_source(self) -> Path:
        controlplane = self.repo_root / "tests" / "controlplane"
        result = subprocess.run(
            [go_executable(), "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
            cwd=controlplane, capture_output=True, text=True, check=False,
        )
        if result.returncode != 0 or not result.stdout.strip():
            # `go mod download` fills the module cache the first time.
            subprocess.run([go_executable(), "mod", "download", "k8s.io/kubernetes"],
                           cwd=controlplane, capture_output=True, check=False)
            result = subprocess.run(
                [go_executable(), "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
                cwd=controlplane, capture_output=True, text=True, check=False,
            )
        source = Path(result.stdout.strip()) / "build" / "pause" / "linux" / "pause.c"
        if not source.is_file():
            raise ImageError(f"pause.c not found in the k8s.io/kubernetes module: {source}")
        return source

    def ensure_pause(self) -> Image:
        source = self._pause_source()
        key = _digest([source.read_bytes(), b"gcc -static -Os"])
        ref = f"localhost/pgjit-pause:{key}"
        archive = self.images_dir / f"pause-{key}.tar"
        with exclusive_lock(self.cache / ".images.lock"):
            if archive.is_file():
                return Image(ref, archive)
            log = self.log_dir / "pause.log"
            with tempfile.TemporaryDirectory(dir=self.podman.root / "tmp") as work:
                context = Path(work)
                _run_logged(["gcc", "-static", "-Os", "-o", str(context / "pause"), str(source)],
                            log)
                _run_logged(["strip", str(context / "pause")], log)
                (context / "Containerfile").write_text(
                    'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
                )
                self.podman.run(["build", "--pull=never", "-t", ref, str(context)], log)
            self._save(ref, archive, log)
        return Image(ref, archive)

    # -- operator -------------------------------------------------------------------------

    def _operator_inputs(self) -> list[Path]:
        files: list[Path] = []
        for name in IMAGE_INPUTS:
            path = self.repo_root / name
            if path.is_dir():
                files += sorted(p for p in path.rglob("*") if p.is_file())
            elif path.is_file():
                files.append(path)
        for directory in IMAGE_SOURCE_DIRS:
            files += sorted(
                p for p in (self.repo_root / directory).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
                and not any(part.endswith(".egg-info") for part in p.parts)
            )
        return files

    def operator_key(self, variant: str = "") -> str:
        parts = [self.base_ref().encode(), variant.encode()]
        for path in self._operator_inputs():
            parts += [str(path.relative_to(self.repo_root)).encode(), path.read_bytes()]
        return _digest(parts)

    def ensure_operator(self, variant: str = "") -> Image:
        """Build the operator image from the Dockerfile; ``variant`` makes a distinct image.

        A variant (for example ``"rebuild"``) adds a label, so the image differs from the
        plain one in its config and ID as a rebuild after a code change would, without
        touching the source tree.
        """
        base = self.ensure_base()
        key = self.operator_key(variant)
        ref = f"localhost/pgjit:{key}"
        archive = self.images_dir / f"pgjit-{key}.tar"
        with exclusive_lock(self.cache / ".images.lock"):
            if archive.is_file():
                archive.touch()  # the pruning below keeps recently used images
                return Image(ref, archive)
            began = time.monotonic()
            log = self.log_dir / f"pgjit-{key}.log"
            log.unlink(missing_ok=True)
            command = [
                "build", "--pull=never", "--network=host",
                "--build-arg", f"PYTHON_IMAGE={base}",
                "-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro",
                "-t", ref, "-f", "Dockerfile",
            ]  # fmt: skip
            if variant:
                command += ["--label", f"dev.pgjit.test-variant={variant}"]
            self.podman.run([*command, "."], log, cwd=self.repo_root)
            self._save(ref, archive, log)
            # podman keeps the image and its layers: the next build after a change to the
            # operator's code reuses the dependency layer instead of installing it again.
            self._prune()
            self.timings[f"operator{'-' + variant if variant else ''}"] = (
                time.monotonic() - began
            )
        return Image(ref, archive)

    def _save(self, ref: str, archive: Path, log: Path) -> None:
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        self.podman.run(["save", "--format", "docker-archive", "-o", str(partial), ref], log)
        os.replace(partial, archive)

    def _prune(self) -> None:
        """Keep the newest KEEP_IMAGES operator tarballs, and podman's copies of those only.

        Removing an image leaves the layers it shares with newer builds (the dependencies),
        so the layer cache survives.
        """
        tarballs = sorted(self.images_dir.glob("pgjit-*.tar"), key=lambda p: p.stat().st_mtime)
        for stale in tarballs[:-KEEP_IMAGES]:
            stale.unlink(missing_ok=True)
        kept = {archive.stem.removeprefix("pgjit-") for archive in tarballs[-KEEP_IMAGES:]}
        listed = subprocess.run(
            ["podman", "images", "--format", "{{.Tag}}", "localhost/pgjit"],
            env=self.podman.env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            check=False,
        )
        stale_refs = [f"localhost/pgjit:{tag}" for tag in listed.stdout.split() if tag not in kept]
        if stale_refs:
            subprocess.run(["podman", "rmi", *stale_refs], env=self.podman.env(),
                           stdin=subprocess.DEVNULL, capture_output=True, check=False)


def main() -> int:
    """Build the node layer's images and print where they are (``make node-images``)."""
    builder = ImageBuilder()
    try:
        for image in (builder.ensure_pause(), builder.ensure_operator()):
            print(f"{image.ref} {image.archive}")
    except (ImageError, KubeBinariesError) as error:
        print(error, file=sys.stderr)
        return 1
    for name, seconds in builder.timings.items():
        print(f"# {name} built in {seconds:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
