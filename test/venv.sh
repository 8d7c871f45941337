#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating .venv at the repo root when it is missing.
#   test/venv.sh python process.py --input test/input --output out/sample     # the algorithm on the bundled sample
#   test/venv.sh python -m pytest test -q                                      # the tests
# The command runs from the repo root. .venv counts as ready only after an install of the current requirements
# finished (a stamp holds their hash), so an interrupted or failed install is retried, not used half-done.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stamp="$root/.venv/.requirements.sha256"
wanted="$(cat "$root/requirements.txt" "$root/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$root/.venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "test/venv.sh: needs python3 >= 3.11, found: $(python3 --version 2>&1)" >&2
    exit 2
  fi
  echo "installing requirements-dev.txt into $root/.venv (first run, or the requirements changed)" >&2
  [ -x "$root/.venv/bin/python" ] || python3 -m venv "$root/.venv"
  rm -f "$stamp"
  "$root/.venv/bin/pip" install --quiet --upgrade pip
  "$root/.venv/bin/pip" install --quiet -r "$root/requirements-dev.txt"
  echo "$wanted" > "$stamp"
fi
cd "$root"
export PATH="$root/.venv/bin:$PATH"
exec "$@"
