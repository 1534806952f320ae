#!/usr/bin/env bash
# Makes sure Postgres and Redis answer for the test suite: starts the local servers when they are installed
# but stopped; otherwise says exactly what to run.
set -u
PGHOST=${PGHOST:-127.0.0.1}; PGPORT=${PGPORT:-5432}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}; REDIS_PORT=${REDIS_PORT:-6379}

pg_up() { pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null || python3 - "$PGHOST" "$PGPORT" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}
redis_up() { python3 - "$REDIS_HOST" "$REDIS_PORT" <<'PY'
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    s.sendall(b"PING\r\n"); ok = s.recv(16).startswith(b"+PONG"); s.close(); sys.exit(0 if ok else 1)
except OSError:
    sys.exit(1)
PY
}
wait_for() { for _ in $(seq 1 30); do "$1" && return 0; sleep 1; done; return 1; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql >/dev/null 2>&1; then
    for version in $(ls /etc/postgresql); do
      echo "Starting PostgreSQL $version (cluster main)..."
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    wait_for pg_up || { echo "PostgreSQL did not come up on $PGHOST:$PGPORT." >&2; exit 1; }
  else
    echo "PostgreSQL is not reachable on $PGHOST:$PGPORT and is not installed here." >&2
    echo "Run: docker compose up -d db redis   (then: make test)" >&2
    exit 1
  fi
fi
if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "Starting Redis..."
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log \
      || redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
    wait_for redis_up || { echo "Redis did not come up on $REDIS_HOST:$REDIS_PORT." >&2; exit 1; }
  else
    echo "Redis is not reachable on $REDIS_HOST:$REDIS_PORT and is not installed here." >&2
    echo "Run: docker compose up -d db redis   (then: make test)" >&2
    exit 1
  fi
fi
echo "PostgreSQL ($PGHOST:$PGPORT) and Redis ($REDIS_HOST:$REDIS_PORT) are up."
