#!/usr/bin/env bash
# Rebuilds vendor/ from the npm packages pinned in package-lock.json (run after changing
# package.json, then commit vendor/ and the lockfile). The daemon embeds vendor/ at build time.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
cp node_modules/asciinema-player/dist/bundle/asciinema-player.min.js vendor/
cp node_modules/asciinema-player/dist/bundle/asciinema-player.css vendor/
cp node_modules/asciinema-player/LICENSE vendor/asciinema-player.LICENSE
rm -rf node_modules
