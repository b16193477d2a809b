#!/usr/bin/env bash
# Installs Bouncy Castle 1.80 (bcprov, bcutil, bctls: the jars of Debian 13 "trixie") for the RFC 9146
# Connection ID interop tests (tests/bc_peer.py, GUIDE section 7), without touching the system's apt sources:
# tests/trixie_debs.sh downloads and unpacks the packages.
#
#   IOTDTLS_BC_DIR   where to install (default /opt/iotdtls-ci/bc); the jars end up in $IOTDTLS_BC_DIR/jars
#
# Idempotent: once the three jars are in place it only prints where they are. Needs root (or sudo) only to
# apt-get install openjdk-17-jdk-headless when javac is missing. Prints `BC_JARS=<jar>:<jar>:<jar>` last.
set -euo pipefail

DEST="${IOTDTLS_BC_DIR:-/opt/iotdtls-ci/bc}"
JARS=(bcprov bcutil bctls)
PACKAGES=(libbcprov-java libbcutil-java libbctls-java)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

log() { printf 'bcpeer/install.sh: %s\n' "$*" >&2; }

# -- Java 17 (javac compiles tests/bcpeer/BcPeer.java) ------------------------------------------------
if ! command -v javac >/dev/null 2>&1; then
    log "javac missing: apt-get install openjdk-17-jdk-headless"
    $SUDO apt-get -o DPkg::Lock::Timeout=300 update -q
    $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends openjdk-17-jdk-headless
fi

jar_path() { printf '%s/jars/%s.jar' "$DEST" "$1"; }

have_jars() {
    local j
    for j in "${JARS[@]}"; do
        [ -s "$(jar_path "$j")" ] || return 1
    done
    [ -f "$DEST/VERSION" ]
}

if ! have_jars; then
    ROOT="$(mktemp -d "${TMPDIR:-/tmp}/iotdtls-bc.XXXXXX")"
    trap 'rm -rf "$ROOT"' EXIT
    bash "$(dirname "$0")/../trixie_debs.sh" "$ROOT" "${PACKAGES[@]}"
    mkdir -p "$DEST/jars"
    for j in "${JARS[@]}"; do
        # Debian ships usr/share/java/<name>.jar (a link to the versioned jar): copy the real file.
        src="$ROOT/usr/share/java/$j.jar"
        if [ ! -e "$src" ]; then
            log "error: $j.jar not found in the downloaded packages"
            exit 1
        fi
        cp -L "$src" "$(jar_path "$j").new"
        mv "$(jar_path "$j").new" "$(jar_path "$j")"
    done
    cp "$ROOT/VERSION" "$DEST/VERSION"
    log "installed into $DEST:"
    sed 's/^/    /' "$DEST/VERSION" >&2
fi

classpath=""
for j in "${JARS[@]}"; do
    classpath="${classpath:+$classpath:}$(jar_path "$j")"
done
echo "BC_DIR=$DEST"
echo "BC_JARS=$classpath"
