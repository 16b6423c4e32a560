#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined) in their own
# build directory and runs each for N seconds on a copy of its seed corpus, with its
# dictionary. Usage: tests/fuzz.sh [SECONDS_PER_TARGET] (else FUZZ_SECONDS, else 30;
# FUZZ_BUILD sets the build directory, default build-fuzz). Crashes and the grown
# corpora are kept in $FUZZ_BUILD/fuzz-out. `make test` runs it with FUZZ_SECONDS=10,
# `make fuzz` with 600.
#
# A target fuzz_<service>_<name> lives in <service>/fuzz/: its seeds in <name>/ (or
# corpus_<name>/) and its dictionary in <name>.dict.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER=${1:-${FUZZ_SECONDS:-30}}
BUILD=${FUZZ_BUILD:-build-fuzz}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
JOBS=${JOBS:-2}
command -v clang >/dev/null || { echo "fuzz: clang is not installed (apt-get install clang)" >&2; exit 1; }
CC=clang cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGW_FUZZ=ON >/dev/null
TARGETS=(fuzz_ingress_request fuzz_ingress_head fuzz_ingress_wire
	fuzz_authz_jwt fuzz_authz_jwks fuzz_authz_policy fuzz_auditor_event)
# Every target's inputs must be there before anything is built or run.
for t in "${TARGETS[@]}"; do
	rest=${t#fuzz_}
	svc=${rest%%_*}
	name=${rest#*_}
	dir=$ROOT/$svc/fuzz
	[ -d "$dir/$name" ] || [ -d "$dir/corpus_$name" ] || { echo "fuzz: no seed corpus for $t ($dir/$name/)" >&2; exit 1; }
	[ -f "$dir/$name.dict" ] || { echo "fuzz: no dictionary for $t ($dir/$name.dict)" >&2; exit 1; }
done
cmake --build "$BUILD" -j"$JOBS" --target "${TARGETS[@]}" -- --no-print-directory -s
OUT=$BUILD/fuzz-out
mkdir -p "$OUT"
failed=0
for t in "${TARGETS[@]}"; do
	rest=${t#fuzz_}
	svc=${rest%%_*}
	name=${rest#*_}
	dir=$ROOT/$svc/fuzz
	seeds=$dir/$name
	[ -d "$seeds" ] || seeds=$dir/corpus_$name
	id=${svc}_$name
	corpus=$OUT/$id-corpus
	mkdir -p "$corpus"
	cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
	exe=$(find "$BUILD" -name "$t" -type f -perm -u+x | head -n1)
	log=$OUT/$id.log
	if "$exe" -max_total_time="$SECONDS_PER" -dict="$dir/$name.dict" \
		-artifact_prefix="$OUT/$id-" -print_final_stats=1 "$corpus" >"$log" 2>&1; then
		runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
		cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 || true)
		echo "fuzz $t: ok, $runs runs in ${SECONDS_PER}s, $cov, corpus $(ls "$corpus" | wc -l)"
	else
		echo "fuzz $t: FAILED; see $log and $OUT/$id-*" >&2
		tail -n 30 "$log" >&2
		failed=1
	fi
done
exit $failed
