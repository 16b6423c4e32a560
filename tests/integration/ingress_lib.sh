# Shared by the ingress integration tests: sourced after deploy/local/stack.sh.
#
# The ingress tests do not need the backup agent, whose start-up settings change under
# other work: it is replaced by a placeholder process so the stack starts without it.
eval "orig_$(declare -f stack_spawn)"
stack_spawn() {
	if [ "$1" = backup-agent ]; then
		orig_stack_spawn backup-agent sleep 100000
		return
	fi
	orig_stack_spawn "$@"
}
eval "orig_$(declare -f stack_wait_http)"
stack_wait_http() {
	[ "${4:-}" = backup-agent ] && return 0
	orig_stack_wait_http "$@"
}

# Starts one more ingress copy. ingress_spawn NAME PORT REPLY_PARTITION [VAR=value...]
ingress_spawn() {
	local name=$1 port=$2 part=$3
	shift 3
	# shellcheck disable=SC2046
	stack_spawn "$name" env $(stack_common_env) GW_ADMIN_LISTEN=off \
		GW_HTTP_LISTEN="127.0.0.1:$port" GW_SEAL_KEY_FILE="$STACK_DIR/seal.key" \
		GW_INGRESS_REPLY_PARTITION="$part" "$@" "$STACK_BIN/ingress/ingress" serve
}

# Keeps the logs of a failed run, stops everything, removes the state directory.
ingress_cleanup() { # test-name
	# Extra copies first: stack_stop knows only the stack's own names.
	local i
	for i in "${!STACK_NAMES[@]}"; do
		case ${STACK_NAMES[$i]} in
		ingress-*) stack_stop_one "${STACK_NAMES[$i]}" 10 >/dev/null 2>&1 ;;
		esac
	done
	stack_stop >/dev/null 2>&1
	if [ "$T_FAIL" -gt 0 ]; then
		rm -rf "$STACK_BIN/test-logs/$1" && mkdir -p "$STACK_BIN/test-logs" &&
			cp -r "$STACK_DIR/logs" "$STACK_BIN/test-logs/$1" &&
			echo "logs kept in $STACK_BIN/test-logs/$1"
	fi
	[ -n "${PGBASE:-}" ] && [ "${PGBASE#/var/lib/postgresql/gw-}" != "$PGBASE" ] && rm -rf "$PGBASE"
	rm -rf "$STACK_DIR"
}
