# The whole gateway on one machine: a private PostgreSQL cluster, the embedded broker,
# the mock compute endpoint and the five services. Sourced by run.sh (`make run`) and
# by the integration tests; every function logs to $STACK_DIR/logs.
#
# Inputs (set before stack_start): STACK_DIR (state directory), STACK_BIN (build
# directory), and optionally STACK_PORT_BASE (fixed ports; random free ports if unset),
# STACK_FAST=1 (PostgreSQL without fsync, for tests).

PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
STACK_PIDS=()
STACK_NAMES=()

stack_log() { printf '%s\n' "$*" >&2; }

# A free loopback port: random in 20000-60000, not accepting connections.
# Ports come from 10000-31999, below Linux's ephemeral range (32768-60999): a port picked
# there can be taken by any outgoing connection (a Kafka client's) before the service binds it.
stack_free_port() {
	local p
	for _ in $(seq 1 200); do
		p=$((10000 + RANDOM % 22000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

stack_port() { # name offset
	if [ -n "${STACK_PORT_BASE:-}" ]; then echo $((STACK_PORT_BASE + $2)); else stack_free_port; fi
}

# Waits until URL answers 200, or the process with PID dies, or TIMEOUT seconds pass.
stack_wait_http() { # url pid timeout name
	local url=$1 pid=$2 timeout=${3:-30} name=${4:-process} i
	for i in $(seq 1 $((timeout * 10))); do
		if ! kill -0 "$pid" 2>/dev/null; then
			stack_log "stack: $name exited during start; last log lines:"
			tail -n 20 "$STACK_DIR/logs/$name.log" >&2 || true
			return 1
		fi
		if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	stack_log "stack: $name not ready after ${timeout}s ($url); last log lines:"
	tail -n 20 "$STACK_DIR/logs/$name.log" >&2 || true
	return 1
}

# Starts a process in the background with its log under logs/NAME.log.
stack_spawn() { # name cmd...
	local name=$1
	shift
	# Its own session: a Ctrl-C in the terminal reaches run.sh only, which stops the
	# processes in order (ingress first, broker last).
	setsid "$@" >>"$STACK_DIR/logs/$name.log" 2>&1 </dev/null &
	STACK_PIDS+=($!)
	STACK_NAMES+=("$name")
}

stack_pid() { # name -> pid
	local i
	for i in "${!STACK_NAMES[@]}"; do
		[ "${STACK_NAMES[$i]}" = "$1" ] && echo "${STACK_PIDS[$i]}" && return 0
	done
	return 1
}

# PostgreSQL refuses to run as root: the cluster belongs to the postgres user. When that
# user cannot reach STACK_DIR (a checkout under /root), the data lives in its home.
stack_pg_paths() {
	if runuser -u postgres -- test -x "$STACK_DIR" 2>/dev/null; then
		PGBASE="$STACK_DIR/pg"
	else
		PGBASE="/var/lib/postgresql/gw-$(printf '%s' "$STACK_DIR" | sha1sum | cut -c1-12)"
	fi
	PGDATA_DIR="$PGBASE/data"
	PGSOCK="$PGBASE/sock"
}

stack_pg_start() {
	stack_pg_paths
	PGPORT=${PGPORT:-$(stack_port pg 0)}
	mkdir -p "$PGBASE"
	chown postgres:postgres "$PGBASE"
	chmod 700 "$PGBASE"
	if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
		runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust \
			-E UTF8 --locale=C.UTF-8 >>"$STACK_DIR/logs/postgres.log" 2>&1 || {
			stack_log "stack: initdb failed; see $STACK_DIR/logs/postgres.log"
			return 1
		}
	fi
	runuser -u postgres -- mkdir -p "$PGSOCK"
	local opts="-c listen_addresses='' -c unix_socket_directories='$PGSOCK' -c port=$PGPORT"
	[ "${STACK_FAST:-0}" = 1 ] && opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
	runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGBASE/postgres.log" \
		-o "$opts" -w -t 60 start >>"$STACK_DIR/logs/postgres.log" 2>&1 || {
		stack_log "stack: PostgreSQL did not start; see $PGBASE/postgres.log"
		tail -n 20 "$PGBASE/postgres.log" >&2 || true
		return 1
	}
	PG_ADMIN_URL="host=$PGSOCK port=$PGPORT dbname=gateway user=postgres"
	local psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGSOCK" -p "$PGPORT" -U postgres)
	"${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='gateway'" | grep -q 1 ||
		"${psql[@]}" -d postgres -c "CREATE DATABASE gateway" >>"$STACK_DIR/logs/postgres.log"
	"${psql[@]}" -d gateway -f "$(dirname "${BASH_SOURCE[0]}")/db-init.sql" >>"$STACK_DIR/logs/postgres.log"
}

stack_pg_stop() {
	[ -n "${PGDATA_DIR:-}" ] && [ -f "$PGDATA_DIR/postmaster.pid" ] || return 0
	runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >>"$STACK_DIR/logs/postgres.log" 2>&1
}

stack_url() { # role
	echo "host=$PGSOCK port=$PGPORT dbname=gateway user=$1"
}

stack_new_api_key() {
	local id secret
	id=$(openssl rand -hex 8)
	secret=$(openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n')
	echo "gw_${id}_${secret}"
}

# Environment common to every service process. GW_ENV_FILE=/dev/null keeps them from
# reading .run/env, which is for admin commands in another shell.
stack_common_env() {
	echo "GW_ENV_FILE=/dev/null GW_KAFKA_BROKERS=$BROKERS GW_LOG_LEVEL=${GW_LOG_LEVEL:-info}"
}

# The five services. Each reads its ports from the *_ADMIN / HTTP_PORT variables.
stack_spawn_service() { # name
	local b=$STACK_BIN common
	common=$(stack_common_env)
	# shellcheck disable=SC2086
	case $1 in
	auditor)
		stack_spawn auditor env $common GW_ADMIN_LISTEN="127.0.0.1:$AUDITOR_ADMIN" \
			GW_DATABASE_URL="$(stack_url gw_auditor)" "$b/auditor/auditor" serve ;;
	authz)
		stack_spawn authz env $common GW_ADMIN_LISTEN="127.0.0.1:$AUTHZ_ADMIN" \
			GW_DATABASE_URL="$(stack_url gw_authz)" GW_SEAL_KEY_FILE="$STACK_DIR/seal.key" \
			"$b/authz/authz" serve ;;
	dispatcher)
		stack_spawn dispatcher env $common GW_ADMIN_LISTEN="127.0.0.1:$DISPATCHER_ADMIN" \
			GW_ENDPOINTS_FILE="$STACK_DIR/endpoints.json" "$b/dispatcher/dispatcher" serve ;;
	backup-agent)
		stack_spawn backup-agent env $common GW_ADMIN_LISTEN="127.0.0.1:$BACKUP_ADMIN" \
			GW_DATABASE_URL="$(stack_url gw_backup)" GW_BACKUP_DIR="$STACK_DIR/backups" \
			GW_BACKUP_KEY_FILE="$STACK_DIR/backup.key" GW_BACKUP_ADMIN_URL="$PG_ADMIN_URL" \
			GW_BACKUP_INTERVAL="${GW_BACKUP_INTERVAL:-3600}" "$b/backup-agent/backup-agent" serve ;;
	ingress)
		stack_spawn ingress env $common GW_ADMIN_LISTEN="127.0.0.1:$INGRESS_ADMIN" \
			GW_HTTP_LISTEN="127.0.0.1:$HTTP_PORT" GW_SEAL_KEY_FILE="$STACK_DIR/seal.key" \
			GW_REQUEST_TIMEOUT="${GW_REQUEST_TIMEOUT:-120}" "$b/ingress/ingress" serve ;;
	esac
}

stack_admin_port() { # name
	case $1 in
	auditor) echo "$AUDITOR_ADMIN" ;; authz) echo "$AUTHZ_ADMIN" ;;
	dispatcher) echo "$DISPATCHER_ADMIN" ;; backup-agent) echo "$BACKUP_ADMIN" ;;
	ingress) echo "$INGRESS_ADMIN" ;;
	esac
}

# Forgets a process that has exited (so it can be started again).
stack_forget() { # name
	local i
	for i in "${!STACK_NAMES[@]}"; do
		if [ "${STACK_NAMES[$i]}" = "$1" ]; then
			wait "${STACK_PIDS[$i]}" 2>/dev/null
			unset 'STACK_NAMES[i]' 'STACK_PIDS[i]'
		fi
	done
	STACK_NAMES=("${STACK_NAMES[@]}")
	STACK_PIDS=("${STACK_PIDS[@]}")
}

# Waits for a service to be ready. A free port can be taken by another process
# between the probe and the bind; then the service gets new ports and another try.
stack_await_service() { # name
	local name=$1 try
	for try in 1 2 3; do
		if stack_wait_http "http://127.0.0.1:$(stack_admin_port "$name")/ready" \
			"$(stack_pid "$name")" 60 "$name" 2>"$STACK_DIR/await.err"; then
			stack_log "ready: $name (admin http://127.0.0.1:$(stack_admin_port "$name"))"
			return 0
		fi
		if kill -0 "$(stack_pid "$name")" 2>/dev/null ||
			! grep -q 'cannot listen' "$STACK_DIR/logs/$name.log"; then
			cat "$STACK_DIR/await.err" >&2
			return 1
		fi
		stack_log "stack: $name lost its port to another process; new ports, try $((try + 1))"
		stack_forget "$name"
		case $name in
		auditor) AUDITOR_ADMIN=$(stack_free_port) ;; authz) AUTHZ_ADMIN=$(stack_free_port) ;;
		dispatcher) DISPATCHER_ADMIN=$(stack_free_port) ;;
		backup-agent) BACKUP_ADMIN=$(stack_free_port) ;;
		ingress)
			INGRESS_ADMIN=$(stack_free_port)
			[ -z "${GW_HTTP_PORT:-}" ] && HTTP_PORT=$(stack_free_port) ;;
		esac
		stack_spawn_service "$name"
	done
	return 1
}

stack_start() {
	mkdir -p "$STACK_DIR/logs"
	# Traversable but not listable, so the postgres user can reach its cluster under
	# it; the secrets inside are 0600 files.
	chmod 711 "$STACK_DIR"
	local b=$STACK_BIN

	stack_pg_start || return 1
	stack_log "ready: postgresql (socket $PGSOCK, port $PGPORT)"

	rm -f "$STACK_DIR/bootstrap"
	stack_spawn broker env GW_ENV_FILE=/dev/null GW_BROKER_PARTITIONS="${GW_BROKER_PARTITIONS:-4}" \
		"$b/deploy/local/gw-broker" --bootstrap-file "$STACK_DIR/bootstrap"
	local i
	for i in $(seq 1 100); do [ -s "$STACK_DIR/bootstrap" ] && break; sleep 0.1; done
	[ -s "$STACK_DIR/bootstrap" ] || { stack_log "stack: broker did not start"; tail -n 20 "$STACK_DIR/logs/broker.log" >&2; return 1; }
	BROKERS=$(cat "$STACK_DIR/bootstrap")
	stack_log "ready: broker ($BROKERS)"

	local try
	for try in 1 2 3; do
		MOCK_PORT=$(stack_port mock 1)
		stack_spawn mock env GW_ENV_FILE=/dev/null GW_MOCK_LISTEN="127.0.0.1:$MOCK_PORT" \
			GW_MOCK_MODELS="${GW_MOCK_MODELS:-mock-llm,mock-embed}" \
			GW_MOCK_LATENCY_MS="${GW_MOCK_LATENCY_MS:-0}" GW_MOCK_TOKEN_MS="${GW_MOCK_TOKEN_MS:-0}" \
			GW_MOCK_FAIL_RATE="${GW_MOCK_FAIL_RATE:-0}" "$b/deploy/local/gw-mock-endpoint"
		stack_wait_http "http://127.0.0.1:$MOCK_PORT/health" "$(stack_pid mock)" 20 mock && break
		kill -0 "$(stack_pid mock)" 2>/dev/null && return 1
		[ "$try" = 3 ] && return 1
		stack_forget mock # lost its port to another process: try another
	done
	stack_log "ready: mock endpoint (http://127.0.0.1:$MOCK_PORT)"

	[ -f "$STACK_DIR/seal.key" ] || (umask 077 && openssl rand -hex 32 >"$STACK_DIR/seal.key")
	cat >"$STACK_DIR/endpoints.json" <<JSON
{"endpoints":[{"name":"mock","url":"http://127.0.0.1:$MOCK_PORT","models":["mock-llm","mock-embed"],"cluster":"local","framework":"other","weight":1,"max_concurrent":256,"timeout_ms":120000}]}
JSON

	env GW_ENV_FILE=/dev/null GW_DATABASE_ADMIN_URL="$PG_ADMIN_URL" "$b/auditor/auditor" migrate >>"$STACK_DIR/logs/migrate.log" 2>&1 &&
		env GW_ENV_FILE=/dev/null GW_DATABASE_ADMIN_URL="$PG_ADMIN_URL" "$b/authz/authz" migrate >>"$STACK_DIR/logs/migrate.log" 2>&1 || {
		stack_log "stack: migrations failed; see $STACK_DIR/logs/migrate.log"
		tail -n 20 "$STACK_DIR/logs/migrate.log" >&2
		return 1
	}

	if [ -n "${GW_DEV_API_KEY:-}" ]; then
		DEV_KEY=$GW_DEV_API_KEY
	else
		DEV_KEY=$(stack_new_api_key)
	fi
	(umask 077 && printf '%s\n' "$DEV_KEY" >"$STACK_DIR/dev-api-key")
	env GW_ENV_FILE=/dev/null GW_DATABASE_URL="$PG_ADMIN_URL" GW_DEV_API_KEY="$DEV_KEY" \
		"$b/authz/authz" keys create --principal dev --key-from-env GW_DEV_API_KEY >/dev/null 2>>"$STACK_DIR/logs/migrate.log" || {
		stack_log "stack: registering the dev API key failed; see $STACK_DIR/logs/migrate.log"
		return 1
	}

	HTTP_PORT=${GW_HTTP_PORT:-$(stack_port ingress 10)}
	INGRESS_ADMIN=$(stack_port ingress-admin 20)
	AUTHZ_ADMIN=$(stack_port authz-admin 21)
	DISPATCHER_ADMIN=$(stack_port dispatcher-admin 22)
	AUDITOR_ADMIN=$(stack_port auditor-admin 23)
	BACKUP_ADMIN=$(stack_port backup-admin 24)
	# The backup key: local only, next to (not inside) the backups it opens.
	[ -s "$STACK_DIR/backup.key" ] || (umask 077 && openssl rand -hex 32 >"$STACK_DIR/backup.key")

	local name
	for name in auditor authz dispatcher backup-agent ingress; do
		stack_spawn_service "$name"
	done
	for name in auditor authz dispatcher backup-agent ingress; do
		stack_await_service "$name" || return 1
	done
	INGRESS_URL="http://127.0.0.1:$HTTP_PORT"

	# What a second shell needs: admin commands run from the checkout read this file.
	cat >"$STACK_DIR/env" <<ENV
GW_KAFKA_BROKERS=$BROKERS
GW_DATABASE_URL='$(stack_url gw_compliance)'
GW_DATABASE_ADMIN_URL='$PG_ADMIN_URL'
GW_BACKUP_DATABASE_URL='$(stack_url gw_backup)'
GW_BACKUP_DIR=$STACK_DIR/backups
GW_BACKUP_KEY_FILE=$STACK_DIR/backup.key
GW_ENDPOINTS_FILE=$STACK_DIR/endpoints.json
GW_INGRESS_URL=$INGRESS_URL
GW_ADMIN_PORTS='ingress=$INGRESS_ADMIN authz=$AUTHZ_ADMIN dispatcher=$DISPATCHER_ADMIN auditor=$AUDITOR_ADMIN backup-agent=$BACKUP_ADMIN'
ENV
	chmod 600 "$STACK_DIR/env"
}

# Stops one process with SIGTERM and returns its exit status (124 if it had to be killed).
stack_stop_one() { # name [timeout]
	local pid rc=0 i
	pid=$(stack_pid "$1") || return 0
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return $?; }
	kill -TERM "$pid" 2>/dev/null
	for i in $(seq 1 $((${2:-20} * 10))); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		stack_log "stack: $1 did not stop in time; killing it"
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		return 124
	fi
	wait "$pid" 2>/dev/null || rc=$?
	return $rc
}

# Stops everything in reverse dependency order; returns non-zero if any service did
# not exit 0 on SIGTERM.
stack_stop() {
	local failed=0 name rc
	for name in ingress dispatcher authz backup-agent auditor mock broker; do
		stack_pid "$name" >/dev/null || continue
		rc=0
		stack_stop_one "$name" 30 || rc=$?
		if [ "$rc" -ne 0 ]; then
			stack_log "stack: $name exited with status $rc on SIGTERM"
			failed=1
		fi
	done
	stack_pg_stop || failed=1
	STACK_PIDS=()
	STACK_NAMES=()
	return $failed
}
