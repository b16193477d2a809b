#!/usr/bin/env bash
# Installs Bouncy Castle 1.80 (bcprov, bcutil, bctls: the jars of Debian 13 "trixie") for the RFC 9146
# Connection ID interop tests (tests/bc_peer.py, GUIDE section 7), without touching the system's apt sources,
# lists or caches: a private sources list (the machine's own Debian entries with the suite renamed to trixie),
# private lists and cache directories, `apt-get download`, then `dpkg-deb -x`.
#
#   IOTDTLS_BC_DIR   where to install (default /opt/iotdtls-ci/bc); the jars end up in $IOTDTLS_BC_DIR/jars
#
# Idempotent: once the three jars are in place it only prints where they are. Needs root (or sudo) only to
# apt-get install openjdk-17-jdk-headless when javac is missing. Prints `BC_JARS=<jar>:<jar>:<jar>` last.
set -euo pipefail

DEST="${IOTDTLS_BC_DIR:-/opt/iotdtls-ci/bc}"
JARS=(bcprov bcutil bctls)
PACKAGES=(libbcprov-java libbcutil-java libbctls-java)
SUITE_FROM="${IOTDTLS_BC_SUITE_FROM:-bookworm}"
SUITE_TO="trixie"

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
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/iotdtls-bc.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/debs" "$WORK/root"

    # The machine's own Debian entries, suite renamed (deb822 .sources and one-line .list files).
    SOURCES="$WORK/trixie.sources"
    : >"$SOURCES"
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        # keep the stanzas that name the old suite (this skips third-party repositories such as nodistro)
        awk -v from="$SUITE_FROM" -v to="$SUITE_TO" 'BEGIN { RS = ""; ORS = "\n\n" }
            $0 ~ ("Suites:[^\n]*" from) {
                gsub("(^|\n)#[^\n]*", "")
                gsub(from, to)
                print
            }' "$f" >>"$SOURCES"
    done
    LIST="$WORK/trixie.list"
    : >"$LIST"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        grep -E "^deb[[:space:]].*[[:space:]]${SUITE_FROM}([-[:alnum:]]*)?[[:space:]]" "$f" \
            | sed -E "s/([[:space:]])${SUITE_FROM}/\\1${SUITE_TO}/" >>"$LIST" || true
    done
    shopt -u nullglob
    if [ -s "$SOURCES" ]; then
        SOURCELIST="$SOURCES"
        [ -s "$LIST" ] && log "note: using the deb822 entries only"
    elif [ -s "$LIST" ]; then
        SOURCELIST="$LIST"
    else
        log "no $SUITE_FROM entry in the machine's apt sources: using deb.debian.org"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE_TO main" >"$LIST"
        SOURCELIST="$LIST"
    fi
    log "private sources list:"
    sed 's/^/    /' "$SOURCELIST" >&2

    APT_OPTS=(
        -o "Dir::Etc::sourcelist=$SOURCELIST"
        -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$WORK/lists"
        -o "Dir::Cache=$WORK/cache"
        -o "Dir::Cache::pkgcache="
        -o "Dir::Cache::srcpkgcache="
        -o "APT::Get::List-Cleanup=0"
    )
    # apt drops root to the _apt user for downloads: let it write the private directories.
    if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then
        chown -R _apt "$WORK/lists" "$WORK/cache" "$WORK/debs"
        chmod 755 "$WORK"
    fi
    log "apt-get update (private lists for $SUITE_TO)"
    apt-get -q "${APT_OPTS[@]}" update >&2
    log "apt-get download ${PACKAGES[*]}"
    (cd "$WORK/debs" && apt-get -q "${APT_OPTS[@]}" download "${PACKAGES[@]}" >&2)
    for deb in "$WORK"/debs/*.deb; do
        dpkg-deb -x "$deb" "$WORK/root"
    done

    mkdir -p "$DEST/jars"
    : >"$DEST/VERSION.new"
    for deb in "$WORK"/debs/*.deb; do
        dpkg-deb -f "$deb" Package Version | paste -sd' ' >>"$DEST/VERSION.new"
    done
    for j in "${JARS[@]}"; do
        # Debian ships usr/share/java/<name>.jar (a link to the versioned jar): copy the real file.
        src="$WORK/root/usr/share/java/$j.jar"
        if [ ! -e "$src" ]; then
            log "error: $j.jar not found in the downloaded packages"
            exit 1
        fi
        cp -L "$src" "$(jar_path "$j").new"
        mv "$(jar_path "$j").new" "$(jar_path "$j")"
    done
    mv "$DEST/VERSION.new" "$DEST/VERSION"
    log "installed into $DEST:"
    sed 's/^/    /' "$DEST/VERSION" >&2
fi

classpath=""
for j in "${JARS[@]}"; do
    classpath="${classpath:+$classpath:}$(jar_path "$j")"
done
echo "BC_DIR=$DEST"
echo "BC_JARS=$classpath"
