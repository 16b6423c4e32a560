#!/usr/bin/env bash
# Exact limits under scale: three authz copies in one group over 6 partitions, one
# principal limited to 60 requests per minute. 150 requests fired at once (sealed, keyed
# by the principal hint like ingress does): exactly 60 pass and 90 get 429, not 180
# passing. Then a second principal's burst shows the copies share the load (each copy
# decides for the partitions it owns). $1 = build directory.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
B=$(cd "${1:?usage: authz_scale.sh BUILD_DIR}" && pwd)
. "$ROOT/tests/lib/assert.sh"
. "$HERE/authz_env.sh"

if ! env_setup 6; then
	not_ok "PostgreSQL, migrations and broker (6 partitions) start"
	t_summary
	exit 1
fi
ok "PostgreSQL, migrations and broker (6 partitions) start"
POLICY=$T/policy.json
echo '{"limits": {"default": {"requests_per_minute": 60}}}' >"$POLICY"
declare -a KEYS
for i in 0 1 2 3 4 5 6 7; do KEYS[$i]=$(new_key "user$i"); done
for n in 1 2 3; do start_authz "$n" GW_POLICY_FILE="$POLICY"; done
all_ready() { ready_n 1 && ready_n 2 && ready_n 3; }
if ! eventually 60 all_ready; then
	tail -5 "$T"/authz*.log
	not_ok "three authz copies become ready"
	t_summary
	exit 1
fi
ok "three authz copies become ready"
sleep 2 # let the group settle after the last join

r=$(GW_PROBE_KEY=${KEYS[0]} "$PROBE" burst --count 150 --timeout-ms 40000 2>>"$T/probe.log")
check_eq "150 requests of one principal: all answered" 0 "$(jq -r .missing <<<"$r")"
check_eq "exactly 60 allowed across three copies" 60 "$(jq -r .authorized <<<"$r")"
check_eq "the other 90 refused with 429" 90 "$(jq -r '.status["429"] // 0' <<<"$r")"

# Several principals: their requests spread over the copies, and each is exact.
total=0
for i in 1 2 3 4 5 6 7; do
	r=$(GW_PROBE_KEY=${KEYS[$i]} "$PROBE" burst --count 70 --timeout-ms 40000 2>>"$T/probe.log")
	a=$(jq -r .authorized <<<"$r")
	[ "$a" = 60 ] || not_ok "user$i: exactly 60 of 70 allowed" "got $r"
	total=$((total + a))
done
check_eq "seven more principals: 60 each" 420 "$total"
busy=0
for n in 1 2 3; do
	d=$(metrics_n "$n" | awk '$1 ~ /^gw_authz_decisions_total/ {s += $2} END {print s + 0}')
	[ "$d" -gt 0 ] && busy=$((busy + 1))
done
# Eight principals over six partitions: at least two copies see some of them.
check "more than one copy decided requests" test "$busy" -ge 2
finish_checks
t_summary
