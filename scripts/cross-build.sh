#!/usr/bin/env bash
# Builds heartguard-gateway for ARM gateways with Debian's own toolchain, and runs the unit
# tests (`--lib`) of each target under qemu-user. The recipe and its traps are in
# docs/cross-build.md; in short: Debian's rustc-web/cargo-web (1.96, bookworm-security), its
# standard library for the target, Debian's cross gcc, qemu-user-static.
#
#   scripts/cross-build.sh --install     # once, as root: the Debian packages (see below)
#   scripts/cross-build.sh               # both targets: release build + unit tests
#   scripts/cross-build.sh --no-test --target aarch64-unknown-linux-gnu
#
# Never use cross (cross-rs) or rustup here: cross calls rustup, which changes the machine's
# toolchain. rustup's cargo keeps building for the host; this script calls /usr/bin/cargo
# with RUSTC=/usr/bin/rustc, in its own --target-dir (the two compilers' artifacts must not
# mix).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
TARGET_DIR=${TARGET_DIR:-target/debian-cross}
JOBS=${JOBS:-2}
TEST_TIMEOUT=${TEST_TIMEOUT:-1200}
install=false
test=true
selected=()

while [ $# -gt 0 ]; do
    case "$1" in
        --install) install=true ;;
        --no-test) test=false ;;
        --target) selected+=("$2"); shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 64 ;;
    esac
    shift
done
[ ${#selected[@]} -gt 0 ] && TARGETS=("${selected[@]}")

if [ "$install" = true ]; then
    [ "$(id -u)" -eq 0 ] || { echo "--install needs root" >&2; exit 1; }
    echo "== installing Debian's Rust, cross gcc and qemu-user"
    dpkg --add-architecture arm64
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        rustc-web cargo-web libstd-rust-web-dev:arm64 \
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
        qemu-user-static xz-utils
    # armv7's standard library: the mirror's armhf index has been seen out of step with its
    # signed Release file, so armhf is not added as an architecture. The .deb of exactly
    # rustc-web's version is fetched with apt's helper (hash from the armhf index), checked,
    # and its rustlib directory unpacked.
    if [ ! -d /usr/lib/rustlib/armv7-unknown-linux-gnueabihf ]; then
        version=$(dpkg-query -W -f='${Version}' rustc-web)
        tmp=$(mktemp -d)
        base=http://deb.debian.org/debian-security
        /usr/lib/apt/apt-helper download-file "$base/dists/bookworm-security/main/binary-armhf/Packages.xz" "$tmp/Packages.xz"
        entry=$(xz -dc "$tmp/Packages.xz" | awk -v v="$version" '
            /^Package: /{p=($2=="libstd-rust-web-dev")} p&&/^Version: /{ok=($2==v)}
            p&&ok&&/^Filename: /{f=$2} p&&ok&&/^SHA256: /{h=$2} /^$/{if(f&&h){print f, h; exit}; p=0; ok=0}')
        [ -n "$entry" ] || { echo "libstd-rust-web-dev $version (armhf) not in the index" >&2; exit 1; }
        read -r file sha <<<"$entry"
        /usr/lib/apt/apt-helper download-file "$base/$file" "$tmp/std.deb" "SHA256:$sha"
        [ "$(dpkg-deb -f "$tmp/std.deb" Architecture)" = armhf ] || { echo "not armhf" >&2; exit 1; }
        [ "$(dpkg-deb -f "$tmp/std.deb" Version)" = "$version" ] || { echo "version mismatch" >&2; exit 1; }
        dpkg-deb -x "$tmp/std.deb" "$tmp/x"
        cp -a "$tmp/x/usr/lib/rustlib/armv7-unknown-linux-gnueabihf" /usr/lib/rustlib/
        rm -rf "$tmp"
    fi
fi

export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc # else Debian's cargo runs rustup's rustc
CARGO=/usr/bin/cargo
for tool in "$CARGO" "$RUSTC" qemu-aarch64-static qemu-arm-static aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc; do
    command -v "$tool" >/dev/null || { echo "missing $tool: run $0 --install (as root)" >&2; exit 1; }
done

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# -E LD_LIBRARY_PATH: the loader and libc.so.6 must come from the same glibc, or every
# multi-threaded binary spins forever under qemu (docs/cross-build.md, "Runner hangs").
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm-static -L /usr/arm-linux-gnueabihf -E LD_LIBRARY_PATH=/usr/arm-linux-gnueabihf/lib"

summary=()
for target in "${TARGETS[@]}"; do
    case "$target" in
        aarch64-unknown-linux-gnu) prefix=aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) prefix=arm-linux-gnueabihf ;;
        *) echo "unsupported target $target" >&2; exit 64 ;;
    esac
    echo "== $target: release build"
    start=$(date +%s)
    "$CARGO" build --release --locked -j"$JOBS" --target "$target" --target-dir "$TARGET_DIR"
    bin="$TARGET_DIR/$target/release/heartguard-gateway"
    built=$(( $(date +%s) - start ))
    # The release profile strips symbols; strip again in case the toolchain left any.
    "$prefix-strip" "$bin"
    size=$(stat -c %s "$bin")
    glibc=$("$prefix-objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -n 1)
    line="$target: $(numfmt --to=iec-i --suffix=B "$size") ($size bytes) stripped, needs $glibc, built in ${built}s"
    if [ "$test" = true ]; then
        echo "== $target: unit tests under qemu"
        start=$(date +%s)
        timeout "$TEST_TIMEOUT" "$CARGO" test --locked -j"$JOBS" --lib --target "$target" --target-dir "$TARGET_DIR" \
            2>&1 | tee "$TARGET_DIR/$target-test.log" | grep -E '^test result|FAILED|panicked' || true
        result=$(grep '^test result' "$TARGET_DIR/$target-test.log" | tail -n 1)
        case "$result" in
            "test result: ok."*) line="$line; unit tests: ${result#test result: } (with build, $(( $(date +%s) - start ))s)" ;;
            *) echo "unit tests failed or timed out on $target (log: $TARGET_DIR/$target-test.log)" >&2; exit 1 ;;
        esac
    fi
    summary+=("$line")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
