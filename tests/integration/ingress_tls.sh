#!/usr/bin/env bash
# ingress over TLS: a second ingress copy with a self-signed certificate (openssl CLI)
# in front of the whole pipeline; TLS 1.2+ with modern suites only, HSTS, hostile
# input through TLS, certificate reload on SIGHUP (and a bad reload keeping the old
# certificate), start-up refusals. $1 = build directory.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STACK_BIN=$(cd "$1" && pwd)
STACK_DIR=$(mktemp -d /tmp/gw-ingress-tls.XXXXXX)
STACK_FAST=1
GW_REQUEST_TIMEOUT=10
. "$ROOT/deploy/local/stack.sh"
. "$HERE/ingress_lib.sh"
. "$ROOT/tests/lib/assert.sh"
trap 'ingress_cleanup ingress_tls' EXIT

if ! stack_start 2>"$STACK_DIR/start.log"; then
	cat "$STACK_DIR/start.log"
	not_ok "stack starts"
	t_summary
	exit 1
fi
ok "stack starts"
T=$STACK_DIR/tls
mkdir -p "$T"
newcert() { # name CN
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
		-subj "/CN=$2" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
		-keyout "$T/$1.key" -out "$T/$1.crt" 2>/dev/null
}
newcert one gw-test-one
newcert two gw-test-two
cp "$T/one.crt" "$T/server.crt"
cp "$T/one.key" "$T/server.key"
TPORT=$(stack_free_port)
ingress_spawn ingress-tls "$TPORT" 1 GW_TLS_CERT_FILE="$T/server.crt" GW_TLS_KEY_FILE="$T/server.key"
TURL=https://localhost:$TPORT
check "TLS ingress starts" eventually 20 curl -fsS -o /dev/null --cacert "$T/one.crt" "$TURL/health"
KEY=$DEV_KEY
body='{"model":"mock-llm","messages":[{"role":"user","content":"over tls"}]}'
direct=$(curl -sS "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")
out=$(curl -sS -D "$T/h" --cacert "$T/one.crt" "$TURL/v1/chat/completions" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' -d "$body")
check_eq "HTTPS chat completion: the endpoint's answer" "$direct" "$out"
check_contains "HSTS under TLS" "$(grep -i '^strict-transport-security:' "$T/h")" "max-age=31536000"
sse=$(curl -sS -N --cacert "$T/one.crt" "$TURL/v1/chat/completions" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' -d '{"model":"mock-llm","stream":true,"messages":[]}')
check_contains "HTTPS streaming ends with [DONE]" "$sse" "data: [DONE]"
check "TLS 1.2 with an ECDHE-ECDSA-AES-GCM suite is accepted" curl -fsS -o /dev/null --cacert "$T/one.crt" \
	--tlsv1.2 --tls-max 1.2 --ciphers ECDHE-ECDSA-AES128-GCM-SHA256 "$TURL/health"
check "TLS 1.3 is accepted" curl -fsS -o /dev/null --cacert "$T/one.crt" --tlsv1.3 "$TURL/health"
s_client() { timeout 5 openssl s_client -connect "127.0.0.1:$TPORT" -servername localhost "$@" </dev/null >/dev/null 2>&1; }
refused() { ! s_client "$@"; }
check "the s_client probe itself works (TLS 1.2, GCM)" s_client -tls1_2 -cipher 'ECDHE-ECDSA-AES128-GCM-SHA256'
check "TLS 1.1 is refused (even from a client that allows it)" refused -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'
check "TLS 1.2 with a CBC-SHA1 suite is refused" refused -tls1_2 -cipher 'ECDHE-ECDSA-AES128-SHA'
check "TLS 1.2 without forward secrecy (static RSA/ECDH) is refused" refused -tls1_2 -cipher 'AES128-GCM-SHA256'
code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$TPORT/health" 2>/dev/null)
check "plain HTTP on the TLS port gets no HTTP answer" test "$code" != 200
a=$(printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' |
	timeout 5 openssl s_client -quiet -connect "127.0.0.1:$TPORT" -servername localhost -CAfile "$T/one.crt" 2>/dev/null)
check_contains "hostile framing through TLS: 400 in OpenAI shape" "$a" '"code":"bad_framing"'
check_contains "TLS rejections carry HSTS too" "$a" "Strict-Transport-Security"

serial() { timeout 5 openssl s_client -connect "127.0.0.1:$TPORT" -servername localhost </dev/null 2>/dev/null |
	openssl x509 -noout -serial 2>/dev/null; }
check_eq "serves certificate one" "$(openssl x509 -noout -serial -in "$T/one.crt")" "$(serial)"
cp "$T/two.crt" "$T/server.crt"
cp "$T/two.key" "$T/server.key"
kill -HUP "$(stack_pid ingress-tls)"
new_cert() { [ "$(serial)" = "$(openssl x509 -noout -serial -in "$T/two.crt")" ]; }
check "SIGHUP: new connections get certificate two" eventually 5 new_cert
check "after reload: served with the new CA file" curl -fsS -o /dev/null --cacert "$T/two.crt" "$TURL/health"
echo "not a certificate" >"$T/server.crt"
kill -HUP "$(stack_pid ingress-tls)"
sleep 0.5
check "bad reload: still serving certificate two" new_cert
check_contains "bad reload: the log says why and that the old one is kept" \
	"$(grep 'TLS reload failed' "$STACK_DIR/logs/ingress-tls.log")" "still serving the previous certificate"
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$T/two.crt" "$TURL/v1/chat/completions" \
	-H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$body")
check_eq "bad reload: requests still served" 200 "$code"
rc=0
stack_stop_one ingress-tls 30 || rc=$?
check_eq "TLS ingress exits 0 on SIGTERM" 0 "$rc"

# Start-up refusals: exit 1 with what to fix.
start_fails() { # expect-in-log VAR=value...
	local want=$1 rc=0
	shift
	env GW_ENV_FILE=/dev/null GW_KAFKA_BROKERS="$BROKERS" GW_ADMIN_LISTEN=off \
		GW_HTTP_LISTEN="127.0.0.1:$(stack_free_port)" GW_SEAL_KEY_FILE="$STACK_DIR/seal.key" \
		"$@" timeout 10 "$STACK_BIN/ingress/ingress" serve >"$T/start.log" 2>&1 || rc=$?
	[ "$rc" = 1 ] && grep -Eq "$want" "$T/start.log"
}
check "a key that does not match the certificate: exit 1" start_fails "does not match|private key" \
	GW_TLS_CERT_FILE="$T/one.crt" GW_TLS_KEY_FILE="$T/two.key"
check "a certificate without a key: exit 1" start_fails "GW_TLS_KEY_FILE" GW_TLS_CERT_FILE="$T/one.crt"
check "an unreadable certificate: exit 1" start_fails "cannot load the TLS certificate" \
	GW_TLS_CERT_FILE="$T/missing.crt" GW_TLS_KEY_FILE="$T/one.key"

t_summary
