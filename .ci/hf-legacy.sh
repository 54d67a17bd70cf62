#!/usr/bin/env bash
# The side environment for the tests marked legacy_hf: transformers 4.37.2 (the last release
# with TransfoXL) in a virtual environment that sees the main environment's torch and tevo.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x hf-legacy/bin/python ]; then
  python3 -m venv --system-site-packages hf-legacy
fi
hf-legacy/bin/python -m pip install -q "transformers==4.37.2"
