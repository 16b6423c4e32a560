# Assertions for the bash integration tests; the run ends with "N passed, N failed".
T_PASS=0
T_FAIL=0

ok() { T_PASS=$((T_PASS + 1)); printf 'ok   %s\n' "$1"; }
not_ok() { T_FAIL=$((T_FAIL + 1)); printf 'FAIL %s\n' "$1"; [ -n "${2:-}" ] && printf '     %s\n' "$2"; return 0; }

check() { # description command...
	local d=$1
	shift
	if "$@"; then ok "$d"; else not_ok "$d"; fi
}

check_eq() { # description expected actual
	if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "expected [$2] got [$3]"; fi
}

check_contains() { # description haystack needle
	case "$2" in
	*"$3"*) ok "$1" ;;
	*) not_ok "$1" "[$3] not in [${2:0:400}]" ;;
	esac
}

check_not_contains() { # description haystack needle
	case "$2" in
	*"$3"*) not_ok "$1" "[$3] found" ;;
	*) ok "$1" ;;
	esac
}

# Retries a command for up to N seconds.
eventually() { # seconds command...
	local s=$1 i
	shift
	for i in $(seq 1 $((s * 10))); do
		"$@" && return 0
		sleep 0.1
	done
	return 1
}

t_summary() {
	echo "$T_PASS passed, $T_FAIL failed"
	[ "$T_FAIL" -eq 0 ]
}
