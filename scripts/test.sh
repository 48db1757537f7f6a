#!/usr/bin/env bash
# The test command: set up (idempotent), then every test, offline, on the real default models and in
# headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export HF_HUB_OFFLINE=1
exec ${PYTHON:-python3} -m pytest -q -p no:cacheprovider "$@"
