/* authz unit tests: JWKS parsing and JWT verification. Keys are generated here and
 * tokens signed with the same code as tests/tools/gw-jwt-sign, so every check (alg
 * allow-list, key confusion, iss, aud, exp, nbf, leeway, claims, sizes) is exercised
 * against real signatures. */
#define GW_JWT_SIGN_NO_MAIN
#include "../tools/gw-jwt-sign.c"

#include "check.h"
#include "b64url.h"
#include "jwt.h"

#include <time.h>

static EVP_PKEY *rsa, *rsa2, *ec, *ed;
static struct jwks keys;
static struct jwt_config cfg;
static const unsigned char HS[] = "0123456789abcdef0123456789abcdef";
static int64_t now_ms;

static char *claims(const char *extra)
{
	static char b[2048];
	long long now = now_ms / 1000;
	snprintf(b, sizeof b,
		 "{\"iss\":\"https://idp.test\",\"aud\":\"gw\",\"sub\":\"alice\",\"exp\":%lld,"
		 "\"nbf\":%lld,\"groups\":[\"staff\",\"hpc\"],\"idp\":\"anl.gov\","
		 "\"policies\":[\"mfa\"]%s%s}",
		 now + 300, now - 10, extra ? "," : "", extra ? extra : "");
	return b;
}

static enum jwt_result verify(const char *tok, struct identity *id, char *msg)
{
	char kid[128];
	return jwt_verify(&cfg, &keys, tok, strlen(tok), now_ms, id, msg, 256, kid);
}

/* Signs and expects a 401 whose message contains want. */
static void expect_fail(const char *alg, EVP_PKEY *k, const char *kid, const char *cl,
			const char *hdr, const char *want)
{
	char *tok = jwt_sign(alg, k, HS, sizeof HS - 1, kid, cl, hdr);
	struct identity id;
	char msg[256] = "";
	CHECK(tok != NULL);
	enum jwt_result r = tok ? verify(tok, &id, msg) : JWT_OK;
	CHECK(r != JWT_OK);
	if (!strstr(msg, want))
		printf("FAIL want '%s' got '%s'\n", want, msg);
	CHECK(strstr(msg, want) != NULL);
	CHECK_EQ_STR(id.principal, "");
	free(tok);
}

static void setup(void)
{
	rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	rsa2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	char *j1 = jwk_of(rsa, "r1", "RS256"), *j2 = jwk_of(ec, "e1", NULL),
	     *j3 = jwk_of(ed, "d1", "EdDSA");
	char doc[8192];
	snprintf(doc, sizeof doc,
		 "{\"keys\":[%s,%s,%s,{\"kty\":\"oct\",\"k\":\"AAAA\",\"kid\":\"h1\"},"
		 "{\"kty\":\"RSA\",\"kid\":\"short\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}",
		 j1, j2, j3);
	int skipped = -1;
	char err[256];
	CHECK_EQ_INT(jwks_parse(doc, strlen(doc), &keys, &skipped, err, sizeof err), 0);
	CHECK_EQ_INT(keys.n, 3);
	CHECK_EQ_INT(skipped, 2); /* oct and a short RSA key */
	free(j1);
	free(j2);
	free(j3);
	cfg.issuer = "https://idp.test";
	cfg.audience = "gw";
	cfg.leeway_s = 60;
	now_ms = (int64_t)time(NULL) * 1000;
}

static void test_jwks_errors(void)
{
	struct jwks k;
	int skipped;
	char err[256];
	CHECK_EQ_INT(jwks_parse("nope", 4, &k, &skipped, err, sizeof err), -1);
	CHECK(strstr(err, "not JSON") != NULL);
	CHECK_EQ_INT(jwks_parse("{}", 2, &k, &skipped, err, sizeof err), -1);
	CHECK(strstr(err, "keys") != NULL);
	const char *bad[] = {
	    "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AAAA\",\"y\":\"AAAA\"}]}",
	    "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"AAAA\"}]}",
	    "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"!!!\"}]}",
	    "{\"keys\":[1,\"x\",null]}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		CHECK_EQ_INT(jwks_parse(bad[i], strlen(bad[i]), &k, &skipped, err, sizeof err), 0);
		CHECK_EQ_INT(k.n, 0);
		CHECK(skipped >= 1);
	}
	/* a point not on the curve */
	char *j = jwk_of(ec, "x", NULL);
	json_t *o = json_loads(j, 0, NULL);
	json_object_set_new(o, "y", json_string("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
	char *s = json_dumps(o, JSON_COMPACT), doc[1024];
	snprintf(doc, sizeof doc, "{\"keys\":[%s]}", s);
	CHECK_EQ_INT(jwks_parse(doc, strlen(doc), &k, &skipped, err, sizeof err), 0);
	CHECK_EQ_INT(k.n, 0);
	/* an alg that contradicts the key type */
	json_object_set_new(o, "alg", json_string("RS256"));
	free(s);
	free(j);
	j = jwk_of(ec, "x", "RS256");
	snprintf(doc, sizeof doc, "{\"keys\":[%s]}", j);
	CHECK_EQ_INT(jwks_parse(doc, strlen(doc), &k, &skipped, err, sizeof err), 0);
	CHECK_EQ_INT(k.n, 0);
	free(j);
	free(s == NULL ? NULL : NULL);
	json_decref(o);
}

static void test_good(void)
{
	struct {
		const char *alg, *kid;
		EVP_PKEY *k;
	} c[] = {
	    {"RS256", "r1", rsa}, {"ES256", "e1", ec}, {"EdDSA", "d1", ed}, {"EdDSA", NULL, ed}};
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
		char *tok = jwt_sign(c[i].alg, c[i].k, NULL, 0, c[i].kid, claims(NULL), NULL);
		struct identity id;
		char msg[256];
		CHECK(jwt_looks_like(tok, strlen(tok)));
		enum jwt_result r = verify(tok, &id, msg);
		if (r != JWT_OK)
			printf("FAIL %s: %s\n", c[i].alg, msg);
		CHECK_EQ_INT(r, JWT_OK);
		CHECK_EQ_STR(id.principal, "alice");
		CHECK_EQ_STR(id.groups, "staff,hpc");
		CHECK_EQ_STR(id.idp, "anl.gov");
		CHECK_EQ_STR(id.policies, "mfa");
		CHECK_EQ_INT(id.type, CRED_JWT);
		CHECK_EQ_INT(id.expires_ms / 1000, now_ms / 1000 + 300);
		free(tok);
	}
	/* aud as an array, jti as the credential id, configurable claims */
	char *tok =
	    jwt_sign("RS256", rsa, NULL, 0, "r1",
		     claims("\"jti\":\"t-1\",\"aud2\":1,\"email\":\"a@x\",\"roles\":\"r\""), NULL);
	struct identity id;
	char msg[256];
	cfg.principal_claim = "email";
	cfg.groups_claim = "roles";
	CHECK_EQ_INT(verify(tok, &id, msg), JWT_OK);
	CHECK_EQ_STR(id.principal, "a@x");
	CHECK_EQ_STR(id.groups, "r");
	CHECK_EQ_STR(id.cred_id, "t-1");
	cfg.principal_claim = NULL;
	cfg.groups_claim = NULL;
	free(tok);
	char cl[1024];
	snprintf(cl, sizeof cl,
		 "{\"iss\":\"https://idp.test\",\"aud\":[\"x\",\"gw\"],\"sub\":\"b\","
		 "\"exp\":%lld}",
		 (long long)now_ms / 1000 + 5);
	tok = jwt_sign("ES256", ec, NULL, 0, "e1", cl, NULL);
	CHECK_EQ_INT(verify(tok, &id, msg), JWT_OK);
	CHECK_EQ_STR(id.groups, "");
	free(tok);
	/* HS256 only when configured */
	tok = jwt_sign("HS256", NULL, HS, sizeof HS - 1, NULL, claims(NULL), NULL);
	CHECK_EQ_INT(verify(tok, &id, msg), JWT_INVALID);
	CHECK(strstr(msg, "HS256 is not enabled") != NULL);
	cfg.hs256_secret = HS;
	cfg.hs256_len = sizeof HS - 1;
	CHECK_EQ_INT(verify(tok, &id, msg), JWT_OK);
	cfg.hs256_len--;
	CHECK_EQ_INT(verify(tok, &id, msg), JWT_INVALID);
	cfg.hs256_secret = NULL;
	free(tok);
}

static void test_bad(void)
{
	long long now = now_ms / 1000;
	char cl[1024];
	expect_fail("none", NULL, "r1", claims(NULL), NULL, "'none' is not allowed");
	expect_fail("RS256", rsa, "r1", claims(NULL), "{\"alg\":\"RS384\"}", "'RS384' is not");
	expect_fail("RS256", rsa2, "r1", claims(NULL), NULL, "signature does not verify");
	expect_fail("RS256", rsa2, "zz", claims(NULL), NULL, "unknown key");
	/* key confusion: an EdDSA token naming the RSA key */
	expect_fail("EdDSA", ed, "r1", claims(NULL), NULL, "does not match its key");
	/* HS256 signed with the RSA key's public JWK as the secret is refused outright */
	expect_fail("HS256", NULL, "r1", claims(NULL), NULL, "HS256 is not enabled");
	expect_fail("RS256", rsa, "r1", claims(NULL), "{\"crit\":[\"x\"]}", "critical");
	snprintf(cl, sizeof cl,
		 "{\"iss\":\"https://idp.test\",\"aud\":\"gw\",\"sub\":\"a\",\"exp\":%lld}",
		 now - 61);
	expect_fail("RS256", rsa, "r1", cl, NULL, "expired");
	snprintf(cl, sizeof cl,
		 "{\"iss\":\"https://idp.test\",\"aud\":\"gw\",\"sub\":\"a\",\"exp\":%lld}",
		 now - 59);
	char *tok = jwt_sign("RS256", rsa, NULL, 0, "r1", cl, NULL);
	struct identity id;
	char msg[256];
	CHECK_EQ_INT(verify(tok, &id, msg), JWT_OK); /* inside the leeway */
	free(tok);
	snprintf(cl, sizeof cl,
		 "{\"iss\":\"https://idp.test\",\"aud\":\"gw\",\"sub\":\"a\",\"exp\":%lld,"
		 "\"nbf\":%lld}",
		 now + 600, now + 120);
	expect_fail("RS256", rsa, "r1", cl, NULL, "not valid yet");
	snprintf(cl, sizeof cl, "{\"iss\":\"https://idp.test\",\"aud\":\"gw\",\"sub\":\"a\"}");
	expect_fail("RS256", rsa, "r1", cl, NULL, "no exp");
	snprintf(cl, sizeof cl,
		 "{\"iss\":\"https://evil.test\",\"aud\":\"gw\",\"sub\":\"a\",\"exp\":%lld}",
		 now + 60);
	expect_fail("RS256", rsa, "r1", cl, NULL, "issuer");
	snprintf(cl, sizeof cl,
		 "{\"iss\":\"https://idp.test\",\"aud\":\"other\",\"sub\":\"a\",\"exp\":%lld}",
		 now + 60);
	expect_fail("RS256", rsa, "r1", cl, NULL, "audience");
	snprintf(cl, sizeof cl, "{\"iss\":\"https://idp.test\",\"aud\":\"gw\",\"exp\":%lld}",
		 now + 60);
	expect_fail("RS256", rsa, "r1", cl, NULL, "no usable 'sub'");
	snprintf(cl, sizeof cl,
		 "{\"iss\":\"https://idp.test\",\"aud\":\"gw\",\"sub\":\"a\",\"exp\":\"soon\"}");
	expect_fail("RS256", rsa, "r1", cl, NULL, "not a number");
	cfg.groups_claim = "g2";
	expect_fail("RS256", rsa, "r1", claims("\"g2\":[\"a,b\"]"), NULL, "groups claim");
	expect_fail("RS256", rsa, "r1", claims("\"g2\":{}"), NULL, "groups claim");
	expect_fail("RS256", rsa, "r1", claims("\"g2\":[1]"), NULL, "groups claim");
	cfg.groups_claim = NULL;
	/* duplicate claims are refused (no parser-differential games) */
	snprintf(cl, sizeof cl,
		 "{\"iss\":\"https://idp.test\",\"aud\":\"gw\",\"sub\":\"a\",\"sub\":\"b\","
		 "\"exp\":%lld}",
		 now + 60);
	expect_fail("RS256", rsa, "r1", cl, NULL, "claims are not");

	/* malformed shapes */
	const char *m[] = {"abc",
			   "a.b",
			   "a.b.c.d",
			   "!!!.e30.",
			   "e30.e30.",
			   "eyJhbGciOiJSUzI1NiJ9..",
			   "eyJhbGciOiJSUzI1NiJ9.e30.AAAA"};
	for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
		CHECK(verify(m[i], &id, msg) == JWT_INVALID);
		CHECK(msg[0] != 0);
	}
	/* a tampered payload */
	tok = jwt_sign("EdDSA", ed, NULL, 0, "d1", claims(NULL), NULL);
	char *d = strchr(tok, '.');
	d[3] = d[3] == 'A' ? 'B' : 'A';
	CHECK(verify(tok, &id, msg) == JWT_INVALID);
	free(tok);
	/* oversized */
	static char big[JWT_MAX_LEN + 10];
	memset(big, 'A', sizeof big - 1);
	memcpy(big, "eyJ", 3);
	big[100] = '.';
	big[200] = '.';
	CHECK(verify(big, &id, msg) == JWT_INVALID);
	CHECK(strstr(msg, "too large") != NULL);
	CHECK(!jwt_looks_like("gw_0123456789abcdef_x", 21));
	CHECK(!jwt_looks_like("eyJ.a b.c", 9));
}

static void test_b64(void)
{
	unsigned char out[16];
	CHECK_EQ_INT(b64url_decode("", 0, out, sizeof out), 0);
	CHECK_EQ_INT(b64url_decode("QQ", 2, out, sizeof out), 1);
	CHECK_EQ_INT(out[0], 'A');
	CHECK_EQ_INT(b64url_decode("QR", 2, out, sizeof out), -1); /* non-zero pad bits */
	CHECK_EQ_INT(b64url_decode("Q", 1, out, sizeof out), -1);
	CHECK_EQ_INT(b64url_decode("QQ==", 4, out, sizeof out), -1);
	CHECK_EQ_INT(b64url_decode("-_-_", 4, out, sizeof out), 3);
	CHECK_EQ_INT(b64url_decode("AAAAAAAA", 8, out, 5), -1);
}

int main(void)
{
	setup();
	test_b64();
	test_jwks_errors();
	test_good();
	test_bad();
	jwks_free(&keys);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(rsa2);
	EVP_PKEY_free(ec);
	EVP_PKEY_free(ed);
	return check_done();
}
