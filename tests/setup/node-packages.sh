#!/usr/bin/env bash
# Installs, as root, what the node test layer (tests/node) needs from Debian: containerd and runc
# for the kubelet, podman to build the operator image from the Dockerfile, mmdebstrap for the
# image's base (no registry is reachable), and a static libc for the pause image. Idempotent and
# quick when everything is there: it only touches apt when something is missing.
#
# crun (podman's first choice) refuses this host's hybrid cgroup layout; pgjit.devstack
# configures podman for runc. podman's package puts a bridge config into /etc/cni/net.d; the
# node layer never uses that directory (its CNI directory holds a loopback config only).
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "node-packages.sh: must run as root (it uses apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

packages=(containerd runc containernetworking-plugins podman mmdebstrap gcc libc6-dev binutils)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$package")
done

if ((${#missing[@]})); then
    echo "node-packages.sh: installing ${missing[*]}"
    # Wait for dpkg's lock rather than fail when another install runs.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Verify what the layer relies on, so a broken install fails here and not in a test.
for tool in containerd ctr runc podman mmdebstrap gcc strip nsenter unshare; do
    command -v "$tool" >/dev/null || { echo "node-packages.sh: $tool missing" >&2; exit 1; }
done
test -x /usr/lib/cni/loopback || { echo "node-packages.sh: no CNI loopback plugin" >&2; exit 1; }
test -f /usr/lib/x86_64-linux-gnu/libc.a || test -n "$(find /usr/lib -name libc.a -print -quit)"
echo "node-packages.sh: ok (containerd $(containerd --version | awk '{print $3}'), runc, podman, mmdebstrap)"
