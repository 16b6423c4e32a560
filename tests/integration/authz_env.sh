# Shared set-up of the authz integration tests (sourced, not run): a private PostgreSQL
# cluster with the authz schema, the embedded broker on a private copy of its binary,
# and helpers to start authz copies and probe them. Everything is cleaned up on exit.
# Needs: B (build directory), ROOT. Sets: T, ADMIN_URL, APP_URL, SEAL, GW_KAFKA_BROKERS.
AUTHZ=$B/authz/authz
PROBE=$B/authz/gw-authz-probe
JWTSIGN=$B/authz/gw-jwt-sign
BROKER=$B/deploy/local/gw-broker
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
T=$(mktemp -d /tmp/gw-authz-test.XXXXXX)
chmod 755 "$T"
PGBASE=$T/pg
PGDATA_DIR=$PGBASE/data
BROKER_PID=
AUTHZ_PIDS=()

pg_up() {
	runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGBASE/postgres.log" \
		-o "-c listen_addresses='' -c unix_socket_directories='$PGBASE' -c fsync=off" \
		-w -t 60 start >/dev/null
}
pg_down() {
	[ -f "$PGDATA_DIR/postmaster.pid" ] || return 0
	runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null 2>&1
}
stop_pid() { # pid: SIGTERM, then SIGKILL after 20 s
	local p=$1 i
	[ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
	kill -TERM "$p" 2>/dev/null
	for i in $(seq 1 200); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
	kill -KILL "$p" 2>/dev/null
}
cleanup() {
	local p
	for p in "${AUTHZ_PIDS[@]}"; do stop_pid "$p"; done
	stop_pid "$BROKER_PID"
	for p in "${EXTRA_PIDS[@]:-}"; do stop_pid "$p"; done
	pg_down
	# GW_TEST_KEEP=1 keeps the logs for a post-mortem.
	if [ "${GW_TEST_KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
EXTRA_PIDS=()

cd "$T" || exit 1
export GW_ENV_FILE=/dev/null GW_LOG_LEVEL=info
ADMIN_URL="host=$PGBASE dbname=gateway user=postgres"
APP_URL="host=$PGBASE dbname=gateway user=gw_authz"
psql_admin() { "$PGBIN/psql" -X -q -tA -v ON_ERROR_STOP=1 -h "$PGBASE" -U postgres -d gateway "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

env_setup() { # broker partitions
	mkdir -p "$PGBASE" && chown postgres:postgres "$PGBASE" && chmod 700 "$PGBASE"
	if ! runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 \
		--locale=C.UTF-8 >"$T/initdb.log" 2>&1 || ! pg_up; then
		cat "$T/initdb.log" "$PGBASE/postgres.log" 2>/dev/null | tail -20
		return 1
	fi
	"$PGBIN/psql" -X -q -h "$PGBASE" -U postgres -d postgres -c "CREATE DATABASE gateway" >/dev/null &&
		psql_admin -c "CREATE ROLE gw_authz LOGIN; GRANT CONNECT ON DATABASE gateway TO gw_authz" >/dev/null &&
		GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUTHZ" migrate 2>"$T/migrate.log" || return 1
	cp "$BROKER" "$T/authz-test-broker"
	GW_BROKER_PARTITIONS=${1:-4} "$T/authz-test-broker" --bootstrap-file "$T/bootstrap" \
		>"$T/broker.out" 2>"$T/broker.log" &
	BROKER_PID=$!
	for i in $(seq 1 100); do [ -s "$T/bootstrap" ] && break; sleep 0.1; done
	GW_KAFKA_BROKERS=$(cat "$T/bootstrap" 2>/dev/null)
	[ -n "$GW_KAFKA_BROKERS" ] || return 1
	export GW_KAFKA_BROKERS
	SEAL=$(openssl rand -hex 32)
	export GW_SEAL_KEY=$SEAL
}

# Starts one authz copy; prints nothing. Its admin port is in PORT_<n>, log in $T/authz<n>.log.
start_authz() { # n extra-env...
	local n=$1 port
	shift
	port=$(free_port)
	eval "PORT_$n=$port"
	env GW_DATABASE_URL="$APP_URL" GW_ADMIN_LISTEN="127.0.0.1:$port" GW_KAFKA_FETCH_WAIT_MS=2 \
		GW_INSTANCE="authz-test-$n" "$@" "$AUTHZ" serve 2>>"$T/authz$n.log" &
	AUTHZ_PIDS[$n]=$!
}
ready_n() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(eval echo \$PORT_$1)/ready")" = 200 ]; }
metrics_n() { curl -s "http://127.0.0.1:$(eval echo \$PORT_$1)/metrics"; }
stop_authz() { # n
	stop_pid "${AUTHZ_PIDS[$1]}"
	AUTHZ_PIDS[$1]=
}
probe() { GW_PROBE_KEY=$1 "$PROBE" request "${@:2}" 2>>"$T/probe.log"; }
new_key() { # principal [args...]: creates a key, prints it
	GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUTHZ" keys create --principal "$@" 2>>"$T/keys.log"
}
status_of() { jq -r 'if .topic == "gw.authorized" then "authorized" else .headers["gw-status"] end' <<<"$1"; }
err_of() { jq -r '.value | fromjson | .error.message' <<<"$1"; }

# Stops every authz copy and checks their logs for sanitizer reports (the ASan build
# aborts on a leak or error at exit, which no other check would see).
finish_checks() {
	local n
	for n in "${!AUTHZ_PIDS[@]}"; do stop_authz "$n"; done
	check_eq "no sanitizer report in any authz log" "" \
		"$(grep -l 'Sanitizer' "$T"/authz*.log 2>/dev/null)"
}
