#!/usr/bin/env bash
# Private PostgreSQL 15 and Redis 7 on loopback for tests and the local run.
#
#   scripts/local-services.sh start|stop|status|env
#
# Installs the Debian packages when missing, then runs its own instances with their own data
# directories and ports; it never touches the system's services. `start` is idempotent.
# `env` prints the CLARION_* variables that point the code at these instances.
set -euo pipefail

STATE="${CLARION_STATE_DIR:-/var/tmp/clarion}"
PG_PORT="${CLARION_PG_PORT:-55432}"
REDIS_PORT="${CLARION_REDIS_PORT:-56379}"
PG_BIN="${CLARION_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_DATA="$STATE/pg15"
REDIS_DIR="$STATE/redis"
log() { echo "local-services: $*" >&2; }

apt_install() {
  local pkgs=("$@")
  log "installing ${pkgs[*]} from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >&2
  $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
}

ensure_packages() {
  local need=()
  [[ -x "$PG_BIN/postgres" ]] || need+=(postgresql-15)
  command -v redis-server >/dev/null || need+=(redis-server)
  if [[ ${#need[@]} -gt 0 ]]; then apt_install "${need[@]}"; fi
  # The packages start system-wide instances on their default ports; ours do not depend on them.
}

# PostgreSQL refuses to run as root: as root, the data directory belongs to the `postgres` user.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_running() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }
redis_running() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; }

start_pg() {
  if pg_running; then return; fi
  mkdir -p "$STATE"
  chmod 755 "$STATE"
  if [[ ! -s "$PG_DATA/PG_VERSION" ]]; then
    mkdir -p "$PG_DATA"
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$PG_DATA"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U clarion --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$PG_DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DATA'
max_connections = 300
shared_buffers = 256MB
fsync = ${CLARION_PG_FSYNC:-on}
synchronous_commit = ${CLARION_PG_SYNC_COMMIT:-on}
CONF
  fi
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 60 start >/dev/null
  log "postgres on 127.0.0.1:$PG_PORT (data $PG_DATA)"
}

# Tenant roles (members of `clarion_tenant`, created by the operator: docs/tenancy.md) must log in with
# their password (scram-sha-256); every other role, `clarion` included, keeps trust. pg_hba takes the
# first matching line, so the block goes at the top. Idempotent, also for a data directory made before it.
HBA_MARKER="# clarion: tenant roles authenticate"
ensure_hba() {
  local hba="$PG_DATA/pg_hba.conf"
  [[ -f "$hba" ]] || return 0
  grep -qF "$HBA_MARKER" "$hba" && return 0
  local block
  block="$HBA_MARKER
local   all             +clarion_tenant                         scram-sha-256
host    all             +clarion_tenant 127.0.0.1/32            scram-sha-256
host    all             +clarion_tenant ::1/128                 scram-sha-256
"
  # Rewritten in place (same inode, owner and mode).
  local rest; rest="$(cat "$hba")"
  printf '%s\n%s\n' "$block" "$rest" >"$hba"
  if pg_running; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" reload >/dev/null
  fi
  log "pg_hba: tenant roles need scram-sha-256 ($hba)"
}

start_redis() {
  if redis_running; then return; fi
  mkdir -p "$REDIS_DIR"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" --daemonize yes \
    --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
    --appendonly yes --appendfsync everysec --save "" --protected-mode yes >/dev/null
  for _ in $(seq 1 100); do redis_running && break; sleep 0.1; done
  redis_running || { log "redis did not start; see $REDIS_DIR/redis.log"; exit 1; }
  log "redis on 127.0.0.1:$REDIS_PORT (data $REDIS_DIR)"
}

stop_all() {
  if [[ -s "$PG_DATA/PG_VERSION" ]] && pg_running; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null && log "postgres stopped"
  fi
  if redis_running; then
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    log "redis stopped"
  fi
}

print_env() {
  echo "export CLARION_DATABASE_URL=postgresql://clarion@127.0.0.1:$PG_PORT/postgres"
  echo "export CLARION_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
}

case "${1:-start}" in
  start) ensure_packages; start_pg; ensure_hba; start_redis; print_env ;;
  stop) stop_all ;;
  status)
    pg_running && echo "postgres: up on $PG_PORT" || echo "postgres: down"
    redis_running && echo "redis: up on $REDIS_PORT" || echo "redis: down" ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
