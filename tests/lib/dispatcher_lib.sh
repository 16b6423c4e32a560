# Shared set-up of the dispatcher integration tests (tests/integration/dispatcher.sh,
# dispatcher_routing.sh, dispatcher_pool.sh, dispatcher_reload.sh). Sourced after
# tests/lib/assert.sh, with HERE (tests/integration) and BIN (build directory) set.
#
# Set before sourcing:
#   DLIB_NAME  test name: logs of a failed run are kept in $BIN/test-logs/$DLIB_NAME
#   DLIB_TMP   mktemp prefix of the state directory D (default gw-dispatcher-<name>)
#   DLIB_BINS  binaries to check, among DISPATCHER PROBE BROKER MOCK (default all four)
#   DLIB_HINT  text after "missing <binary>" when one is not built (default none)
# On return: D, PIDS (killed and waited for on exit), the binaries' paths, the helpers below.

DISPATCHER=$BIN/dispatcher/dispatcher
PROBE=$BIN/dispatcher/gw-dispatch-probe
BROKER=$BIN/deploy/local/gw-broker
MOCK=$BIN/deploy/local/gw-mock-endpoint
FAKE=$HERE/dispatcher_fake_endpoint.py
for _b in ${DLIB_BINS:-DISPATCHER PROBE BROKER MOCK}; do
	if [ ! -x "${!_b}" ]; then
		echo "missing ${!_b}${DLIB_HINT:-}"
		echo "0 passed, 1 failed"
		exit 1
	fi
done

D=$(mktemp -d "/tmp/${DLIB_TMP:-gw-${DLIB_NAME//_/-}}.XXXXXX")
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null
	done
	if [ "$T_FAIL" -gt 0 ]; then
		rm -rf "$BIN/test-logs/$DLIB_NAME" && mkdir -p "$BIN/test-logs/$DLIB_NAME" &&
			cp "$D"/*.log "$BIN/test-logs/$DLIB_NAME/" 2>/dev/null &&
			echo "logs kept in $BIN/test-logs/$DLIB_NAME"
	fi
	rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A random port nothing listens on (as stack_free_port in deploy/local/stack.sh, which is
# not sourced here: it runs code when sourced, and does not remember its ports; no python
# start-up per port on a loaded machine).
# Ports handed out are remembered (in USED_PORTS, when called without a subshell:
# `free_port >/dev/null; X=$FP`) so two calls never return the same one.
USED_PORTS=" "
free_port() {
	local p
	for _ in $(seq 1 200); do
		p=$((10000 + RANDOM % 22000))
		case "$USED_PORTS" in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			USED_PORTS="$USED_PORTS$p "
			FP=$p
			echo "$p"
			return 0
		fi
	done
	return 1
}
wait_file() { local i; for i in $(seq 1 100); do [ -s "$1" ] && return 0; sleep 0.1; done; return 1; }
up() { curl -s -o /dev/null -k "$1"; }
jf() { jq -r "$1" <<<"$2"; }
jqe() { jq -e "$@" >/dev/null; }
probe() { "$PROBE" "$@" 2>>"$D/probe.log"; }
stat_of() { curl -s "http://127.0.0.1:$1/mock/stats" | jq -r ".$2"; }
# These two need ADMIN (http://127.0.0.1:$ADMIN_PORT).
epv() { curl -s "$ADMIN/endpoints" | jq -r ".endpoints[] | select(.name==\"$1\") | $2"; }
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/ready")" = 200 ]; }

# Starts the embedded broker and waits for its bootstrap file; exports GW_KAFKA_BROKERS
# and GW_ENV_FILE=/dev/null. A broker that does not start ends the test.
start_broker() {
	"$BROKER" --bootstrap-file "$D/bootstrap" >/dev/null 2>"$D/broker.log" &
	PIDS+=($!)
	if ! wait_file "$D/bootstrap"; then
		not_ok "broker starts"
		t_summary
		exit 1
	fi
	export GW_KAFKA_BROKERS=$(cat "$D/bootstrap")
	export GW_ENV_FILE=/dev/null
}

start_mock() { # port models latency_ms token_ms log [extra env...]
	local port=$1 models=$2 lat=$3 tok=$4 log=$5
	shift 5
	env GW_MOCK_LISTEN=127.0.0.1:$port GW_MOCK_MODELS=$models GW_MOCK_LATENCY_MS=$lat \
		GW_MOCK_TOKEN_MS=$tok "$@" "$MOCK" serve >/dev/null 2>>"$D/$log" &
	PIDS+=($!)
	LAST=$!
}

# tests/integration/dispatcher_fake_endpoint.py on PORT; https with CERT and KEY.
start_fake() { # port log [cert key]
	local port=$1 log=$2
	shift 2
	python3 "$FAKE" "$port" "$@" >/dev/null 2>"$D/$log" &
	PIDS+=($!)
}

# Starts the dispatcher on $D/endpoints.json, admin on ADMIN_PORT, stderr to $D/LOG;
# its pid in DISP_PID.
serve_dispatcher() { # log [VAR=value...]
	local log=$1
	shift
	env GW_ENDPOINTS_FILE="$D/endpoints.json" GW_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" "$@" \
		"$DISPATCHER" serve 2>"$D/$log" &
	DISP_PID=$!
	PIDS+=($DISP_PID)
}
