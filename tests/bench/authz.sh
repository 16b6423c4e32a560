#!/usr/bin/env bash
# authz decisions per second on one core: the per-request functions of `authz serve`
# (API key check over 100000 cached keys, JWT RS256 / ES256 / EdDSA verification, and
# the policy + limits step) in a loop, pinned to CPU 0 with taskset when available.
# Usage: tests/bench/authz.sh BUILD_DIR [SECONDS_PER_CASE]
set -u
BUILD=$(cd "${1:?usage: authz.sh BUILD_DIR [SECONDS]}" && pwd) || exit 2
BENCH=$BUILD/authz/gw-authz-bench
[ -x "$BENCH" ] || { echo "build the gw-authz-bench target first" >&2; exit 2; }
PIN=()
command -v taskset >/dev/null && PIN=(taskset -c 0)
"${PIN[@]}" "$BENCH" "${2:-2}"

# End to end through Kafka (BENCH_E2E=N requests, 0 = skip): one authz copy, a private
# PostgreSQL and the embedded broker; N sealed API-key requests produced at once by
# gw-authz-probe burst, timed until every answer is back on gw.authorized.
N=${BENCH_E2E:-5000}
[ "$N" -gt 0 ] || exit 0
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$BUILD
. "$ROOT/tests/integration/authz_env.sh"
export GW_LOG_LEVEL=warn
env_setup 4 || { echo "bench set-up failed" >&2; exit 1; }
KEY=$(new_key bench)
start_authz 1
for i in $(seq 1 300); do ready_n 1 && break; sleep 0.1; done
GW_PROBE_KEY=$KEY "$PROBE" burst --count 10 --timeout-ms 20000 >/dev/null 2>&1 # warm up
t0=$(date +%s%N)
r=$(GW_PROBE_KEY=$KEY "$PROBE" burst --count "$N" --timeout-ms 300000 2>>"$T/probe.log")
t1=$(date +%s%N)
ms=$(((t1 - t0) / 1000000))
echo "{\"case\":\"e2e_api_key_through_kafka\",\"requests\":$N,\"ms\":$ms,\"per_second\":$((N * 1000 / (ms > 0 ? ms : 1))),\"result\":$r}"
