#!/usr/bin/env bash
# `make run`: the whole gateway in the foreground on this machine, state under .run/.
# Ctrl-C (SIGINT) or SIGTERM stops every process cleanly.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STACK_DIR=${STACK_DIR:-$ROOT/.run}
STACK_BIN=${STACK_BIN:-$ROOT/build}
# shellcheck source=stack.sh
. "$ROOT/deploy/local/stack.sh"

listen=${GW_HTTP_LISTEN:-127.0.0.1:8080}
GW_HTTP_PORT=${listen##*:}
if (exec 3<>"/dev/tcp/127.0.0.1/$GW_HTTP_PORT") 2>/dev/null; then
	echo "run: port $GW_HTTP_PORT is in use; set GW_HTTP_LISTEN=127.0.0.1:PORT" >&2
	exit 1
fi

stopping=0
shutdown() {
	[ "$stopping" = 1 ] && return
	stopping=1
	echo "stopping..." >&2
	if stack_stop; then
		echo "stopped cleanly" >&2
		exit 0
	fi
	echo "some processes did not stop cleanly; see $STACK_DIR/logs" >&2
	exit 1
}
trap shutdown INT TERM

if ! stack_start; then
	echo "run: start failed; logs are in $STACK_DIR/logs" >&2
	stack_stop
	exit 1
fi

cat <<MSG

The gateway is running at $INGRESS_URL
Dev API key (principal "dev"): $DEV_KEY   (also in $STACK_DIR/dev-api-key)
Settings for another shell: $STACK_DIR/env   Logs: $STACK_DIR/logs/

Try:
  curl -sS $INGRESS_URL/v1/chat/completions -H "Authorization: Bearer \$(cat $STACK_DIR/dev-api-key)" -H 'Content-Type: application/json' -d '{"model":"mock-llm","messages":[{"role":"user","content":"Hello"}]}' -i

Then, from the checkout in another shell:
  build/auditor/auditor query --request-id <X-Request-Id from the answer>
  build/backup-agent/backup-agent snapshot && build/backup-agent/backup-agent list

Ctrl-C stops everything.
MSG

# Stay in the foreground; if any process dies on its own, stop the rest and say so.
while true; do
	wait -n "${STACK_PIDS[@]}" 2>/dev/null
	[ "$stopping" = 1 ] && break
	for i in "${!STACK_PIDS[@]}"; do
		[ "$stopping" = 1 ] && break
		if ! kill -0 "${STACK_PIDS[$i]}" 2>/dev/null; then
			echo "run: ${STACK_NAMES[$i]} exited unexpectedly; last log lines:" >&2
			tail -n 20 "$STACK_DIR/logs/${STACK_NAMES[$i]}.log" >&2
			stack_stop
			exit 1
		fi
	done
done
