#!/usr/bin/env bash
# Downloads the CIFAR-10 binary version, checks its MD5, and extracts it.
#
#   datasets/download_cifar10.sh [TARGET_DIR]      (default: data/)
#
# Leaves TARGET_DIR/cifar-10-binary.tar.gz and TARGET_DIR/cifar-10-batches-bin/.
# The loader reads either one: cifar::load_cifar10(Path::new("data")).
set -euo pipefail

URL="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5="c32a1d4ab5d03f1284b67883e8d87530"
TARGET="${1:-data}"
ARCHIVE="$TARGET/cifar-10-binary.tar.gz"

mkdir -p "$TARGET"

md5_of() {
    if command -v md5sum >/dev/null 2>&1; then
        md5sum "$1" | cut -d' ' -f1
    elif command -v md5 >/dev/null 2>&1; then
        md5 -q "$1"
    else
        echo "error: neither md5sum nor md5 is installed" >&2
        exit 1
    fi
}

if [ -f "$ARCHIVE" ] && [ "$(md5_of "$ARCHIVE")" = "$MD5" ]; then
    echo "$ARCHIVE already present and verified"
else
    echo "downloading $URL (about 163 MB)"
    # Download beside the target name so an interrupted transfer never looks
    # like a complete archive.
    if command -v curl >/dev/null 2>&1; then
        curl -fL --retry 3 -o "$ARCHIVE.part" "$URL"
    elif command -v wget >/dev/null 2>&1; then
        wget -O "$ARCHIVE.part" "$URL"
    else
        echo "error: need curl or wget to download $URL" >&2
        exit 1
    fi
    actual="$(md5_of "$ARCHIVE.part")"
    if [ "$actual" != "$MD5" ]; then
        rm -f "$ARCHIVE.part"
        echo "error: MD5 mismatch for $URL: got $actual, expected $MD5" >&2
        exit 1
    fi
    mv "$ARCHIVE.part" "$ARCHIVE"
fi

tar -xzf "$ARCHIVE" -C "$TARGET"
echo "extracted to $TARGET/cifar-10-batches-bin"
