#!/usr/bin/env bash
# Install arlocal (a local Arweave gateway, npm) for the blob tests and `engram devnet --blobs`.
# npm builds sqlite3 from source (~4 min), so the result is kept outside the clone, in
# ${XDG_CACHE_HOME:-~/.cache}/engram-ci/arlocal, keyed by the lock file's hash; a cache
# that cannot be used falls back to a plain install here (ops/arlocal/node_modules).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/engram-ci/arlocal"
# the key is the two files' bytes (not their paths: every fresh clone must find the cache)
want="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)"
if [ -x "$cache/node_modules/.bin/arlocal" ] && [ "$(cat "$cache/.stamp" 2>/dev/null)" = "$want" ]; then
    echo "arlocal: cached in $cache"
    exit 0
fi
command -v npm >/dev/null || { echo "arlocal-setup: npm is not installed (apt-get install nodejs npm)" >&2; exit 1; }
# node-gyp builds sqlite3 against node's headers; with no nodedir configured it downloads them
# from nodejs.org, which a machine that reaches only package registries cannot: use the
# headers installed beside node (Debian's and NodeSource's packages ship include/node)
if [ -z "${npm_config_nodedir:-}" ] && [ -z "$(npm config get nodedir 2>/dev/null | grep -v '^undefined$' || true)" ]; then
    prefix="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")"
    if [ -f "$prefix/include/node/node.h" ]; then
        export npm_config_nodedir="$prefix"
    else
        echo "arlocal-setup: no node headers under $prefix/include/node; node-gyp will download them" >&2
    fi
fi
if mkdir -p "$cache" 2>/dev/null && cp "$here/package.json" "$here/package-lock.json" "$cache/"; then
    rm -f "$cache/.stamp"
    if (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error); then
        echo "$want" > "$cache/.stamp"
        echo "arlocal: installed in $cache"
        exit 0
    fi
    echo "arlocal-setup: npm ci in $cache failed; installing in $here" >&2
fi
cd "$here" && npm install --no-audit --no-fund --loglevel=error
echo "arlocal: installed in $here/node_modules"
