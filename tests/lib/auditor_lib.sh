# Shared setup of the auditor integration tests (auditor.sh, auditor_chain.sh,
# auditor_api.sh, auditor_retention.sh): the binaries, a scrubbed environment, a temp
# dir, a private PostgreSQL cluster on a Unix socket, the mock broker, and cleanup.
# Sourced after tests/lib/assert.sh, with BUILD set; then call aud_init.
#
# Hooks (set before aud_init / define before the script exits):
#   AUD_TOOLS        tools to check after auditor, gw-produce and gw-broker
#                    (default: initdb, psql, curl, openssl)
#   AUD_TOOL_NAMES   the tools named when one is not found (default "psql, curl, openssl")
#   AUD_MISSING_HINT what to do about a missing tool (default "build or install it first")
#   AUD_TAIL_GLOBS   logs in $TMP whose tails are shown on failure (default auditor*.log)
#   AUD_PG_CONF      extra postgresql.conf lines
#   aud_cleanup_hook a function run first on exit (to stop the script's own processes)

AUDITOR=$BUILD/auditor/auditor
PRODUCE=$BUILD/auditor/gw-produce
BROKER=$BUILD/deploy/local/gw-broker
PGBIN=${GW_PG_BIN:-/usr/lib/postgresql/15/bin}
KEEP_TMP=${KEEP_TMP:-} # set to keep the temp dir (logs) for a look afterwards

# A free loopback port. Not deploy/local/stack.sh's stack_free_port: sourcing stack.sh
# sets PGBIN and STACK_* globals, and it probes by connecting rather than listing listeners.
free_port() {
	local p
	while :; do
		p=$((10000 + RANDOM % 22000))
		ss -ltnH "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
	done
}

aud_init() { # mktemp-name: checks tools, scrubs GW_*, makes $TMP, sets the cleanup trap
	local b v
	if [ -z "${AUD_TOOLS+set}" ]; then
		AUD_TOOLS=("$PGBIN/initdb" "$(command -v psql)" "$(command -v curl)" "$(command -v openssl)")
	fi
	for b in "$AUDITOR" "$PRODUCE" "$BROKER" "${AUD_TOOLS[@]}"; do
		if [ ! -x "$b" ]; then
			echo "missing ${b:-a tool (${AUD_TOOL_NAMES:-psql, curl, openssl})}: ${AUD_MISSING_HINT:-build or install it first}"
			echo "0 passed, 1 failed"
			exit 1
		fi
	done

	# Nothing from the caller's environment may leak in (a developer's .run/env, URLs).
	for v in $(compgen -e | grep '^GW_'); do unset "$v"; done
	unset DB # psql_as's database: gateway unless set for one call
	export GW_ENV_FILE=/dev/null GW_LOG_LEVEL=info

	TMP=$(mktemp -d "/tmp/$1.XXXXXX") || exit 1
	chmod 755 "$TMP"
	PGDIR=$TMP/pg # owned by the server's user: data, socket, log
	PGDATA=$PGDIR/data
	PORT=5432 # only names the socket file: listen_addresses is empty
	APORT=$(free_port)
	BROKER_PID=
	AUDITOR_PID=
	if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); else AS_PG=(); fi
	if [ -z "${AUD_TAIL_GLOBS+set}" ]; then AUD_TAIL_GLOBS=('auditor*.log'); fi

	ADMIN_URL="host=$PGDIR port=$PORT dbname=gateway user=postgres"
	DB_URL="host=$PGDIR port=$PORT dbname=gateway user=gw_auditor"
	COMPLIANCE_URL="host=$PGDIR port=$PORT dbname=gateway user=gw_compliance"

	trap aud_cleanup EXIT
	trap 'exit 1' INT TERM
}

aud_cleanup() {
	local rc=$? g f
	if declare -F aud_cleanup_hook >/dev/null; then aud_cleanup_hook; fi
	if [ -n "$AUDITOR_PID" ] && kill -0 "$AUDITOR_PID" 2>/dev/null; then
		kill -KILL "$AUDITOR_PID" 2>/dev/null
		wait "$AUDITOR_PID" 2>/dev/null
	fi
	if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
		kill -TERM "$BROKER_PID" 2>/dev/null
		wait "$BROKER_PID" 2>/dev/null
	fi
	if [ -f "$PGDATA/postmaster.pid" ]; then
		"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1
	fi
	if [ "$T_FAIL" -gt 0 ]; then
		for g in "${AUD_TAIL_GLOBS[@]}"; do
			for f in "$TMP"/$g; do
				[ -f "$f" ] && { echo "--- tail of $(basename "$f")"; tail -n 15 "$f"; }
			done
		done
	fi
	if [ -n "${KEEP_TMP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
	exit $rc
}

pg_start() { "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDIR/log" -w -t 60 start >/dev/null; }
pg_stop() { "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null; }
psql_as() { # role psql-args... (database: $DB, default gateway)
	local role=$1
	shift
	psql -X -q -At -v ON_ERROR_STOP=1 -h "$PGDIR" -p "$PORT" -U "$role" -d "${DB:-gateway}" "$@"
}
sql() { psql_as postgres -c "$1"; }

# A step everything after depends on: stop here rather than time out check by check.
require() { # description command...
	local d=$1
	shift
	if "$@"; then
		ok "$d"
	else
		not_ok "$d"
		t_summary
		exit 1
	fi
}

# A private cluster, database gateway, roles gw_auditor and gw_compliance. "check" or
# "require" says how the database step is reported (require: stop if it fails).
aud_pg_init() { # check|require
	mkdir -p "$PGDIR"
	[ "$(id -u)" = 0 ] && chown postgres: "$PGDIR"
	chmod 700 "$PGDIR"
	if ! "${AS_PG[@]}" "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C \
		--no-sync >"$TMP/initdb.log" 2>&1; then
		cat "$TMP/initdb.log"
		not_ok "initdb"
		t_summary
		exit 1
	fi
	cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$PGDIR'
port = $PORT
EOF
	if [ -n "${AUD_PG_CONF:-}" ]; then printf '%s\n' "$AUD_PG_CONF" >>"$PGDATA/postgresql.conf"; fi
	require "PostgreSQL starts" pg_start
	psql -X -q -h "$PGDIR" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE gateway" >/dev/null &&
		sql "CREATE ROLE gw_auditor LOGIN; CREATE ROLE gw_compliance LOGIN" >/dev/null
	local rc=$?
	if [ "$1" = require ]; then
		require "database and roles created" test $rc = 0
	else
		check_eq "database and roles created" 0 $rc
	fi
}

aud_broker_start() { # [env-assignments...]: the mock broker; sets BROKER_PID and BROKERS
	(cd "$TMP" && exec env "$@" "$BROKER" --bootstrap-file "$TMP/bootstrap") \
		>/dev/null 2>"$TMP/broker.log" &
	BROKER_PID=$!
	require "broker writes its bootstrap file" eventually 20 test -s "$TMP/bootstrap"
	BROKERS=$(cat "$TMP/bootstrap" 2>/dev/null)
}
