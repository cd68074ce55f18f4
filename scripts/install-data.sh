#!/usr/bin/env bash
# Installs the datasets prunekit can use beyond the built-in digits set:
# Fashion-MNIST, from the Debian package dataset-fashion-mnist, which puts its
# idx-ubyte .gz files in /usr/share/datasets/fashion-mnist (the default of
# `--data`).
set -euo pipefail

PKG=dataset-fashion-mnist
DIR=/usr/share/datasets/fashion-mnist

installed() {
    dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q "install ok installed"
}

if installed; then
    echo "$PKG is already installed."
else
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: apt-get not found; install $PKG by other means or download Fashion-MNIST" >&2
        echo "       (train/t10k images-idx3-ubyte and labels-idx1-ubyte, .gz or raw) and pass --data DIR" >&2
        exit 1
    fi
    as_root() {
        if [ "$(id -u)" -eq 0 ]; then
            "$@"
        elif command -v sudo >/dev/null 2>&1; then
            sudo "$@"
        else
            echo "error: not root and sudo not found; run this script as root" >&2
            exit 1
        fi
    }
    echo "Installing $PKG with apt-get..."
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$PKG"
fi

echo "Fashion-MNIST files (from $PKG):"
dpkg -L "$PKG" | grep -E 'ubyte' || true
if [ -d "$DIR" ]; then
    echo "Data directory: $DIR (the default; pass --data DIR to use another)"
    ls -l "$DIR"
else
    echo "warning: $DIR not found; see 'dpkg -L $PKG' for where the files went and pass --data DIR" >&2
fi
