#!/usr/bin/env bash
# Install lmfuse and its tools into ./.venv from scratch, at the exact versions in constraints.txt (the
# set the tests last passed with). The CPU build of torch is pinned first so nothing else pulls a
# multi-GB CUDA build.
#
#   bash scripts/install.sh            # reproducible: every package at its constraints.txt version
#   bash scripts/install.sh --upgrade  # newest allowed versions, then rewrite constraints.txt from them;
#                                      # run the tests (and `pytest -m real`) before committing the file
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=(.venv/bin/pip install --quiet --disable-pip-version-check)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ "${1:-}" = "--upgrade" ]; then
  "${PIP[@]}" torch==2.13.0
  "${PIP[@]}" --upgrade --upgrade-strategy eager -e ".[dev]"
  {
    echo "# Exact versions the tests passed with; scripts/install.sh installs these."
    echo "# Regenerate with: bash scripts/install.sh --upgrade (then run the tests before committing)."
    .venv/bin/pip freeze --exclude-editable --disable-pip-version-check | sed 's/+cpu$//'
  } > constraints.txt
  echo "constraints.txt rewritten from the upgraded .venv"
else
  "${PIP[@]}" -c constraints.txt torch==2.13.0
  "${PIP[@]}" -c constraints.txt -e ".[dev]"
fi
