#!/usr/bin/env bash
# JWT bearer tokens end to end. Keys come from the openssl CLI (RSA 2048, P-256,
# Ed25519), the JWKS file from gw-jwt-sign, tokens are signed in the test. Valid RS256,
# ES256 and EdDSA tokens pass with principal/groups/idp from the claims; malformed,
# expired, wrong-audience, wrong-issuer, alg none, wrong-key, unknown-kid, HS256 (not
# configured) and oversized tokens each get 401 with a useful message; provider and
# required-policy rules apply (service accounts exempt); the JWKS file is reloaded on
# change; with a JWKS URL, tokens naming a key published since the last fetch wait for
# one (rate-limited, counted on the server) refetch and pass on their first try, while a
# never-published kid gets 401; no token appears in any topic (except sealed on
# gw.requests), log or row.
# $1 = build directory.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
B=$(cd "${1:?usage: authz_jwt.sh BUILD_DIR}" && pwd)
. "$ROOT/tests/lib/assert.sh"
. "$HERE/authz_env.sh"

if ! env_setup 4; then
	not_ok "PostgreSQL, migrations and broker start"
	t_summary
	exit 1
fi
ok "PostgreSQL, migrations and broker start"

K=$T/keys
mkdir -p "$K"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$K/rsa.pem" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$K/rsa-other.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$K/ec.pem" 2>/dev/null
openssl genpkey -algorithm ED25519 -out "$K/ed.pem" 2>/dev/null
openssl genpkey -algorithm ED25519 -out "$K/ed2.pem" 2>/dev/null
check "openssl generates the test keys" test -s "$K/rsa.pem" -a -s "$K/ec.pem" -a -s "$K/ed.pem"
jwk() { "$JWTSIGN" jwk --key "$K/$1.pem" --kid "$2"; }
JWKS=$T/jwks.json
echo "{\"keys\":[$(jwk rsa r1),$(jwk ec e1),$(jwk ed d1)]}" >"$JWKS"
ISS=https://idp.test
AUD=gateway
now=$(date +%s)
claims() { # sub idp extra-json
	echo "{\"iss\":\"$ISS\",\"aud\":\"$AUD\",\"sub\":\"$1\",\"exp\":$((now + 600)),\"nbf\":$((now - 5)),\"groups\":[\"staff\"],\"idp\":\"$2\",\"policies\":[\"mfa\"]${3:+,$3}}"
}
sign() { "$JWTSIGN" sign --alg "$1" --key "$K/$2.pem" --kid "$3" --claims "$4"; }

POLICY=$T/policy.json
cat >"$POLICY" <<JSON
{"allowed_idps": ["anl.gov"], "required_policies": ["mfa"], "service_accounts": ["svc-bot"],
 "idp_required_groups": {"anl.gov": ["staff", "hpc"]}}
JSON
start_authz 1 GW_POLICY_FILE="$POLICY" GW_JWKS_FILE="$JWKS" GW_JWT_ISSUER=$ISS GW_JWT_AUDIENCE=$AUD
if ! eventually 30 ready_n 1; then
	tail -20 "$T/authz1.log"
	not_ok "authz with a JWKS file becomes ready"
	t_summary
	exit 1
fi
ok "authz with a JWKS file becomes ready"
check_contains "the JWKS load is logged with 3 keys" "$(cat "$T/authz1.log")" '"msg":"JWKS loaded"'

TOKENS=()
for spec in "RS256 rsa r1" "ES256 ec e1" "EdDSA ed d1"; do
	set -- $spec
	tok=$(sign "$1" "$2" "$3" "$(claims "alice-$1" anl.gov)")
	TOKENS+=("$tok")
	r=$(probe "$tok" --model m)
	check_eq "$1 token: forwarded with principal = sub" "authorized alice-$1" "$(status_of "$r") $(jq -r '.headers["gw-principal"]' <<<"$r")"
	check_eq "$1 token: groups from the claim, rule names the issuer" "staff jwt:$ISS" "$(jq -r '.headers | "\(.["gw-groups"]) \(.["gw-rule"])"' <<<"$r")"
	check_eq "$1 token: hint is the unverified sub (as ingress sends it)" "alice-$1" "$(jq -r '.headers["gw-hint"]' <<<"$r")"
	check_eq "$1 token: audit has the identity provider" "allowed anl.gov jwt" "$(jq -r '"\(.audit.outcome) \(.audit.idp) \(.audit.extra.credential)"' <<<"$r")"
done
tok=$(sign EdDSA ed d1 "$(claims bob anl.gov '"jti":"tok-42"')")
TOKENS+=("$tok")
r=$(probe "$tok" --route /resource_server/whoami --model "")
w=$(jq -r .value <<<"$r")
check_eq "whoami with a JWT" "bob|anl.gov|jwt|tok-42|$((now + 600))" \
	"$(jq -r '"\(.principal)|\(.idp)|\(.credential.type)|\(.credential.id)|\(.credential.expires_at | fromdateiso8601)"' <<<"$w")"

bad() { # description token message-part
	local r
	r=$(probe "$2" --model m)
	check_eq "$1: 401" "401" "$(status_of "$r")"
	check_contains "$1: says why" "$(err_of "$r")" "$3"
	check_eq "$1: audited as denied" "denied 401" "$(jq -r '"\(.audit.outcome) \(.audit.status)"' <<<"$r")"
	TOKENS+=("$2")
}
bad "expired token" "$("$JWTSIGN" sign --alg RS256 --key "$K/rsa.pem" --kid r1 --claims "{\"iss\":\"$ISS\",\"aud\":\"$AUD\",\"sub\":\"a\",\"exp\":$((now - 120))}")" "token expired"
bad "wrong audience" "$(sign RS256 rsa r1 "$(claims a anl.gov | sed "s/\"aud\":\"$AUD\"/\"aud\":\"other\"/")")" "audience"
bad "wrong issuer" "$(sign ES256 ec e1 "$(claims a anl.gov | sed "s#$ISS#https://evil.test#")")" "issuer"
bad "alg none" "$("$JWTSIGN" sign --alg none --kid r1 --claims "$(claims a anl.gov)")" "'none' is not allowed"
bad "signed by another key" "$(sign RS256 rsa-other r1 "$(claims a anl.gov)")" "signature does not verify"
bad "unknown key id" "$(sign EdDSA ed2 d9 "$(claims a anl.gov)")" "unknown key"
bad "key confusion (EdDSA token naming the RSA key)" "$(sign EdDSA ed r1 "$(claims a anl.gov)")" "does not match its key"
echo "0123456789abcdef0123456789abcdef" >"$K/hs.secret"
bad "HS256 not configured" "$("$JWTSIGN" sign --alg HS256 --secret-file "$K/hs.secret" --claims "$(claims a anl.gov)")" "HS256 is not enabled"
bad "malformed" "eyJhbGciOiJSUzI1NiJ9.e30" "invalid"
bad "malformed header" "eyJhbGciOi.e30.AAAA" "malformed token"
big=$(head -c 4600 /dev/zero | tr '\0' 'a')
bad "oversized" "$(sign RS256 rsa r1 "$(claims a anl.gov "\"pad\":\"$big\"")")" "too large"

# --- policy over token identities ---
r=$(probe "$(sign RS256 rsa r1 "$(claims carol gmail.com)")" --model m)
check_eq "identity provider not allowed: 403" "403" "$(status_of "$r")"
check_contains "names the rule" "$(err_of "$r")" "allowed_idps"
r=$(probe "$(sign RS256 rsa r1 "$(claims carol anl.gov | sed 's/"policies":\["mfa"\]/"policies":[]/')")" --model m)
check_eq "required policy (MFA) missing: 403" "403" "$(status_of "$r")"
check_contains "names the policy" "$(err_of "$r")" "required policy 'mfa'"
r=$(probe "$(sign RS256 rsa r1 "$(claims carol anl.gov | sed 's/"groups":\["staff"\]/"groups":["visitors"]/')")" --model m)
check_eq "provider requires a group: 403" "403" "$(status_of "$r")"
check_contains "names the rule" "$(err_of "$r")" "idp_required_groups"
r=$(probe "$(sign RS256 rsa r1 "{\"iss\":\"$ISS\",\"aud\":\"$AUD\",\"sub\":\"svc-bot\",\"exp\":$((now + 600))}")" --model m)
check_eq "a service account is exempt from the provider checks" "authorized" "$(status_of "$r")"

# --- JWKS reload on change ---
tok=$(sign EdDSA ed2 d2 "$(claims dave anl.gov)")
TOKENS+=("$tok")
r=$(probe "$tok" --model m)
check_eq "a key not yet in the JWKS: 401" "401" "$(status_of "$r")"
echo "{\"keys\":[$(jwk rsa r1),$(jwk ec e1),$(jwk ed d1),$(jwk ed2 d2)]}" >"$JWKS.tmp" && mv "$JWKS.tmp" "$JWKS"
newkey() { [ "$(status_of "$(probe "$tok" --model m)")" = authorized ]; }
check "the JWKS file is reloaded on change (new key accepted)" eventually 5 newkey
echo '{"keys": 5}' >"$JWKS.tmp" && mv "$JWKS.tmp" "$JWKS"
kill -HUP "${AUTHZ_PIDS[1]}"
rej() { grep -q '"msg":"JWKS file rejected: keeping the keys in force"' "$T/authz1.log"; }
check "a bad JWKS file is rejected" eventually 5 rej
check_eq "the keys in force are kept" "authorized" "$(status_of "$(probe "$tok" --model m)")"

# --- misconfiguration ---
out=$(GW_JWKS_FILE="$JWKS" GW_ADMIN_LISTEN=off GW_DATABASE_URL="$APP_URL" timeout 20 "$AUTHZ" serve 2>&1)
check_eq "JWKS without issuer/audience: exit 1" 1 "$?"
check_contains "says what to set" "$out" "GW_JWT_ISSUER"
out=$(GW_JWT_HS256_SECRET=short GW_JWT_ISSUER=x GW_JWT_AUDIENCE=y GW_ADMIN_LISTEN=off GW_DATABASE_URL="$APP_URL" timeout 20 "$AUTHZ" serve 2>&1)
check_eq "a short HS256 secret: exit 1" 1 "$?"

# --- keys from a JWKS URL (the mock server serves $JWKS_URL_FILE) ---
stop_authz 1
JWKS_URL_FILE=$T/jwks-url.json
echo "{\"keys\":[$(jwk rsa r1)]}" >"$JWKS_URL_FILE"
MPORT=$(free_port)
MOCK_JWKS_FILE=$JWKS_URL_FILE "$B/authz/gw-introspect-mock" "$MPORT" <(echo '{}') x y 2>>"$T/mock.log" &
EXTRA_PIDS+=($!)
mock_up() { curl -s "http://127.0.0.1:$MPORT/calls" >/dev/null; }
check "the JWKS URL server starts" eventually 5 mock_up
KID_REFETCH_S=8
start_authz 2 GW_POLICY_FILE="$POLICY" GW_JWKS_URL="http://127.0.0.1:$MPORT/jwks" GW_JWT_ISSUER=$ISS GW_JWT_AUDIENCE=$AUD \
	GW_JWKS_KID_REFETCH_S=$KID_REFETCH_S
check "authz with GW_JWKS_URL becomes ready once the JWKS is fetched" eventually 30 ready_n 2
r=$(probe "${TOKENS[0]}" --model m)
check_eq "a token verified with a key from the URL" "authorized" "$(status_of "$r")"
tok=$(sign EdDSA ed d1 "$(claims erin anl.gov)")
TOKENS+=("$tok")
NEVER=()
for i in 1 2; do
	t=$(sign EdDSA ed2 nope "$(claims x anl.gov)")
	NEVER+=("$t")
	TOKENS+=("$t")
done
HELD=()
for i in 1 2 3; do
	t=$(sign ES256 ec e1 "$(claims "held$i" anl.gov)")
	HELD+=("$t")
	TOKENS+=("$t")
done
calls() { curl -s "http://127.0.0.1:$MPORT/calls"; }
# Sleeps until the unknown-kid refetch interval since $1 (EPOCHREALTIME, not before the
# refetch began) has passed.
after_interval() { sleep "$(awk -v t0="$1" -v now="$EPOCHREALTIME" -v s=$KID_REFETCH_S 'BEGIN { d = t0 + s + 0.3 - now; print (d > 0 ? d : 0) }')"; }
# The provider rotates: keys d1 and e1 are published after authz fetched the set. Four
# requests naming them arrive together: all wait for one refetch and pass.
echo "{\"keys\":[$(jwk rsa r1),$(jwk ed d1),$(jwk ec e1)]}" >"$JWKS_URL_FILE"
before=$(calls)
t_fetch=$EPOCHREALTIME
probe "$tok" --model m >"$T/held.json" &
HELD_PIDS=($!)
for i in 0 1 2; do
	probe "${HELD[$i]}" --model m >"$T/held$i.json" &
	HELD_PIDS+=($!)
done
for p in "${HELD_PIDS[@]}"; do wait "$p"; done
t_answered=$EPOCHREALTIME # the refetch ran before these answers came back
st=""
for t in "${NEVER[@]}"; do st="$st $(status_of "$(probe "$t" --model m)")"; done
elapsed=$(awk -v t0="$t_fetch" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.1f", now - t0 }')
check_eq "a kid published since the last fetch passes on the first try (held until the refetch)" "authorized" "$(status_of "$(cat "$T/held.json")")"
check_eq "three more tokens of another new kid, at the same time: all allowed" "authorized authorized authorized" \
	"$(for i in 0 1 2; do status_of "$(cat "$T/held$i.json")"; done | xargs)"
check_eq "a never-published kid within the refetch interval: 401 at once (done ${elapsed}s after the rotation)" " 401 401" "$st"
check_eq "one refetch for all of them: unknown-kid refetches are rate-limited" $((before + 1)) "$(calls)"
check_contains "the refetch is logged with its reason" "$(cat "$T/authz2.log")" '"why":"a token names an unknown key id"'
after_interval "$t_answered"
r=$(probe "${NEVER[0]}" --model m)
check_eq "a never-published kid after the interval: 401 once the refetch ended" "401" "$(status_of "$r")"
check_contains "... saying the key id is unknown" "$(err_of "$r")" "unknown key id (kid 'nope')"
check_eq "... after one more fetch" $((before + 2)) "$(calls)"
check_eq "... audited as denied" "denied|401" "$(jq -r '"\(.audit.outcome)|\(.audit.status)"' <<<"$r")"
stop_authz 2

# --- no token anywhere ---
"$PROBE" dump gw.authorized gw.replies gw.audit gw.deadletter gw.usage >"$T/topics.dump" 2>"$T/dump.err"
check "all topics but gw.requests dumped" test -s "$T/topics.dump"
"$PROBE" dump gw.requests >"$T/requests.dump" 2>>"$T/dump.err"
dump=$(runuser -u postgres -- "$PGBIN/pg_dump" -h "$PGBASE" -d gateway 2>/dev/null)
leaks=0
for tok in "${TOKENS[@]}"; do
	sig=${tok##*.}
	# The signature identifies a token; too short a part could match by chance.
	[ ${#sig} -ge 20 ] || continue
	if grep -qF -- "$sig" "$T/topics.dump" "$T/requests.dump" "$T"/authz*.log "$T/mock.log" || grep -qF -- "$sig" <<<"$dump"; then
		leaks=$((leaks + 1))
	fi
done
check_eq "no token (by its signature) in any topic, log or database row" 0 "$leaks"
check_eq "gw.requests holds the tokens only sealed (no plain JWT header)" 0 "$(grep -c 'eyJ' "$T/requests.dump")"
finish_checks
t_summary
