#!/usr/bin/env bash
# Start Tuna on embedded defaults (SQLite, local files, no broker server, one worker).
#
# Sets up .venv first (scripts/setup.sh). HOST, PORT and DATA_DIR override the defaults;
# anything else goes to `tuna serve`, e.g. `./scripts/serve.sh --no-worker`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/setup.sh"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
exec "$ROOT/.venv/bin/tuna" serve \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --data-dir "${DATA_DIR:-var}" "$@"
