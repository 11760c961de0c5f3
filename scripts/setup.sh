#!/usr/bin/env bash
# Prepare a fresh machine: the Fashion-MNIST files, a virtual environment with
# the local CPU build of torch, and this package with its development extras.
# Safe to run again; each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DATA_DIR=/usr/share/datasets/fashion-mnist

if [ ! -f "$DATA_DIR/train-images-idx3-ubyte.gz" ]; then
    echo "setup: installing Debian package dataset-fashion-mnist"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# Install torch on its own first: with no torch present, a plain dependency on
# torch would make pip download a multi-gigabyte CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0 (CPU build)"
    "$VENV/bin/pip" install -q torch==2.13.0
fi

echo "setup: installing slstm with its dev extras"
"$VENV/bin/pip" install -q -e ".[dev]"
