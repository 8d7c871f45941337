#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating .venv at the repo root when it is missing.
#   test/venv.sh python process.py --input test/input --output out/sample     # the algorithm on the bundled sample
#   test/venv.sh python -m pytest test -q                                      # the tests
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "creating $root/.venv (first run only; installs requirements-dev.txt)" >&2
  python3 -m venv "$root/.venv"
  "$root/.venv/bin/pip" install --quiet --upgrade pip
  "$root/.venv/bin/pip" install --quiet -r "$root/requirements-dev.txt"
fi
cd "$root"
export PATH="$root/.venv/bin:$PATH"
exec "$@"
