#!/usr/bin/env bash
# Downloads Debian 13 ("trixie") packages and unpacks them into a folder, without touching the system's apt
# sources, lists or caches: a private sources list (the machine's own Debian entries with the suite renamed to
# trixie), private lists and cache directories, `apt-get download`, then `dpkg-deb -x`. Nothing is installed.
#
#   bash tests/trixie_debs.sh ROOT PACKAGE...      (PACKAGE may name an architecture: micropython:i386)
#
# Writes "<package> <version>" lines to ROOT/VERSION once every package is unpacked. Used by
# tests/bcpeer/install.sh (Bouncy Castle 1.80) and tests/mpunix/install.sh (MicroPython's 32-bit unix port).
#   IOTDTLS_TRIXIE_SUITE_FROM   the suite the machine's entries name (default bookworm)
set -euo pipefail

ROOT="$1"
shift
PACKAGES=("$@")
SUITE_FROM="${IOTDTLS_TRIXIE_SUITE_FROM:-${IOTDTLS_BC_SUITE_FROM:-bookworm}}"
SUITE_TO="trixie"

log() { printf 'trixie_debs.sh: %s\n' "$*" >&2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/iotdtls-trixie.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/debs" "$ROOT"

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
    -o "APT::Architectures::=$(dpkg --print-architecture)"
)
# a package named with a foreign architecture (name:i386): that architecture's lists too
for p in "${PACKAGES[@]}"; do
    case "$p" in *:*) APT_OPTS+=(-o "APT::Architectures::=${p##*:}") ;; esac
done
# apt drops root to the _apt user for downloads: let it write the private directories.
if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then
    chown -R _apt "$WORK/lists" "$WORK/cache" "$WORK/debs"
    chmod 755 "$WORK"
fi
log "apt-get update (private lists for $SUITE_TO)"
apt-get -q "${APT_OPTS[@]}" update >&2
log "apt-get download ${PACKAGES[*]}"
(cd "$WORK/debs" && apt-get -q "${APT_OPTS[@]}" download "${PACKAGES[@]}" >&2)
: >"$WORK/VERSION"
for deb in "$WORK"/debs/*.deb; do
    dpkg-deb -x "$deb" "$ROOT"
    dpkg-deb -f "$deb" Package Version Architecture | paste -sd' ' >>"$WORK/VERSION"
done
mv "$WORK/VERSION" "$ROOT/VERSION"
log "unpacked into $ROOT:"
sed 's/^/    /' "$ROOT/VERSION" >&2
