#!/usr/bin/env bash
# https for GW_JWKS_URL and GW_INTROSPECTION_URL against a local python3 https server
# with a CA and server certificates made here by the openssl CLI: with GW_AUTHZ_CA_FILE
# naming the CA both work (JWKS fetched, JWT and opaque token allowed); with another CA,
# or a certificate for another host name, the JWKS fetch fails with the verification
# error logged (authz stays up, not ready) and new opaque tokens get 503 with the error
# logged; an unreadable CA file stops the start with a message; the number of requests
# waiting for a (slow) JWKS refetch is bounded (503 beyond). $1 = build directory.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
B=$(cd "${1:?usage: authz_tls.sh BUILD_DIR}" && pwd)
. "$ROOT/tests/lib/assert.sh"
. "$HERE/authz_env.sh"

if ! env_setup 4; then
	not_ok "PostgreSQL, migrations and broker start"
	t_summary
	exit 1
fi
ok "PostgreSQL, migrations and broker start"

# --- certificates: CA, other CA, server for 127.0.0.1, server for another name ---
C=$T/certs
mkdir -p "$C"
mkca() { # name
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
		-subj "/CN=$1" -keyout "$C/$1.key" -out "$C/$1.pem" 2>>"$T/openssl.log"
}
mkcert() { # name ca subjectAltName
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
		-keyout "$C/$1.key" -out "$C/$1.csr" 2>>"$T/openssl.log" &&
		printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$3" >"$C/$1.ext" &&
		openssl x509 -req -in "$C/$1.csr" -CA "$C/$2.pem" -CAkey "$C/$2.key" -CAcreateserial \
			-days 2 -extfile "$C/$1.ext" -out "$C/$1.pem" 2>>"$T/openssl.log"
}
mkca test-ca && mkca other-ca && mkcert srv test-ca IP:127.0.0.1 && mkcert wrongname test-ca DNS:wrong.example
check "openssl makes the CAs and server certificates" test -s "$C/srv.pem" -a -s "$C/wrongname.pem" -a -s "$C/other-ca.pem"

# --- keys and tokens ---
K=$T/keys
mkdir -p "$K"
openssl genpkey -algorithm ED25519 -out "$K/ed.pem" 2>/dev/null
ISS=https://idp.test
AUD=gateway
now=$(date +%s)
echo "{\"keys\":[$("$JWTSIGN" jwk --key "$K/ed.pem" --kid d1)]}" >"$T/jwks.json"
JWT=$("$JWTSIGN" sign --alg EdDSA --key "$K/ed.pem" --kid d1 --claims \
	"{\"iss\":\"$ISS\",\"aud\":\"$AUD\",\"sub\":\"jwt-user\",\"exp\":$((now + 600))}")
OPAQUE=$(openssl rand -hex 24)
echo s3cret >"$T/client.secret"

# --- the https server: GET /jwks, POST /introspect (any token active), GET /count ---
cat >"$T/server.py" <<'PY'
import http.server, json, os, ssl, sys, time
port, cert, key, jwks = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
counts = {"jwks": 0, "introspect": 0}
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def reply(self, body):
        b = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        if self.path == "/jwks":
            counts["jwks"] += 1
            # A slow provider: the delay (seconds) is read from jwks.json.delay if present.
            if os.path.exists(jwks + ".delay"):
                time.sleep(float(open(jwks + ".delay").read()))
            self.reply(open(jwks).read())
        else:
            self.reply(json.dumps(counts))
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        counts["introspect"] += 1
        self.reply(json.dumps({"active": True, "sub": "s-1", "username": "tls-user",
                               "exp": int(time.time()) + 600}))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = http.server.HTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("listening", flush=True)
srv.serve_forever()
PY
start_server() { # cert-name -> port in SPORT
	SPORT=$(free_port)
	python3 "$T/server.py" "$SPORT" "$C/$1.pem" "$C/$1.key" "$T/jwks.json" >"$T/server-$1.out" 2>>"$T/server.log" &
	EXTRA_PIDS+=($!)
	for i in $(seq 1 50); do grep -q listening "$T/server-$1.out" 2>/dev/null && return 0; sleep 0.1; done
	return 1
}
check "https server with the 127.0.0.1 certificate starts" start_server srv
GOOD=$SPORT
check "https server with a certificate for another name starts" start_server wrongname
WRONG=$SPORT
count() { curl -s --cacert "$C/test-ca.pem" "https://127.0.0.1:$GOOD/count" | jq -r ".$1"; }
check_eq "the server answers curl with the test CA (sanity)" 0 "$(count introspect)"

authz_tls() { # n port ca-file
	start_authz "$1" GW_JWKS_URL="https://127.0.0.1:$2/jwks" GW_JWT_ISSUER=$ISS GW_JWT_AUDIENCE=$AUD \
		GW_INTROSPECTION_URL="https://127.0.0.1:$2/introspect" GW_INTROSPECTION_CLIENT_ID=gw \
		GW_INTROSPECTION_CLIENT_SECRET_FILE="$T/client.secret" GW_AUTHZ_CA_FILE="$3"
}

# --- the right CA: both calls verified and used ---
authz_tls 1 "$GOOD" "$C/test-ca.pem"
check "with GW_AUTHZ_CA_FILE: the JWKS is fetched over https and authz is ready" eventually 30 ready_n 1
r=$(probe "$JWT" --model m)
check_eq "JWT verified with the key fetched over https" "authorized jwt-user" "$(status_of "$r") $(jq -r '.headers["gw-principal"]' <<<"$r")"
r=$(probe "$OPAQUE" --model m)
check_eq "opaque token introspected over https" "authorized tls-user" "$(status_of "$r") $(jq -r '.headers["gw-principal"]' <<<"$r")"
check_eq "one introspection call reached the server" 1 "$(count introspect)"
stop_authz 1

# --- another CA: verification fails, clearly, and nothing crashes ---
authz_tls 2 "$GOOD" "$C/other-ca.pem"
fetch_failed() { grep -q '"msg":"JWKS fetch failed: keeping the keys in force".*TLS certificate verification failed' "$T/authz2.log"; }
check "wrong CA: the JWKS fetch error is logged with the verification error" eventually 20 fetch_failed
check_contains "... naming why" "$(grep 'JWKS fetch failed' "$T/authz2.log" | head -1)" "unable to get local issuer certificate"
not_ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT_2/ready")" = 503 ]; }
check "wrong CA: not ready (no JWKS), but up" not_ready
check_contains "/ready says why" "$(curl -s "http://127.0.0.1:$PORT_2/ready")" "JWKS not loaded"
# Not ready still serves what it can: an opaque token gets 503 from the failed introspection.
r=$(probe "$(openssl rand -hex 24)" --model m)
check_eq "wrong CA: a new opaque token gets 503" "503" "$(status_of "$r")"
check_contains "... retry shortly" "$(err_of "$r")" "cannot be reached"
check_contains "the introspection error is logged with the verification error" \
	"$(grep '"msg":"introspection call failed' "$T/authz2.log" | head -1)" "TLS certificate verification failed"
check "authz is still running" kill -0 "${AUTHZ_PIDS[2]}"
stop_authz 2

# --- the right CA but a certificate for another host name ---
authz_tls 3 "$WRONG" "$C/test-ca.pem"
# The URL names 127.0.0.1 and the certificate only wrong.example: OpenSSL checks the
# address against the certificate's names and says "IP address mismatch".
host_failed() { grep -q '"msg":"JWKS fetch failed: keeping the keys in force".*IP address mismatch' "$T/authz3.log"; }
check "wrong host name: the JWKS fetch fails with 'IP address mismatch'" eventually 20 host_failed
r=$(probe "$(openssl rand -hex 24)" --model m)
check_eq "wrong host name: a new opaque token gets 503" "503" "$(status_of "$r")"
check_contains "the introspection error names the name mismatch" \
	"$(grep '"msg":"introspection call failed' "$T/authz3.log" | head -1)" "IP address mismatch"
check "authz is still running" kill -0 "${AUTHZ_PIDS[3]}"
stop_authz 3

# --- the waiting room for an unknown kid is bounded (GW_AUTHZ_JWKS_MAX_HELD) ---
start_authz 4 GW_JWKS_URL="https://127.0.0.1:$GOOD/jwks" GW_JWT_ISSUER=$ISS GW_JWT_AUDIENCE=$AUD \
	GW_AUTHZ_CA_FILE="$C/test-ca.pem" GW_AUTHZ_JWKS_MAX_HELD=1
check "authz with one waiting place becomes ready" eventually 30 ready_n 4
openssl genpkey -algorithm ED25519 -out "$K/ed2.pem" 2>/dev/null
echo "{\"keys\":[$("$JWTSIGN" jwk --key "$K/ed.pem" --kid d1),$("$JWTSIGN" jwk --key "$K/ed2.pem" --kid d2)]}" >"$T/jwks.json"
echo 3 >"$T/jwks.json.delay"
for i in 1 2; do
	t=$("$JWTSIGN" sign --alg EdDSA --key "$K/ed2.pem" --kid d2 --claims \
		"{\"iss\":\"$ISS\",\"aud\":\"$AUD\",\"sub\":\"rot-$i\",\"exp\":$((now + 600))}")
	probe "$t" --model m >"$T/room$i.json" &
	ROOM_PIDS[$i]=$!
done
wait "${ROOM_PIDS[1]}" "${ROOM_PIDS[2]}"
st=$(for i in 1 2; do status_of "$(cat "$T/room$i.json")"; done | sort | xargs)
check_eq "two tokens of a new kid during a 3 s refetch, one place: one waits and passes, one gets 503" "503 authorized" "$st"
for i in 1 2; do [ "$(status_of "$(cat "$T/room$i.json")")" = 503 ] && full=$(cat "$T/room$i.json"); done
check_eq "the 503 says to retry in 1 s" "1 jwks_refreshing" "$(jq -r '"\(.headers["gw-retry-after"]) \(.value | fromjson | .error.code)"' <<<"${full:-{\}}")"
rm -f "$T/jwks.json.delay"
stop_authz 4

# --- a CA file that cannot be read stops the start ---
out=$(GW_JWKS_URL="https://127.0.0.1:$GOOD/jwks" GW_JWT_ISSUER=$ISS GW_JWT_AUDIENCE=$AUD \
	GW_AUTHZ_CA_FILE="$T/missing.pem" GW_ADMIN_LISTEN=off GW_DATABASE_URL="$APP_URL" timeout 20 "$AUTHZ" serve 2>&1)
check_eq "an unreadable GW_AUTHZ_CA_FILE: exit 1" 1 "$?"
check_contains "... saying which setting to fix" "$out" "cannot load the CA file: check GW_AUTHZ_CA_FILE"

finish_checks
t_summary
