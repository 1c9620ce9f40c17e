#!/usr/bin/env bash
# A real PostgreSQL server for tests and CI, listening only on 127.0.0.1, with a role and a
# database for the tests. Its own data directory (not Debian's default cluster), run by the
# postgres user through pg_ctl (no systemd needed).
#
#   bash .ci/services/postgres.sh          # install if missing, init, start, wait; print the URL
#   bash .ci/services/postgres.sh start    # same
#   bash .ci/services/postgres.sh url      # print the URL (no checks)
#   bash .ci/services/postgres.sh env      # print `export MSS_PG_URL=...` for eval
#   bash .ci/services/postgres.sh status   # exit 0 when the server accepts the test role
#   bash .ci/services/postgres.sh stop     # stop the server this script starts
#
# The last line printed by start is the SQLAlchemy URL, e.g.
#   postgresql+psycopg2://mss:mss@127.0.0.1:5432/mss_test
# The role may create databases, so tests can make a fresh database each.
# Idempotent: with the server up and the configuration unchanged, `start` only checks.
set -euo pipefail

MODE="${1:-start}"
PG_PORT="${MSS_PG_PORT:-5432}"
PG_USER="${MSS_PG_USER:-mss}"
PG_PASSWORD="${MSS_PG_PASSWORD:-mss}"
PG_DB="${MSS_PG_DB:-mss_test}"
ROOT=/var/lib/mss-postgres
DATA="$ROOT/data"
LOG="$ROOT/postgres.log"
SOCK_DIR=/run/mss-postgres
URL="postgresql+psycopg2://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"

say() { echo "postgres.sh: $*" >&2; }
die() {
    echo "postgres.sh: ERROR: $*" >&2
    if [[ -s "$LOG" ]]; then
        echo "---- last lines of $LOG" >&2
        tail -n 15 "$LOG" >&2
    fi
    exit 1
}

case "$MODE" in
    url)
        echo "$URL"
        exit 0
        ;;
    env)
        echo "export MSS_PG_URL='$URL'"
        exit 0
        ;;
    start | stop | status) ;;
    *)
        echo "usage: $0 [start|stop|status|url|env]" >&2
        exit 2
        ;;
esac

[[ "$(id -u)" == 0 ]] || die "run as root (installs packages, runs the server as the postgres user)"
[[ "$PG_USER$PG_DB" =~ ^[a-z_][a-z0-9_]*$ ]] || die "role and database names must be plain identifiers"

pg_bin() {
    local d
    d="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$d" && -x "$d/pg_ctl" ]] || return 1
    echo "$d"
}

as_pg() { runuser -u postgres -- "$@"; }

running() { [[ -n "${BIN:-}" ]] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

psql_admin() { as_pg "$BIN/psql" -h "$SOCK_DIR" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

# The test role over TCP with its password, as the tests connect.
role_works() {
    PGPASSWORD="$PG_PASSWORD" "$BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" \
        -qtAc 'SELECT 1' 2>/dev/null | grep -qx 1
}

BIN="$(pg_bin || true)"

if [[ "$MODE" == stop ]]; then
    if running; then
        say "stopping PostgreSQL ($DATA)"
        as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null || die "pg_ctl stop failed"
    fi
    say "stopped"
    exit 0
fi

if [[ "$MODE" == status ]]; then
    running && role_works || { say "not running"; exit 1; }
    say "running on 127.0.0.1:$PG_PORT"
    echo "$URL"
    exit 0
fi

# --- start -----------------------------------------------------------------------------------
if [[ -z "$BIN" ]]; then
    say "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq postgresql >/dev/null || die "apt-get install postgresql failed"
    BIN="$(pg_bin)" || die "postgresql installed but no pg_ctl under /usr/lib/postgresql/*/bin"
    # Where services may start on install, the package's default cluster now holds port 5432
    # on every address: stop the clusters this installation just started (ours runs apart).
    if command -v pg_lsclusters >/dev/null; then
        pg_lsclusters -h | awk '$4 == "online" {print $1, $2}' | while read -r ver name; do
            say "stopping Debian's default cluster $ver/$name, started by the package install"
            pg_ctlcluster "$ver" "$name" stop || die "could not stop cluster $ver/$name"
        done
    fi
fi

install -d -o postgres -g postgres -m 0700 "$ROOT"
install -d -o postgres -g postgres -m 0755 "$SOCK_DIR"
if [[ ! -s "$DATA/PG_VERSION" ]]; then
    say "initdb $DATA"
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >"$ROOT/initdb.log" 2>&1 \
        || { cat "$ROOT/initdb.log" >&2; die "initdb failed"; }
fi

# Our settings in one included file; pg_hba allows only loopback TCP with a password.
tmp="$(mktemp)"
cat >"$tmp" <<EOF
# Written by .ci/services/postgres.sh. Test server: loopback only, durability traded for speed.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCK_DIR'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
EOF
changed=""
if ! cmp -s "$tmp" "$DATA/mss.conf" 2>/dev/null; then
    install -o postgres -g postgres -m 0600 "$tmp" "$DATA/mss.conf"
    changed=yes
fi
grep -qx "include_if_exists = 'mss.conf'" "$DATA/postgresql.conf" \
    || echo "include_if_exists = 'mss.conf'" >>"$DATA/postgresql.conf"
cat >"$tmp" <<EOF
# Written by .ci/services/postgres.sh.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 peer
host    all       all   127.0.0.1/32  scram-sha-256
EOF
if ! cmp -s "$tmp" "$DATA/pg_hba.conf"; then
    install -o postgres -g postgres -m 0600 "$tmp" "$DATA/pg_hba.conf"
    changed=yes
fi
rm -f "$tmp"

if running && [[ -n "$changed" ]]; then
    say "configuration changed: restarting"
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null || die "pg_ctl stop failed"
fi
if ! running; then
    if (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; then
        die "127.0.0.1:$PG_PORT is taken by another server; set MSS_PG_PORT to a free port"
    fi
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT ($DATA)"
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null || die "pg_ctl start failed"
fi
"$BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 30 || die "server not ready on 127.0.0.1:$PG_PORT"

# Role and database, created or brought back to the expected password.
exists="$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" || die "psql failed"
if [[ "$exists" != 1 ]]; then
    say "creating role $PG_USER"
    psql_admin -c "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" || die "CREATE ROLE failed"
elif ! role_works; then
    psql_admin -c "ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" || die "ALTER ROLE failed"
fi
exists="$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" || die "psql failed"
if [[ "$exists" != 1 ]]; then
    say "creating database $PG_DB"
    psql_admin -c "CREATE DATABASE $PG_DB OWNER $PG_USER" || die "CREATE DATABASE failed"
fi
role_works || die "role $PG_USER cannot log in to $PG_DB over 127.0.0.1:$PG_PORT with its password"
say "ready on 127.0.0.1:$PG_PORT"
echo "$URL"
