#!/usr/bin/env bash
# Installs MicroPython's unix port built for 32-bit x86 (Debian 13 "trixie", micropython:i386 with the i386
# libraries it links) for the footprint tests: a real 32-bit MicroPython with its ordinary garbage collector and a
# fixed heap (-X heapsize=48K), where the WebAssembly port collects only between top-level runs. Nothing is
# installed system-wide: tests/trixie_debs.sh unpacks the packages, and a wrapper runs the binary through the
# unpacked i386 loader. Needs a kernel that runs 32-bit x86 programs (x86_64 kernels do by default).
#
#   IOTDTLS_MPUNIX32_DIR   where to install (default /opt/iotdtls-ci/mpunix32); the wrapper is $DIR/micropython32
#
# Idempotent: once the wrapper runs it only prints where it is. Prints `MPUNIX32=<wrapper>` last.
set -euo pipefail

DEST="${IOTDTLS_MPUNIX32_DIR:-/opt/iotdtls-ci/mpunix32}"
WRAPPER="$DEST/micropython32"
PACKAGES=(micropython:i386 libc6:i386 libgcc-s1:i386 libffi8:i386 libmbedcrypto16:i386 libmbedtls21:i386
          libmbedx509-7:i386)

log() { printf 'mpunix/install.sh: %s\n' "$*" >&2; }

works() {
    [ -x "$WRAPPER" ] && [ "$("$WRAPPER" -c 'import sys; print(sys.maxsize)' 2>/dev/null)" = "2147483647" ]
}

if ! works; then
    NEW="$DEST.new"
    rm -rf "$NEW"
    bash "$(dirname "$0")/../trixie_debs.sh" "$NEW/root" "${PACKAGES[@]}"
    cat >"$NEW/micropython32" <<WRAP
#!/bin/sh
# MicroPython (unix port, i386) from Debian 13, run through its own loader and libraries (tests/mpunix/install.sh)
R="$DEST/root"
exec "\$R/usr/lib/ld-linux.so.2" --library-path "\$R/usr/lib/i386-linux-gnu" "\$R/usr/bin/micropython" "\$@"
WRAP
    chmod 755 "$NEW/micropython32"
    rm -rf "$DEST"
    mv "$NEW" "$DEST"
    if ! works; then
        log "error: $WRAPPER does not run (does this kernel run 32-bit x86 programs?)"
        "$WRAPPER" -c 'import sys; print(sys.implementation, sys.maxsize)' >&2 || true
        exit 1
    fi
    log "installed into $DEST:"
    sed 's/^/    /' "$DEST/root/VERSION" >&2
fi
echo "MPUNIX32=$WRAPPER"
