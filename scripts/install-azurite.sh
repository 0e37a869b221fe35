#!/usr/bin/env bash
# Installs Azurite (the Azure Blob emulator the store tests run against) into tools/node, once.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x tools/node/node_modules/.bin/azurite-blob ]; then exit 0; fi
mkdir -p tools/node
npm install --prefix tools/node --no-audit --no-fund --silent azurite >/dev/null
