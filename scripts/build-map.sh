#!/usr/bin/env bash
# Rebuild the catalog map bundle (ecocube/data/browse/map.js) from scripts/web-map with the pinned
# npm packages of scripts/web-map/package-lock.json (OpenLayers, geotiff.js, esbuild). Needs node + npm
# and the npm registry; the bundle is committed, so installing or testing ecocube needs neither.
#   scripts/build-map.sh          # npm ci + esbuild
#   scripts/build-map.sh --check  # rebuild into a temp folder and fail if it differs from the committed one
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here/scripts/web-map"
npm ci --no-audit --no-fund --ignore-scripts >/dev/null
esbuild="node node_modules/esbuild/bin/esbuild"
out="$here/ecocube/data/browse"
if [[ "${1:-}" == "--check" ]]; then
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  $esbuild src/map.js --bundle --minify --format=iife --target=es2020 --legal-comments=external \
    --outfile="$tmp/map.js" --log-level=warning
  for f in map.js map.css map.js.LEGAL.txt; do cmp "$tmp/$f" "$out/$f"; done
  echo "map bundle up to date: $out/map.js"
  exit 0
fi
mkdir -p "$out"
$esbuild src/map.js --bundle --minify --format=iife --target=es2020 --legal-comments=external \
  --outfile="$out/map.js" --log-level=warning
echo "wrote $out/map.js ($(wc -c <"$out/map.js") bytes)"
