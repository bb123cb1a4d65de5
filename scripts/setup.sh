#!/usr/bin/env bash
# Creates .venv and installs tsembed with everything the demo and the tests need.
# torch==2.13.0 goes first: installed later, another package could pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[all,dev,mteb]"  # mteb: so the mteb integration test runs
