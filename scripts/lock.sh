#!/usr/bin/env bash
# Re-pins constraints.txt to the newest releases pyproject.toml allows: installs them into a throwaway
# virtualenv, runs the fast tests there, and only then writes the new pins. Review the diff before committing.
#   PYTHON  interpreter [default: python3.11]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
"${PYTHON:-python3.11}" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q torch
"$venv/bin/python" -m pip install -q -e ".[all,dev,mteb]"
HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest -q
{
  sed -n '/^#/p' constraints.txt
  # the local label (+cpu) is the machine's build choice, not part of the pin
  "$venv/bin/python" -m pip freeze --exclude-editable | sed 's/+[a-z0-9.]*$//' | LC_ALL=C sort -f
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt updated from $venv"
