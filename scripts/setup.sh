#!/usr/bin/env bash
# Creates a virtualenv and installs tsembed with everything the demo and the tests need (extras all + dev),
# every version pinned by constraints.txt.
#   PYTHON  interpreter to use   [default: python3.11, else python3]   (3.11, 3.12 and 3.13 are supported)
#   VENV    virtualenv directory [default: .venv beside this repository's pyproject.toml]
# torch goes first, on its own: installed later as another package's dependency, pip could pick a
# multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)}"
VENV="${VENV:-.venv}"
"$PYTHON" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints.txt torch
python -m pip install -q -c constraints.txt -e ".[all,dev,mteb]"  # mteb: so the mteb integration test runs
