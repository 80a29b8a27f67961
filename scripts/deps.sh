# Sourced by scripts/test.sh and scripts/bench.sh: makes sure PostgreSQL,
# Redis and a NATS server of the version pinned in go.mod are reachable
# (and nginx is installed, for the test of deploy/nginx), and
# exports their URLs as SURGE_TEST_PG, SURGE_TEST_REDIS and SURGE_TEST_NATS.
#
# - A URL already set in the environment is used as is.
# - Otherwise a server already running on the default port is used
#   (PostgreSQL on 127.0.0.1:5432 as user postgres without password, Redis
#   on 127.0.0.1:6379).
# - Otherwise (or with SURGE_DEPS_PRIVATE=1) the server is installed from
#   Debian packages when missing and a private instance is started on a
#   free port (PostgreSQL data in $TMPDIR/surge-pg-<uid>, Redis in .cache/).
# NATS is always the pinned version (go tool nats-server), started on a free
# port for this run; deps_stop (called on exit) stops what was started here.

set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$root/.cache"
mkdir -p "$cache"
started_pids=()
started_pg=""

say() { echo "deps: $*" >&2; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
		say "need root to run: $*"; return 1; fi
}

apt_install() {
	say "installing $* (apt-get)"
	if [ -z "${deps_apt_updated:-}" ]; then as_root apt-get update -qq >&2; deps_apt_updated=1; fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

free_port() { # free_port START: first port >= START nobody listens on (START below 32768: outside the ephemeral range)
	local p=$1
	while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
	echo "$p"
}

wait_port() { # wait_port PORT SECONDS
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	return 1
}

# --- C compiler (go test -race needs cgo) -----------------------------------
if ! command -v gcc >/dev/null; then apt_install gcc libc6-dev; fi

# --- PostgreSQL ---------------------------------------------------------------
pg_ok() { command -v psql >/dev/null && psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }
if [ -z "${SURGE_TEST_PG:-}" ]; then
	default_pg="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	if [ -z "${SURGE_DEPS_PRIVATE:-}" ] && pg_ok "$default_pg"; then
		export SURGE_TEST_PG="$default_pg"
	else
		if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then apt_install postgresql postgresql-contrib; fi
		bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
		port=$(free_port 25432) # below the ephemeral port range (32768+), where test clients bind
		pgdir="${TMPDIR:-/tmp}/surge-pg-$(id -u)" # outside the work tree: the postgres user must reach it
		run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
		if [ ! -f "$pgdir/PG_VERSION" ]; then
			rm -rf "$pgdir"; mkdir -p "$pgdir"
			[ "$(id -u)" = 0 ] && chown postgres "$pgdir"
			run_pg "$bin/initdb" -D "$pgdir" -U postgres --auth=trust >/dev/null
		fi
		say "starting a private PostgreSQL on 127.0.0.1:$port"
		run_pg "$bin/pg_ctl" -D "$pgdir" -l "$pgdir/log" -w -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
		started_pg="$bin/pg_ctl -D $pgdir"
		export SURGE_TEST_PG="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
	fi
fi
pg_ok "$SURGE_TEST_PG" || { say "PostgreSQL at $SURGE_TEST_PG does not answer"; exit 1; }

# --- Redis --------------------------------------------------------------------
if [ -z "${SURGE_TEST_REDIS:-}" ]; then
	if [ -z "${SURGE_DEPS_PRIVATE:-}" ] && command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; then
		export SURGE_TEST_REDIS="redis://127.0.0.1:6379/0"
	else
		command -v redis-server >/dev/null || apt_install redis-server
		port=$(free_port 26379)
		say "starting a private Redis on 127.0.0.1:$port"
		redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --daemonize yes \
			--pidfile "$cache/redis.pid" --logfile "$cache/redis.log" >/dev/null
		wait_port "$port" 10 || { say "redis did not start"; exit 1; }
		started_pids+=("$(cat "$cache/redis.pid")")
		export SURGE_TEST_REDIS="redis://127.0.0.1:$port/0"
	fi
fi

# --- nginx (the e2e test of deploy/nginx starts its own), chromium (the
# dashboard's browser test), promtool (the Prometheus package: deploy/prometheus's rules)
# policy-rc.d keeps the packages from starting servers of their own (nginx on port 80, prometheus)
apt_install_quiet() {
	if [ ! -e /usr/sbin/policy-rc.d ] && as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'; then
		apt_install "$@" || say "$* could not be installed: their tests will fail in CI"
		as_root rm -f /usr/sbin/policy-rc.d
	else
		apt_install "$@" || say "$* could not be installed: their tests will fail in CI"
	fi
}
# one at a time: a package missing from this distribution must not keep the others out
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then apt_install_quiet nginx; fi
command -v chromium >/dev/null || apt_install_quiet chromium
command -v promtool >/dev/null || apt_install_quiet prometheus

# --- NATS (the version pinned in go.mod) -----------------------------------------
if [ -z "${SURGE_TEST_NATS:-}" ]; then
	(cd "$root" && go build -o "$cache/nats-server" github.com/nats-io/nats-server/v2)
	nats_pid=""
	for attempt in 1 2 3 4 5; do # a free port can be taken between the check and the bind: retry
		port=$(free_port $((24222 + RANDOM % 2000)))
		rm -rf "$cache/nats-js"
		"$cache/nats-server" -a 127.0.0.1 -p "$port" -js -sd "$cache/nats-js" >"$cache/nats.log" 2>&1 &
		nats_pid=$!
		for ((i = 0; i < 200; i++)); do # ready, or dead (the port was taken after all)
			if grep -q "Server is ready" "$cache/nats.log" 2>/dev/null || ! kill -0 "$nats_pid" 2>/dev/null; then break; fi
			sleep 0.1
		done
		if kill -0 "$nats_pid" 2>/dev/null && grep -q "Server is ready" "$cache/nats.log"; then break; fi
		kill "$nats_pid" 2>/dev/null || true
		nats_pid=""
	done
	[ -n "$nats_pid" ] || { say "nats-server did not start"; cat "$cache/nats.log" >&2; exit 1; }
	started_pids+=("$nats_pid")
	export SURGE_TEST_NATS="nats://127.0.0.1:$port"
fi

export SURGE_NATS_SERVER_BIN="$cache/nats-server"
say "PostgreSQL $SURGE_TEST_PG"
say "Redis      $SURGE_TEST_REDIS"
say "NATS       $SURGE_TEST_NATS ($("$cache/nats-server" --version 2>/dev/null || echo external))"

deps_stop() {
	local p
	for p in "${started_pids[@]}"; do kill "$p" 2>/dev/null || true; done
	if [ -n "$started_pg" ]; then
		if [ "$(id -u)" = 0 ]; then runuser -u postgres -- $started_pg -m fast stop >/dev/null 2>&1 || true
		else $started_pg -m fast stop >/dev/null 2>&1 || true; fi
	fi
}
