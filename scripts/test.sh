#!/usr/bin/env bash
# The whole test suite, slow tests included, against real SQLite, PostgreSQL and Redis.
#
# Sets up .venv (scripts/setup.sh), starts a local PostgreSQL / Redis when they are installed
# but not running, then runs pytest. Extra arguments go to pytest, e.g.
#   ./scripts/test.sh tests/app -x -k upload
# Postgres and Redis tests are skipped when those servers are unreachable, except under CI=true,
# where they fail. Override their URLs with TUNA_TEST_POSTGRES_URL / TUNA_TEST_REDIS_URL.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/setup.sh"

# No machine here reaches a model hub; everything the tests load is local.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

log() { printf '[test] %s\n' "$*" >&2; }

ensure_postgres() {
  command -v pg_isready >/dev/null 2>&1 || return 0
  pg_isready -q -h 127.0.0.1 && return 0
  if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]]; then
    local version
    for version in $(ls /etc/postgresql); do
      log "starting PostgreSQL $version"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 1 30); do
      pg_isready -q -h 127.0.0.1 && return 0
      sleep 1
    done
  fi
  log "PostgreSQL is not reachable on 127.0.0.1:5432"
}

ensure_redis() {
  command -v redis-cli >/dev/null 2>&1 || return 0
  redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && return 0
  if command -v redis-server >/dev/null 2>&1; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      >/dev/null || true
    for _ in $(seq 1 20); do
      redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && return 0
      sleep 0.5
    done
  fi
  log "Redis is not reachable on 127.0.0.1:6379"
}

# The dashboard tests drive Debian's Chromium through Playwright (never `playwright install`,
# which downloads a browser this machine cannot fetch).
ensure_chromium() {
  command -v chromium >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    log "installing Debian's chromium for the dashboard tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
      >/dev/null 2>&1 || log "could not install chromium"
  fi
}

ensure_postgres
ensure_redis
ensure_chromium

# `-m "slow or not slow"` selects every test even if someone adds a marker filter to addopts;
# a later `-m` in "$@" still wins. The timeout bounds a hung test, not a slow suite.
status=0
"$ROOT/.venv/bin/pytest" -p no:cacheprovider -m "slow or not slow" --timeout=900 "$@" || status=$?
if [[ $status -eq 5 ]]; then
  log "no tests were collected; that is a failure"
  exit 1
fi
exit "$status"
